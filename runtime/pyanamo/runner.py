"""Running one sub-task: ``bash -c SCRIPT`` under a supervisor process, logs to files.

The supervisor (``supervise.py``) contains everything the script starts: processes that leave
its process group or session are still found and killed when the sub-task ends, times out or is
interrupted, and when the worker itself dies (SIGKILL included). It reports the script's exit
status and the CPU time and peak memory of the whole process tree.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
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

    @property
    def interrupted(self) -> bool:
        return self.exit_code is None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0

    def signal_reason(self) -> str | None:
        """``killed (SIGKILL: out of memory?)`` and the like, for a run a signal ended."""
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
    time and peak memory of its whole tree, and whether the lease deadline killed it."""

    status: int
    cpu: float
    peak_rss_kb: int
    deadline_passed: bool

    @classmethod
    def from_line(cls, line: bytes) -> SupervisorReport | None:
        """None if there is no whole line: the supervisor was killed before it wrote one."""
        try:
            status, cpu, peak, deadline = line.split()
            return cls(int(status), float(cpu), int(peak), deadline == b"1")
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


class SubtaskProcess:
    """One run of a sub-task; ``interrupt`` may be called from any thread."""

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
    ) -> None:
        self.script = script
        self.cgroups = cgroups  # where to create the sub-task's own cgroup (None: no cgroup)
        self.user = user  # (uid, gid): run the script as this user (the worker is root)
        self.env = dict(env)
        self.cwd = cwd
        self.log_folder = log_folder
        self.timeout = timeout
        self.grace = grace
        self.deadline = deadline  # seconds from its start after which the supervisor kills it
        self._lease_write = -1  # the pipe through which ``extend`` moves that deadline
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._exited = threading.Event()

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
            return self._run(stdout_path, stderr_path, out, err, started, started_at, cgroup)
        finally:
            if cgroup is not None:
                cgroup.remove()  # kills whatever is left in it first

    def _run(self, stdout_path: Path, stderr_path: Path, out: BinaryIO, err: BinaryIO, started: float,
             started_at: float, cgroup: Cgroup | None) -> Outcome:
        result_read = result_write = -1
        try:
            result_read, result_write = os.pipe()
            lease_read, self._lease_write = os.pipe()
        except OSError as exc:  # out of file descriptors
            for fd in (result_read, result_write):
                if fd >= 0:
                    os.close(fd)
            out.close()
            err.close()
            raise LocalFailure(f"cannot start a sub-task: {exc.strerror}") from None
        try:
            with out, err:
                with self._lock:
                    if self._reason is not None:  # interrupted before it started
                        return Outcome(None, False, 0.0, 0.0, stdout_path, stderr_path)
                    try:
                        process = subprocess.Popen(  # noqa: S603 - the script is the user's task, by design
                            [sys.executable, "-I", "-S", str(SUPERVISOR), str(os.getpid()),
                             str(self.grace), str(result_write), str(lease_read), repr(self.deadline or 0.0),
                             str(cgroup.path) if cgroup else "-", self.script,
                             *([str(self.user[0]), str(self.user[1])] if self.user else [])],
                            cwd=self.cwd, env={**self.env, MARKER: str(os.getpid())}, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=err, start_new_session=True, pass_fds=(result_write, lease_read),
                        )
                    except OSError as exc:
                        raise LocalFailure(f"cannot start a sub-task: {exc.strerror}") from None
                    self._pid = process.pid
                    with _supervisors_lock:
                        _supervisors.add(process.pid)
                for fd in (result_write, lease_read):
                    os.close(fd)
                result_write = lease_read = -1
                timer = None
                if self.timeout:
                    timer = threading.Timer(self.timeout, self.interrupt, args=("timeout",))
                    timer.daemon = True
                    timer.start()
                _, own_status, _ = os.wait4(process.pid, 0)
                process.returncode = os.waitstatus_to_exitcode(own_status)
                with _supervisors_lock:
                    _supervisors.discard(process.pid)
                self._exited.set()
                if timer:
                    timer.cancel()
                with os.fdopen(result_read, "rb") as pipe:
                    result_read = -1
                    report = pipe.read()
        finally:
            with self._lock:
                lease_write, self._lease_write = self._lease_write, -1
            for fd in (result_read, result_write, lease_read, lease_write):
                if fd >= 0:
                    os.close(fd)
        wall = time.monotonic() - started
        result = SupervisorReport.from_line(report)
        if result is None:  # the supervisor was killed: its sub-task's processes are re-parented here
            if cgroup is not None:
                cgroup.kill()  # all of them, also those that left the tree and cleared their environment
            kill_orphans()
            with self._lock:
                reason = self._reason
            if reason is not None:
                return Outcome(None, False, 0.0, wall, stdout_path, stderr_path, None, 0, started_at)
            return Outcome(SUPERVISOR_LOST_EXIT_CODE, False, cgroup.cpu_seconds() if cgroup else 0.0, wall,
                           stdout_path, stderr_path, None, 0, started_at, supervisor_lost=True)
        status, cpu, peak = result.status, result.cpu, result.peak_rss_kb
        exit_code = os.waitstatus_to_exitcode(status)
        signum = -exit_code if exit_code < 0 else None
        if signum is not None:
            exit_code = SIGNAL_EXIT_BASE + signum
        with self._lock:
            if result.deadline_passed and self._reason is None:
                self._reason = "lease_deadline"
            reason = self._reason
        if reason == "timeout":
            return Outcome(TIMEOUT_EXIT_CODE, True, cpu, wall, stdout_path, stderr_path, None, peak, started_at)
        if reason is not None:
            return Outcome(None, False, cpu, wall, stdout_path, stderr_path, signum, peak, started_at)
        return Outcome(exit_code, False, cpu, wall, stdout_path, stderr_path, signum, peak, started_at)

    def extend(self, seconds: float) -> None:
        """Move the supervisor's deadline to ``seconds`` from now (after a lease renewal)."""
        with self._lock:
            if self._lease_write < 0:
                return
            try:
                os.write(self._lease_write, f"{seconds:.3f}\n".encode())
            except OSError:  # the supervisor is gone (BrokenPipe) or the pipe is full: it ends anyway
                pass

    def interrupt(self, reason: str = "stop", grace: float | None = None) -> None:
        """Stop the sub-task and everything it started: SIGTERM, then SIGKILL after the grace
        time (the supervisor does both); ``grace=0`` kills at once."""
        with self._lock:
            if self._reason is None:
                self._reason = reason
            pid = self._pid
        if pid is None or self._exited.is_set():
            return
        try:
            os.kill(pid, signal.SIGHUP if grace is not None and grace <= 0 else signal.SIGTERM)
        except ProcessLookupError:
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
