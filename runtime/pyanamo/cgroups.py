"""A cgroup (v2) per sub-task, where the worker may create one.

Why: the supervisor finds a sub-task's processes by walking ``/proc`` from itself (it is their
child subreaper), and the worker, reaper of last resort, finds a dead supervisor's leftovers by
the marker in their environment. A process that leaves the tree *and* clears its environment
(``env -i setsid …`` after its supervisor died), or a sub-task whose supervisor and worker were
killed together, escapes both. A cgroup holds every process of the sub-task whatever it does
(only root can move a process out), and ``cgroup.kill`` kills all of them in one step, forks
racing the kill included.

Where: a child of the worker's own cgroup, when this process may write that cgroup's
``cgroup.procs`` (root, or a delegated subtree: the fleet's systemd unit has ``Delegate=yes``).
No controller is enabled, so the worker's cgroup keeps its own processes (cgroup v2 forbids that
only with controllers). Elsewhere (no cgroup v2, not writable, not Linux) ``CgroupParent.find``
returns None and containment is the supervisor's and the worker's, as before.

Names: ``pyanamo-<worker pid>-<worker start time>-<n>``. A worker that starts sweeps the cgroups
of workers that are no longer running (a process ID alone could have been reused): it kills what
is left in them and removes them.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from .supervise import signal_all

PREFIX = "pyanamo-"
_numbers = itertools.count(1)  # per process: several launchers of one process never share a name


def _mount_point(mountinfo: str) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or ``…/unified`` on hybrid
    systems), from ``/proc/self/mountinfo``."""
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        if after.split(" ", 1)[0] == "cgroup2":
            return Path(before.split()[4])
    return None


def _own_path(proc_cgroup: str) -> str | None:
    """This process's cgroup v2 path (the ``0::`` line of ``/proc/self/cgroup``)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def process_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), which with its ID names it uniquely."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class Cgroup:
    """One sub-task's cgroup."""

    path: Path

    def join(self, pid: int = 0) -> None:
        """Move ``pid`` (0: the calling process) into it; OSError if refused."""
        with open(self.path / "cgroup.procs", "w") as procs:
            procs.write(f"{pid}\n")

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def _keyed(self, name: str) -> dict[str, str]:
        """A flat-keyed cgroup file (``key value`` lines: ``cgroup.events``, ``cpu.stat``); empty if
        it cannot be read."""
        try:
            return dict(line.partition(" ")[::2] for line in (self.path / name).read_text().splitlines())
        except OSError:
            return {}

    def populated(self) -> bool:
        events = self._keyed("cgroup.events")
        if not events:
            return False
        return events["populated"].strip() == "1" if "populated" in events else bool(self.pids())

    def kill(self) -> None:
        """Kill every process in it (``cgroup.kill``, Linux 5.14+; before that, freeze and kill
        each process listed, until none is left)."""
        try:
            (self.path / "cgroup.kill").write_text("1\n")
            return
        except OSError:
            pass
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                signal_all(pids, sig)
            time.sleep(0.01)

    def cpu_seconds(self) -> float:
        """CPU time of every process that ever ran in it (``cpu.stat``'s ``usage_usec``)."""
        try:
            return int(self._keyed("cpu.stat").get("usage_usec", "0")) / 1e6
        except ValueError:
            return 0.0

    def remove(self, timeout: float = 5.0) -> bool:
        """Kill what is left and remove the cgroup once it is empty (a killed process leaves it
        when it has exited, which takes a moment); False if it could not be removed."""
        deadline = time.monotonic() + timeout
        while True:
            if self.populated():
                self.kill()
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)


class CgroupParent:
    """The worker's own cgroup, under which it creates one cgroup per sub-task."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._owner = f"{os.getpid()}-{process_start(os.getpid())}"

    @classmethod
    def find(cls) -> CgroupParent | None:
        """The worker's own cgroup if it may create sub-task cgroups there, else None."""
        try:
            mount = _mount_point(Path("/proc/self/mountinfo").read_text())
            own = _own_path(Path("/proc/self/cgroup").read_text())
        except OSError:
            return None
        if mount is None or own is None:
            return None
        path = mount / own.lstrip("/")
        if not (path / "cgroup.procs").is_file() or not os.access(path / "cgroup.procs", os.W_OK) \
                or not os.access(path, os.W_OK):
            return None
        return cls(path)

    def create(self) -> Cgroup | None:
        """A new, empty cgroup for one sub-task (None if the kernel refused: the sub-task then
        runs contained by its supervisor alone)."""
        path = self.path / f"{PREFIX}{self._owner}-{next(_numbers)}"
        try:
            path.mkdir()
        except OSError:
            return None
        return Cgroup(path)

    def sweep(self) -> int:
        """Kill and remove the sub-task cgroups of workers that no longer run (their supervisors
        were killed with them); the number of processes killed."""
        killed = 0
        try:
            children = [p for p in self.path.iterdir() if p.name.startswith(PREFIX) and p.is_dir()]
        except OSError:
            return 0
        for path in children:
            try:
                pid, start = path.name[len(PREFIX):].split("-")[:2]
                alive = process_start(int(pid)) == start
            except ValueError:
                continue
            if alive:
                continue
            cgroup = Cgroup(path)
            killed += len(cgroup.pids())
            cgroup.remove()
        return killed
