"""Running one sub-task: ``bash -c SCRIPT`` under a supervisor process, logs to files.

The supervisor (``supervise.py``) contains everything the script starts: processes that leave
its process group or session are still found and killed when the sub-task ends, times out or is
interrupted, and when the worker itself dies (SIGKILL included). It reports the script's exit
status and the CPU time and peak memory of the whole process tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from .cgroups import Cgroup, CgroupParent
from .supervise import PR_SET_CHILD_SUBREAPER, children_by_parent, descendants, prctl, signal_all

TIMEOUT_EXIT_CODE = 124  # as coreutils' timeout(1)
SUPERVISOR_LOST_EXIT_CODE = 125  # as timeout(1) when timeout itself fails: the sub-task's own status is unknown
SIGNAL_EXIT_BASE = 128  # a process ended by signal N exits 128 + N, as a shell reports it
KILL_GRACE_SECONDS = 5.0
SUPERVISOR = Path(__file__).with_name("supervise.py")


class LocalFailure(Exception):
    """This machine cannot run sub-tasks (log folder not writable, disk full, fork failed):
    the item is not at fault and goes back to the queue."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one run of a sub-task."""

    exit_code: int | None  # None when the worker interrupted it (stop or lost lease)
    timed_out: bool
    cpu_time: float
    wall_time: float
    stdout: Path
    stderr: Path
    signal: int | None = None  # the signal that ended the script, if one did
    peak_rss_kb: int = 0
    started_at: float = 0.0  # epoch seconds: when it started and ended (wall_time is monotonic)
    supervisor_lost: bool = False  # the supervisor was killed: the script's own status is unknown
    fork_server_lost: bool = False  # ... with the fork server that started it (it killed the script)

    @property
    def interrupted(self) -> bool:
        return self.exit_code is None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0

    def signal_reason(self) -> str | None:
        """``killed (SIGKILL: out of memory?)`` and the like, for a run a signal ended."""
        if self.fork_server_lost:
            return ("the fork server that started its supervisor was killed (by the sub-task itself, or the OOM "
                    "killer): the sub-task was killed with everything it started; its own exit status is unknown")
        if self.supervisor_lost:
            return ("its supervisor process was killed (by the sub-task itself, or the OOM killer): "
                    "the sub-task's exit status is unknown; what it left running was killed")
        if self.signal is None:
            return None
        try:
            name = signal.Signals(self.signal).name
        except ValueError:
            name = f"signal {self.signal}"
        hint = ": out of memory?" if self.signal == signal.SIGKILL else ""
        return f"killed ({name}{hint})"


@dataclass(frozen=True)
class SupervisorReport:
    """The supervisor's one-line result (``supervise.py``): the script's wait status, the CPU
    time and peak memory of its whole tree, whether the lease deadline killed it, and whether
    its parent's death did (the status is then that kill's, not the script's)."""

    status: int
    cpu: float
    peak_rss_kb: int
    deadline_passed: bool
    parent_lost: bool

    @classmethod
    def from_line(cls, line: bytes) -> SupervisorReport | None:
        """None if there is no whole line: the supervisor was killed before it wrote one."""
        if line.startswith(b"error "):  # it could not start the script (its folder is gone)
            raise LocalFailure(line[6:].decode(errors="replace").strip())
        try:
            status, cpu, peak, deadline, parent_lost = line.split()
            return cls(int(status), float(cpu), int(peak), deadline == b"1", parent_lost == b"1")
        except ValueError:
            return None


_supervisors: set[int] = set()  # this worker's live supervisor processes
_supervisors_lock = threading.Lock()


def become_subreaper() -> bool:
    """Make this process (the worker) the reaper of last resort: if a supervisor is killed, the
    processes of its sub-task are re-parented here, where ``kill_orphans`` finds them (Linux)."""
    return sys.platform == "linux" and bool(prctl(PR_SET_CHILD_SUBREAPER, 1))


MARKER = "PYANAMO_SUPERVISED_BY"  # in every sub-task's environment: the worker's process ID


def _marked(pid: int) -> bool:
    """Whether ``pid`` runs a sub-task of this worker (its environment carries the marker)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return f"{MARKER}={os.getpid()}".encode() in handle.read().split(b"\0")
    except OSError:
        return False


def kill_orphans() -> int:
    """Kill and reap what a killed supervisor left: the worker's children (re-parented here, the
    worker being a subreaper) that run a sub-task of its own and are no live supervisor, and
    everything under them (frozen first, so nothing forks away). The number of processes killed."""
    if not os.path.isdir("/proc"):
        return 0
    me, killed = os.getpid(), 0
    for _ in range(100):
        children = children_by_parent(zombies=True)  # a zombie root must still be reaped here
        with _supervisors_lock:
            roots = [c for c in children.get(me, []) if c not in _supervisors and _marked(c)]
        tree = [*roots, *(d for root in roots for d in descendants(root, children))]
        if not tree:
            return killed
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            signal_all(tree, sig)
        killed += len(tree)
        for pid in roots:  # re-parented here: the worker must reap them
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return killed


def safe_name(text: str, limit: int = 80) -> str:
    """A file-name-safe form of an item ID, unique even after cleaning or truncation."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:limit].lstrip(".") or "_"
    if cleaned != text:
        cleaned += "-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return cleaned


class ForkServer:
    """The worker's fork server (``supervise.py serve``): started once, it forks a supervisor
    per sub-task, which saves the supervisor's Python start-up (tens of milliseconds of CPU) on
    every sub-task. One request at a time; thread-safe. If it has died, the next request starts
    another; a request it may have acted on is never sent twice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None

    def spawn(self, request: Mapping[str, object], fds: tuple[int, ...]) -> int:
        """Fork a supervisor for ``request`` with ``fds`` (its stdout, stderr, result and command
        pipes); its process ID. LocalFailure if that cannot be done."""
        payload = json.dumps(request).encode()
        with self._lock:
            for _ in range(2):
                sock = self._socket or self._start()
                try:
                    socket.send_fds(sock, [len(payload).to_bytes(8, "big")], list(fds))
                    sock.sendall(payload)
                except OSError:  # it died before it read the request: nothing was started
                    self._discard()
                    continue
                try:
                    return int(self._read_reply(sock))
                except (OSError, ValueError):  # it died on the request: its supervisor, if any, kills
                    self._discard()  # its sub-task (parent-death signal); do not send it twice
                    raise LocalFailure("cannot start a sub-task: the fork server died") from None
            raise LocalFailure("cannot start a sub-task: the fork server dies on start")

    def close(self, timeout: float = 10.0) -> None:
        """Stop it once every sub-task has ended; it reaps its supervisors first (so their CPU
        time counts in the worker's). Past ``timeout`` it is killed, and so are its sub-tasks."""
        with self._lock:
            if self._socket is None:
                return
            try:  # it closes its end as it exits, which makes the socket readable; no timed wait on
                self._socket.sendall((4).to_bytes(8, "big") + b"exit")  # the child (that sleeps on the
                select.select([self._socket], [], [], timeout)  # wall clock, which libfaketime breaks)
            except OSError:
                pass
            self._discard()

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = subprocess.Popen(  # noqa: S603 - our own module
                [sys.executable, "-I", "-S", str(SUPERVISOR), "serve", str(os.getpid()), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                start_new_session=True)
        except OSError as exc:
            ours.close()
            raise LocalFailure(f"cannot start the fork server: {exc.strerror}") from None
        finally:
            theirs.close()
        self._socket = ours
        return ours

    @staticmethod
    def _read_reply(sock: socket.socket) -> bytes:
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                raise ValueError("no reply")
            reply += chunk
        return reply

    def _discard(self) -> None:
        """Close the socket; kill the server if it is still there; reap it."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            self._process = None


class _Spawned:
    """A supervisor started as a process of its own (``python supervise.py``), the worker's child."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.pid = process.pid
        with _supervisors_lock:
            _supervisors.add(self.pid)

    def finish(self, result_read: int) -> bytes:
        os.wait4(self.pid, 0)
        with _supervisors_lock:
            _supervisors.discard(self.pid)
        with os.fdopen(result_read, "rb") as pipe:
            return pipe.read()


class _Forked:
    """A supervisor forked by the fork server (its child, not the worker's)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:  # to know when it has wholly exited, though the fork server reaps it
            self.pidfd = os.pidfd_open(pid)
        except (OSError, AttributeError):  # already gone (or not Linux 5.3+)
            self.pidfd = -1

    def finish(self, result_read: int) -> bytes:
        try:
            with os.fdopen(result_read, "rb") as pipe:
                report = pipe.read()
            if not report.endswith(b"\n") and self.pidfd >= 0:
                # killed before it reported: wait until it has wholly exited, so that its orphans
                # are re-parented to the worker before the worker looks for them
                select.select([self.pidfd], [], [])
            return report
        finally:
            if self.pidfd >= 0:
                os.close(self.pidfd)


class SubtaskProcess:
    """One run of a sub-task under its supervisor, started as a process of its own or forked by
    ``server``; ``interrupt`` and ``extend`` may be called from any thread."""

    def __init__(
        self,
        script: str,
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_folder: Path,
        timeout: float | None = None,
        grace: float = KILL_GRACE_SECONDS,
        user: tuple[int, int] | None = None,
        deadline: float | None = None,
        cgroups: CgroupParent | None = None,
        server: ForkServer | None = None,
    ) -> None:
        self.script = script
        self.cgroups = cgroups  # where to create the sub-task's own cgroup (None: no cgroup)
        self.server = server
        self.user = user  # (uid, gid): run the script as this user (the worker is root)
        self.env = dict(env)
        self.cwd = cwd
        self.log_folder = log_folder
        self.timeout = timeout
        self.grace = grace
        self.deadline = deadline  # seconds from its start after which the supervisor kills it
        self._commands = -1  # the pipe through which ``extend`` and ``interrupt`` reach the supervisor
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._reason: str | None = None

    def run(self) -> Outcome:
        """Run the script to its end; LocalFailure if it could not be started here."""
        stdout_path = self.log_folder / "stdout"
        stderr_path = self.log_folder / "stderr"
        try:
            self.log_folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            # the operator's alone (a sub-task's output may hold what others must not read); the
            # sub-task writes through the descriptors, whatever user it runs as
            out = os.fdopen(os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
            err = os.fdopen(os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
        except OSError as exc:
            raise LocalFailure(f"cannot write logs in {self.log_folder}: {exc.strerror}") from None
        started = time.monotonic()
        started_at = time.time()
        cgroup = self.cgroups.create() if self.cgroups is not None else None
        try:
            with out, err:
                report = self._supervise(out, err, cgroup)
            wall = time.monotonic() - started
            if report is None:  # interrupted before it started
                return Outcome(None, False, 0.0, 0.0, stdout_path, stderr_path)
            return self._outcome(report, Outcome(None, False, 0.0, wall, stdout_path, stderr_path,
                                                 started_at=started_at), cgroup)
        finally:
            if cgroup is not None:
                cgroup.remove()  # kills whatever is left in it first

    def _supervise(self, out: BinaryIO, err: BinaryIO, cgroup: Cgroup | None) -> bytes | None:
        """Start the supervisor and wait for its report (None: it was never started)."""
        result_read = result_write = command_read = -1
        try:
            try:
                result_read, result_write = os.pipe()
                command_read, commands = os.pipe()
            except OSError as exc:  # out of file descriptors
                raise LocalFailure(f"cannot start a sub-task: {exc.strerror}") from None
            os.set_blocking(commands, False)  # a supervisor that stopped reading never blocks the worker
            with self._lock:
                self._commands = commands
                if self._reason is not None:
                    return None
                supervisor = self._start(out, err, result_write, command_read, cgroup)
                self._pid = supervisor.pid
            for fd in (result_write, command_read):
                os.close(fd)
            result_write = command_read = -1
            timer = None
            if self.timeout:
                timer = threading.Timer(self.timeout, self.interrupt, args=("timeout",))
                timer.daemon = True
                timer.start()
            result_read, reading = -1, result_read
            report = supervisor.finish(reading)
            if timer:
                timer.cancel()
            return report
        finally:
            with self._lock:
                commands, self._commands = self._commands, -1
            for fd in (result_read, result_write, command_read, commands):
                if fd >= 0:
                    os.close(fd)

    def _start(self, out: BinaryIO, err: BinaryIO, result_write: int, command_read: int,
               cgroup: Cgroup | None) -> _Spawned | _Forked:
        env = {**self.env, MARKER: str(os.getpid())}
        if self.server is not None:
            request = {"script": self.script, "env": env, "cwd": str(self.cwd), "user": self.user,
                       "grace": self.grace, "deadline": self.deadline or 0.0,
                       "cgroup": str(cgroup.path) if cgroup else None}
            return _Forked(self.server.spawn(request, (out.fileno(), err.fileno(), result_write, command_read)))
        try:
            process = subprocess.Popen(  # noqa: S603 - the script is the user's task, by design
                [sys.executable, "-I", "-S", str(SUPERVISOR), str(os.getpid()),
                 str(self.grace), str(result_write), str(command_read), repr(self.deadline or 0.0),
                 str(cgroup.path) if cgroup else "-", self.script,
                 *([str(self.user[0]), str(self.user[1])] if self.user else [])],
                cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True, pass_fds=(result_write, command_read),
            )
        except OSError as exc:
            raise LocalFailure(f"cannot start a sub-task: {exc.strerror}") from None
        return _Spawned(process)

    def _outcome(self, line: bytes, ran: Outcome, cgroup: Cgroup | None) -> Outcome:
        """What the supervisor's report says happened (``ran``: the logs and times)."""
        report = SupervisorReport.from_line(line)
        with self._lock:
            if report is not None and report.deadline_passed and self._reason is None:
                self._reason = "lease_deadline"
            reason = self._reason
        if report is None:  # the supervisor was killed: its sub-task's processes are re-parented here
            if cgroup is not None:
                cgroup.kill()  # all of them, also those that left the tree and cleared their environment
            kill_orphans()
            if reason is not None:
                return ran
            return replace(ran, exit_code=SUPERVISOR_LOST_EXIT_CODE, supervisor_lost=True,
                           cpu_time=cgroup.cpu_seconds() if cgroup else 0.0)
        if report.parent_lost and reason is None:  # the fork server was killed and took the sub-task with it
            return replace(ran, exit_code=SUPERVISOR_LOST_EXIT_CODE, supervisor_lost=True, fork_server_lost=True,
                           cpu_time=report.cpu, peak_rss_kb=report.peak_rss_kb)
        exit_code = os.waitstatus_to_exitcode(report.status)
        signum = -exit_code if exit_code < 0 else None
        if signum is not None:
            exit_code = SIGNAL_EXIT_BASE + signum
        ran = replace(ran, cpu_time=report.cpu, peak_rss_kb=report.peak_rss_kb)
        if reason == "timeout":
            return replace(ran, exit_code=TIMEOUT_EXIT_CODE, timed_out=True)
        if reason is not None:
            return replace(ran, signal=signum)
        return replace(ran, exit_code=exit_code, signal=signum)

    def extend(self, seconds: float) -> None:
        """Move the supervisor's deadline to ``seconds`` from now (after a lease renewal)."""
        self._send(f"{seconds:.3f}\n".encode())

    def interrupt(self, reason: str = "stop", grace: float | None = None) -> None:
        """Stop the sub-task and everything it started: SIGTERM, then SIGKILL after the grace
        time (the supervisor does both); ``grace=0`` kills at once. Before it starts: it never does."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
        self._send(b"kill\n" if grace is not None and grace <= 0 else b"term\n")

    def _send(self, command: bytes) -> None:
        with self._lock:
            if self._commands < 0:
                return
            try:
                os.write(self._commands, command)
            except OSError:  # the supervisor is gone (BrokenPipe) or the pipe is full: it ends anyway
                pass


ELLIPSIS = "…"


@dataclass(frozen=True)
class StreamSummary:
    tail: str
    lines: int
    size: int


def summarize_stream(path: Path, tail_bytes: int) -> StreamSummary:
    """The tail and the line and byte counts of a log file. The tail is decoded leniently and
    cut so that it takes at most ``tail_bytes`` stored as UTF-8 (an invalid byte becomes a
    3-byte replacement character, so cutting the raw bytes alone is not enough)."""
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return StreamSummary("", 0, 0)
    lines = 0
    last = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk
        if not last.endswith(b"\n"):
            lines += 1
        handle.seek(max(0, size - tail_bytes))
        raw = handle.read(tail_bytes)
    encoded = raw.decode("utf-8", errors="replace").encode("utf-8")
    cut = size > tail_bytes or len(encoded) > tail_bytes
    if cut:  # keep the end, leave room for the ellipsis, never split a character
        encoded = encoded[-(tail_bytes - len(ELLIPSIS.encode())):]
    text = encoded.decode("utf-8", errors="ignore")
    return StreamSummary(ELLIPSIS + text if cut else text, lines, size)


def last_line(text: str) -> str | None:
    """The last non-empty line of a tail (the error line shown by `status`)."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()[:300]
    return None
