"""The per-sub-task supervisor: runs ``bash -c SCRIPT`` and makes sure nothing it started outlives it.

Run by the worker as
``python -I -S supervise.py PARENT_PID GRACE RESULT_FD LEASE_FD DEADLINE CGROUP SCRIPT [UID GID]``;
the result is written to the pipe RESULT_FD. CGROUP is an empty cgroup (v2) folder the worker
created for this sub-task, or ``-``: the sub-task joins it before it starts, and every kill
starts with ``cgroup.kill`` (all of its processes at once, wherever they went; ``cgroups.py``).
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

It then writes one line to RESULT_FD, ``STATUS CPU_SECONDS MAXRSS_KB DEADLINE_PASSED``: the
script's wait status, the resource usage of the whole tree (``RUSAGE_CHILDREN``: CPU time and the
peak resident set of its largest process), and 1 if it killed the tree at the lease deadline.
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


def prctl(option, value):
    """Linux's prctl(2); False where it is missing or refused. (The worker uses it too.)"""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
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


def _which(name):
    for folder in os.get_exec_path():
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
    def __init__(self, parent, grace, script, user=None, lease_fd=-1, deadline=0.0, cgroup=None):
        self.parent = parent
        self.cgroup = cgroup  # the sub-task's cgroup folder, or None
        self.grace = grace
        self.script = script
        self.user = user  # (uid, gid) to run the script as, or None
        self.child: int = 0
        self.contained = False
        self.lease_fd = lease_fd  # the worker writes "SECONDS\n" there after each lease renewal
        self.deadline = time.monotonic() + deadline if deadline > 0 else None
        self.deadline_passed = False

    def start(self):
        self.contained = prctl(PR_SET_CHILD_SUBREAPER, 1) and os.path.isdir("/proc/self")
        prctl(PR_SET_PDEATHSIG, signal.SIGHUP)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGHUP, self._on_kill)
        signal.signal(signal.SIGALRM, self._on_kill)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the worker, which decides
        if os.getppid() != self.parent:  # the worker died before the death signal was armed
            return False
        bash = _which("bash")  # here: a dropped user may not read the modules a PATH search imports
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
                for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                if self.user is not None:  # root -> the user: every capability goes with it
                    uid, gid = self.user
                    os.setgroups([gid])
                    os.setgid(gid)
                    os.setuid(uid)
                os.execv(bash, ["bash", "-c", self.script])
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
                if not data:  # the worker closed it: no more renewals will come
                    watched.remove(self.lease_fd)
                    continue
                try:
                    seconds = float(data.split()[-1])
                except (ValueError, IndexError):
                    continue
                if not self.deadline_passed:
                    self.deadline = time.monotonic() + seconds

    def wait(self):
        """Wait for the script, clean up after it, reap everything; return the result."""
        status = self._wait_script()
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
        }


def main(argv):
    parent, grace, result_fd, lease_fd = int(argv[1]), float(argv[2]), int(argv[3]), int(argv[4])
    deadline, cgroup, script = float(argv[5]), argv[6], argv[7]
    user = (int(argv[8]), int(argv[9])) if len(argv) > 9 else None
    for fd in (result_fd, lease_fd):  # the supervisor's own: closed when the script's bash starts
        if fd >= 0:
            os.set_inheritable(fd, False)
    supervisor = Supervisor(parent, grace, script, user, lease_fd, deadline, None if cgroup == "-" else cgroup)
    if not supervisor.start():
        return 1
    result = supervisor.wait()
    try:
        with os.fdopen(result_fd, "w") as out:
            out.write(f"{result['status']} {result['cpu']!r} {result['maxrss_kb']} "
                      f"{int(result['deadline_passed'])}\n")
    except OSError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
