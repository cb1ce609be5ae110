// dynalite as `pyanamo local` runs it: its own server (not its cli.js), with what a queue that
// workers are killed against needs and dynalite lacks.
//
// - A client that goes away mid-request (a SIGKILLed worker, a stopped import) makes Node emit
//   'error' ("aborted", ECONNRESET) on the request, and dynalite's handler rethrows it, which ends
//   the whole process (index.js: `req.on('error', function (err) { throw err })`). Here the error
//   listener that dynalite adds to each request is replaced by one that drops that request only:
//   nothing of it was processed (dynalite reads the whole body before it acts).
// - It says on stdout, in one line, the port it listens on once it does (`--port 0` picks one),
//   so that the parent never takes another program's answer on the port for dynalite's.
// - It fails with one line on stderr naming the cause (the port in use, the disk full, ...) and a
//   non-zero exit status that the parent reports.
//
// Usage: node dynalite_server.js DYNALITE_DIR HOST PORT [DATA_PATH]
'use strict'

const [dynaliteDir, host, port, dataPath] = process.argv.slice(2)
const dynalite = require(dynaliteDir)

const options = { createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 }
if (dataPath) options.path = dataPath

const server = dynalite(options)
const [handle] = server.listeners('request')
server.removeAllListeners('request')

server.on('request', function (req, res) {
  const on = req.on
  req.on = function (event, listener) {
    if (event !== 'error') return on.call(this, event, listener)
    return on.call(this, 'error', function () {
      res.destroy()  // the client went away mid-request: drop this request, keep serving
    })
  }
  handle(req, res)
})
server.on('clientError', function (err, socket) { socket.destroy() })

server.on('error', function (err) {
  const cause = err.code === 'EADDRINUSE' ? 'address already in use' : `${err.code || ''} ${err.message}`.trim()
  console.error(`cannot listen on ${host}:${port}: ${cause}`)
  process.exit(98)
})

server.listen(Number(port), host, function () {
  console.log(`listening ${server.address().port}`)
})

process.on('uncaughtException', function (err) {
  const text = err && err.code === 'ENOSPC' ? 'the disk is full (ENOSPC)' : String((err && err.stack) || err)
  console.error(`dynalite failed: ${text}`)
  process.exit(70)
})
