"""The per-sub-task supervisor: runs ``bash -c SCRIPT`` and makes sure nothing it started outlives it.

Run by the worker as
``python -I -S supervise.py PARENT_PID GRACE RESULT_FD LEASE_FD DEADLINE CGROUP SCRIPT [UID GID]``
(one process per sub-task), or forked by a *fork server*, ``python -I -S supervise.py serve
PARENT_PID SOCKET_FD``, that the worker starts once (``serve`` below): a fork costs a fraction of
a Python start-up, and the forked supervisor is the same code. The result is written to the pipe
RESULT_FD; LEASE_FD carries the worker's commands: a number of seconds (the lease was renewed:
move the deadline), ``term`` (stop: SIGTERM, then SIGKILL after GRACE) or ``kill`` (at once).
CGROUP is an empty cgroup (v2) folder the worker created for this sub-task, or ``-``: the
sub-task joins it before it starts, and every kill starts with ``cgroup.kill`` (all of its
processes at once, wherever they went; ``cgroups.py``).
With UID and GID (a worker run as root with ``--run-as USER``) the sub-task runs as that user:
the supervisor stays root, so it can still kill everything the sub-task starts, and the sub-task
holds no privilege at all. It uses the standard library only, and imports little, so it starts in
a few milliseconds.

Why a separate process: a sub-task may start processes that leave its process group or session
(``timeout``, ``setsid``, ``nohup``, daemons), so killing the group is not enough; and a worker
killed by SIGKILL (the OOM killer) cannot clean up after itself. On Linux the supervisor

- is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): every orphaned descendant of the sub-task
  is re-parented to it, so it can always find them (through ``/proc``) and reap them;
- gets a *parent-death signal* (``PR_SET_PDEATHSIG`` = SIGHUP): when the worker dies, however it
  dies, the supervisor kills the whole tree at once;
- on SIGTERM (the worker's stop, a timeout) sends SIGTERM to every descendant, and SIGKILL to
  whatever is left after GRACE seconds; on SIGHUP it kills everything at once;
- when the script exits, kills whatever it left running (freeze, then kill, until none is left);
- holds the item's lease deadline on its own monotonic clock: DEADLINE seconds from its start,
  moved on each time the worker writes a number of seconds to LEASE_FD (after each renewal).
  When the deadline passes it kills the whole tree at once. So a worker that is paused (SIGSTOP,
  Ctrl-Z, a VM paused while the supervisor's host runs on), hung or cut off cannot leave its
  sub-task running beside the next owner's run: the worker sets the deadline a quarter of the
  lease before the lease runs out, and nobody reclaims before it has run out.

It then writes one line to RESULT_FD, ``STATUS CPU_SECONDS MAXRSS_KB DEADLINE_PASSED PARENT_LOST``:
the script's wait status, the resource usage of the whole tree (``RUSAGE_CHILDREN``: CPU time and
the peak resident set of its largest process), 1 if it killed the tree at the lease deadline, and
1 if it killed the tree because its parent (the fork server) died: the status is then its kill,
not the script's own.
Plain text, not JSON: importing ``json`` costs more than a third of this process's start-up, and
it starts once per sub-task.

On other platforms (no ``prctl``, no ``/proc``) it falls back to the sub-task's process group:
processes that leave the group, and a SIGKILLed worker's sub-task, are not contained there.
"""

import ctypes
import os
import resource
import select
import sys
import time

try:  # the C module under `signal`: the same functions and numbers, without importing enum (5 ms of
    import _signal as signal  # type: ignore[import-not-found]  # a start-up paid once per sub-task)
except ImportError:  # another Python implementation
    import signal

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


_libc: list[ctypes.CDLL] = []  # loaded once: a forked supervisor calls prctl twice per sub-task


def prctl(option, value):
    """Linux's prctl(2); False where it is missing or refused. (The worker uses it too.)"""
    try:
        if not _libc:
            _libc.append(ctypes.CDLL(None, use_errno=True))
        return _libc[0].prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children_by_parent(zombies=False):
    """Every process's children, by parent (from /proc; empty where there is none). Zombies
    only if asked: a reaper must still wait for them. (The worker uses it too.)"""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if zombies or fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(name))
    return children


def descendants(root, children=None):
    """Live descendants of ``root`` (from /proc, or the ``children_by_parent`` map given)."""
    children = children_by_parent() if children is None else children
    found, frontier = [], [root]
    while frontier:
        frontier = [c for p in frontier for c in children.get(p, [])]
        found.extend(frontier)
    return found


def _which(name, env=None):
    for folder in os.get_exec_path(env):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return "/bin/" + name


def signal_all(pids, sig):
    """Send ``sig`` to each process that is still there. (The worker uses it too.)"""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


class Supervisor:
    def __init__(self, parent, grace, script, user=None, lease_fd=-1, deadline=0.0, cgroup=None, env=None):
        self.parent = parent
        self.env = env  # the script's environment (forked by the fork server); None: this process's
        self.cgroup = cgroup  # the sub-task's cgroup folder, or None
        self.grace = grace
        self.script = script
        self.user = user  # (uid, gid) to run the script as, or None
        self.child: int = 0
        self.contained = False
        self.lease_fd = lease_fd  # the worker writes "SECONDS\n" there after each lease renewal
        self.deadline = time.monotonic() + deadline if deadline > 0 else None
        self.deadline_passed = False
        self.parent_lost = False

    def start(self):
        self.contained = prctl(PR_SET_CHILD_SUBREAPER, 1) and os.path.isdir("/proc/self")
        prctl(PR_SET_PDEATHSIG, signal.SIGHUP)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGHUP, self._on_kill)
        signal.signal(signal.SIGALRM, self._on_kill)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the worker, which decides
        if os.getppid() != self.parent:  # the worker died before the death signal was armed
            return False
        bash = _which("bash", self.env)  # here: a dropped user may not read what a PATH search imports
        self.child = os.fork()
        if self.child == 0:  # the sub-task: its own session, default signal handling
            try:
                os.setsid()
                if self.cgroup:  # before dropping privileges; refused: the /proc walk still holds it
                    try:
                        with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as procs:
                            procs.write("0\n")
                    except OSError:
                        pass
                # default handling, also of the two that Python ignores at start-up and an exec
                # keeps ignored (SIGPIPE: `yes | head` would print "Broken pipe"; SIGXFSZ)
                for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGINT, signal.SIGPIPE,
                            signal.SIGXFSZ):
                    signal.signal(sig, signal.SIG_DFL)
                if self.user is not None:  # root -> the user: every capability goes with it
                    uid, gid = self.user
                    os.setgroups([gid])
                    os.setgid(gid)
                    os.setuid(uid)
                if self.env is None:
                    os.execv(bash, ["bash", "-c", self.script])
                os.execve(bash, ["bash", "-c", self.script], self.env)
            finally:
                os._exit(127)
        return True

    def tree(self):
        if self.contained:
            return descendants(os.getpid())
        return [-self.child] if self.child else []  # the process group only

    def _on_term(self, signum, frame):
        signal_all(self.tree(), signal.SIGTERM)
        signal.alarm(max(1, int(round(self.grace))))

    def _on_kill(self, signum, frame):
        if signum == signal.SIGHUP and os.getppid() != self.parent:  # the parent-death signal
            self.parent_lost = True
        self.kill_all()

    def kill_all(self):
        """Freeze every descendant, then kill them, until none is left (a fork racing the kill is
        frozen on the next round). The cgroup, if any, first: one write kills all of it."""
        if self.cgroup:
            try:
                with open(os.path.join(self.cgroup, "cgroup.kill"), "w") as kill:
                    kill.write("1\n")
            except OSError:
                pass
        for _ in range(100):
            pids = self.tree()
            if not pids:
                return
            signal_all(pids, signal.SIGSTOP)
            signal_all(pids, signal.SIGKILL)
            if not self.contained:
                return
            time.sleep(0.01)

    def _wait_script(self):
        """The script's wait status; meanwhile, read deadline extensions and kill the tree when
        the deadline passes. A signal (SIGCHLD among them) wakes the wait through a pipe."""
        if self.deadline is None and self.lease_fd < 0:
            return os.wait4(self.child, 0)[1]
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        watched = [wake_read] + ([self.lease_fd] if self.lease_fd >= 0 else [])
        while True:
            pid, status, _ = os.wait4(self.child, os.WNOHANG)
            if pid:
                return status
            timeout = None if self.deadline is None else self.deadline - time.monotonic()
            if timeout is not None and timeout <= 0 and not self.deadline_passed:
                self.deadline_passed = True
                self.kill_all()
                continue
            ready, _, _ = select.select(watched, [], [], None if self.deadline_passed else timeout)
            if wake_read in ready:
                os.read(wake_read, 4096)
            if self.lease_fd in ready:
                data = os.read(self.lease_fd, 4096)
                if not data:  # the worker closed it: no more commands will come
                    watched.remove(self.lease_fd)
                    continue
                self._command(data.split())

    def _command(self, words):
        """The worker's commands (``LEASE_FD``): ``term``, ``kill``, or seconds to the deadline."""
        for word in words:
            if word == b"term":
                self._on_term(signal.SIGTERM, None)
            elif word == b"kill":
                self.kill_all()
            else:
                try:
                    seconds = float(word)
                except ValueError:
                    continue
                if not self.deadline_passed:
                    self.deadline = time.monotonic() + seconds

    def nothing_left(self):
        """Whether the script left no process running, known without walking /proc: orphans are
        re-parented to a subreaper, so every live descendant lies below one of its children, and
        a subreaper without children has no descendants."""
        if not self.contained:
            return False
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return False

    def wait(self):
        """Wait for the script, clean up after it, reap everything; return the result."""
        status = self._wait_script()
        if not self.nothing_left():  # the usual case costs no walk of /proc
            self.kill_all()
        while True:  # reap the re-parented leftovers too, so their usage is counted
            try:
                if os.waitpid(-1, 0)[0] == 0:
                    break
            except ChildProcessError:
                break
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "status": status,
            "cpu": usage.ru_utime + usage.ru_stime,
            "maxrss_kb": usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss // 1024,
            "deadline_passed": self.deadline_passed,
            "parent_lost": self.parent_lost,
        }


def _report(result_fd, result):
    try:
        with os.fdopen(result_fd, "w") as out:
            out.write(f"{result['status']} {result['cpu']!r} {result['maxrss_kb']} "
                      f"{int(result['deadline_passed'])} {int(result['parent_lost'])}\n")
    except OSError:
        return 1
    return 0


def _name_process(name):
    """What ``ps -o comm`` and the tests see (``pyanamo-sup``, ``pyanamo-forksrv``)."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name)
    except OSError:
        pass


def main(argv):
    if len(argv) > 1 and argv[1] == "serve":
        return serve(int(argv[2]), int(argv[3]))
    parent, grace, result_fd, lease_fd = int(argv[1]), float(argv[2]), int(argv[3]), int(argv[4])
    deadline, cgroup, script = float(argv[5]), argv[6], argv[7]
    user = (int(argv[8]), int(argv[9])) if len(argv) > 9 else None
    for fd in (result_fd, lease_fd):  # the supervisor's own: closed when the script's bash starts
        if fd >= 0:
            os.set_inheritable(fd, False)
    _name_process("pyanamo-sup")
    supervisor = Supervisor(parent, grace, script, user, lease_fd, deadline, None if cgroup == "-" else cgroup)
    if not supervisor.start():
        return 1
    return _report(result_fd, supervisor.wait())


# -- the fork server ------------------------------------------------------------------------------
#
# The worker starts it once and sends it one request per sub-task over a Unix socket: an 8-byte
# length and the request as JSON (the script, its environment, folder, user, grace, deadline and
# cgroup), with four descriptors attached (SCM_RIGHTS): the sub-task's stdout and stderr, the
# result pipe's write end and the command pipe's read end. It forks a supervisor for the request,
# which is exactly the supervisor above, and answers with its process ID. The supervisor's parent
# is the fork server, so its parent-death signal fires when the fork server dies; the fork server
# ends when the worker closes the socket, which the kernel does when the worker dies, however it
# dies: then it exits at once and each supervisor kills its sub-task's tree. On a normal close
# (the worker sends ``exit``) it first reaps its supervisors, so their CPU time counts in the
# worker's. Orphans of a killed supervisor are re-parented to the worker (a subreaper; the fork
# server is not), where the worker finds them as it does without a fork server.

REQUEST_FDS = 4


def _recv_exact(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _forked_supervisor(server, request, fds):
    """In the forked child: become the request's supervisor; never returns."""
    code = 1
    try:
        out, err, result_fd, lease_fd = fds
        os.setsid()
        for fd, target in ((out, 1), (err, 2)):
            os.dup2(fd, target)
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        for fd in (result_fd, lease_fd):
            os.set_inheritable(fd, False)
        _name_process("pyanamo-sup")
        try:
            os.chdir(request["cwd"])
        except OSError as exc:  # the worker says why: it cannot start sub-tasks here
            with os.fdopen(result_fd, "w") as report:
                report.write(f"error cannot start a sub-task in {request['cwd']}: {exc.strerror}\n")
            os._exit(1)
        user = tuple(request["user"]) if request["user"] else None
        supervisor = Supervisor(server, request["grace"], request["script"], user, lease_fd, request["deadline"],
                                request["cgroup"], request["env"])
        if supervisor.start():
            code = _report(result_fd, supervisor.wait())
    finally:
        os._exit(code)


def serve(parent, sock_fd):
    """The fork server's loop: a request in, a supervisor forked, its process ID out."""
    import json
    import socket

    _name_process("pyanamo-forksrv")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides
    sock = socket.socket(fileno=sock_fd)
    sock.set_inheritable(False)
    if os.getppid() != parent:
        return 1
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    me = os.getpid()
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_read], [], [])
        if wake_read in ready:
            os.read(wake_read, 4096)
            _reap(block=False)
        if sock.fileno() not in ready:
            continue
        try:
            header, fds, _, _ = socket.recv_fds(sock, 8, REQUEST_FDS)
            if len(header) < 8 and header:
                header += _recv_exact(sock, 8 - len(header)) or b""
            payload = _recv_exact(sock, int.from_bytes(header, "big")) if len(header) == 8 else None
        except OSError:  # the worker died mid-request (a reset connection)
            payload = None
        if payload is None:  # the worker died or closed the socket without a word: stop now
            return 0
        if payload == b"exit":  # a normal close: every sub-task has ended; reap their supervisors
            _reap(block=True)
            return 0
        child = os.fork()
        if child == 0:
            sock.close()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(wake_read)
            os.close(wake_write)
            _forked_supervisor(me, json.loads(payload), fds)
        for fd in fds:
            os.close(fd)
        try:
            sock.sendall(f"{child}\n".encode())
        except OSError:  # the worker is gone: its supervisors kill their sub-tasks as this exits
            return 0


def _reap(block):
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    sys.exit(main(sys.argv))
