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
// - With PYANAMO_LOCAL_SECRET set, it serves only requests signed with that secret, and proves
//   to each client that it holds the secret (another user cannot read, write or impersonate it).
// - It fails with one line on stderr naming the cause (the port in use, the disk full, ...) and a
//   non-zero exit status that the parent reports.
//
// Usage: node dynalite_server.js DYNALITE_DIR HOST PORT [DATA_PATH]
'use strict'

const crypto = require('crypto')

const [dynaliteDir, host, port, dataPath] = process.argv.slice(2)
const dynalite = require(dynaliteDir)

const options = { createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 }
if (dataPath) options.path = dataPath

const server = dynalite(options)
const [handle] = server.listeners('request')
server.removeAllListeners('request')

// The operator's secret (from the environment, never the command line, which other users can
// read): every request must be signed with it (AWS Signature Version 4, as boto3 signs), and each
// answer carries a proof that this server holds it, which the operator's clients check.
const secret = process.env.PYANAMO_LOCAL_SECRET || ''
delete process.env.PYANAMO_LOCAL_SECRET

function hmac (key, text) { return crypto.createHmac('sha256', key).update(text, 'utf8').digest() }
function sha256 (data) { return crypto.createHash('sha256').update(data).digest('hex') }

// Why the request's signature is not one made with the secret, or null if it is.
function badSignature (req, body) {
  const auth = /^AWS4-HMAC-SHA256 Credential=[^/]*\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$/
    .exec(req.headers.authorization || '')
  const stamp = req.headers['x-amz-date']
  if (!auth || !stamp) return 'the request is not signed'
  const [, day, region, service, signed, signature] = auth
  const names = signed.split(';')
  const canonical = [
    req.method, req.url.split('?')[0], req.url.split('?')[1] || '',
    names.map(n => `${n}:${String(req.headers[n] ?? '').trim().replace(/\s+/g, ' ')}\n`).join(''),
    signed, req.headers['x-amz-content-sha256'] || sha256(body),
  ].join('\n')
  const scope = `${day}/${region}/${service}/aws4_request`
  const toSign = ['AWS4-HMAC-SHA256', stamp, scope, sha256(canonical)].join('\n')
  let key = hmac('AWS4' + secret, day)
  for (const part of [region, service, 'aws4_request']) key = hmac(key, part)
  const expected = hmac(key, toSign).toString('hex')
  const ok = expected.length === signature.length &&
    crypto.timingSafeEqual(Buffer.from(expected), Buffer.from(signature))
  return ok ? null : 'the signature was not made with the secret of the user who started this endpoint'
}

function refuse (res, why) {
  const body = JSON.stringify({ __type: 'com.amazon.coral.service#InvalidSignatureException', message: why })
  res.writeHead(400, { 'Content-Type': 'application/x-amz-json-1.0', 'Content-Length': Buffer.byteLength(body) })
  res.end(body)
}

server.on('request', function (req, res) {
  const chunks = []
  if (secret) req.on('data', function (chunk) { chunks.push(chunk) })  // before dynalite's own listener
  const on = req.on
  req.on = function (event, listener) {
    if (event === 'error') {
      return on.call(this, 'error', function () {
        res.destroy()  // the client went away mid-request: drop this request, keep serving
      })
    }
    if (event === 'end' && secret) {
      return on.call(this, 'end', function () {
        const why = badSignature(req, Buffer.concat(chunks))
        if (why) return refuse(res, why)
        const signature = /Signature=([0-9a-f]{64})/.exec(req.headers.authorization)[1]
        res.setHeader('x-pyanamo-proof', hmac(secret, signature).toString('hex'))
        return listener.apply(this, arguments)
      })
    }
    return on.call(this, event, listener)
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
