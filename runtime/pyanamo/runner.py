"""Running one sub-task: ``bash -c SCRIPT`` in its own process group, logs to files.

The process group lets the worker stop a sub-task and everything it started (on timeout,
SIGTERM, or a lost lease). ``wait4`` gives the CPU time of the sub-task and the descendants it
waited for.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

TIMEOUT_EXIT_CODE = 124  # as coreutils' timeout(1)
KILL_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Outcome:
    """What happened to one run of a sub-task."""

    exit_code: int | None  # None when the worker interrupted it (stop or lost lease)
    timed_out: bool
    cpu_time: float
    wall_time: float
    stdout: Path
    stderr: Path

    @property
    def interrupted(self) -> bool:
        return self.exit_code is None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0


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
    ) -> None:
        self.script = script
        self.env = dict(env)
        self.cwd = cwd
        self.log_folder = log_folder
        self.timeout = timeout
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._exited = threading.Event()

    def run(self) -> Outcome:
        self.log_folder.mkdir(parents=True, exist_ok=True)
        stdout_path = self.log_folder / "stdout"
        stderr_path = self.log_folder / "stderr"
        started = time.monotonic()
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            with self._lock:
                if self._reason is not None:  # interrupted before it started
                    return Outcome(None, False, 0.0, 0.0, stdout_path, stderr_path)
                process = subprocess.Popen(  # noqa: S603 - the script is the user's task, by design
                    ["bash", "-c", self.script],
                    cwd=self.cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
                self._pid = process.pid
            timer = None
            if self.timeout:
                timer = threading.Timer(self.timeout, self.interrupt, args=("timeout",))
                timer.daemon = True
                timer.start()
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            self._exited.set()
            if timer:
                timer.cancel()
            _kill_group(process.pid, signal.SIGKILL)  # leftovers the script left running
        wall = time.monotonic() - started
        cpu = usage.ru_utime + usage.ru_stime
        with self._lock:
            reason = self._reason
        if reason == "timeout":
            return Outcome(TIMEOUT_EXIT_CODE, True, cpu, wall, stdout_path, stderr_path)
        if reason is not None:
            return Outcome(None, False, cpu, wall, stdout_path, stderr_path)
        return Outcome(process.returncode, False, cpu, wall, stdout_path, stderr_path)

    def interrupt(self, reason: str = "stop", grace: float | None = None) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
        grace = KILL_GRACE_SECONDS if grace is None else grace
        with self._lock:
            if self._reason is None:
                self._reason = reason
            pid = self._pid
        if pid is None or self._exited.is_set():
            return
        if grace <= 0:
            _kill_group(pid, signal.SIGKILL)
            return
        _kill_group(pid, signal.SIGTERM)
        escalate = threading.Timer(grace, self._kill_if_running, args=(pid,))
        escalate.daemon = True
        escalate.start()

    def _kill_if_running(self, pid: int) -> None:
        if not self._exited.is_set():
            _kill_group(pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass(frozen=True)
class StreamSummary:
    tail: str
    lines: int
    size: int


def summarize_stream(path: Path, tail_bytes: int) -> StreamSummary:
    """The tail (decoded leniently) and the line and byte counts of a log file."""
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
        tail = handle.read(tail_bytes)
    text = tail.decode("utf-8", errors="replace")
    if size > tail_bytes:
        text = "…" + text
    return StreamSummary(text, lines, size)


def last_line(text: str) -> str | None:
    """The last non-empty line of a tail (the error line shown by `status`)."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()[:300]
    return None
