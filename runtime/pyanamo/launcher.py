"""The seam through which a worker starts a sub-task.

The worker decides *what* runs (the script, its environment, its folder, its limits); a launcher
decides *how*. Both launchers here run each sub-task under a supervisor (``supervise.py``), which
holds the lease deadline and kills the sub-task's whole tree: ``ForkServerLauncher`` (the
default) forks it from a fork server the worker starts once; ``SupervisedLauncher`` starts it as a
process of its own (a Python start-up per sub-task). A container launcher is another
``Launcher``; the worker, the lease keeper and the tests do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .cgroups import CgroupParent
from .runner import ForkServer, Outcome, SubtaskProcess


@dataclass(frozen=True)
class Launch:
    """What to run and within which limits."""

    script: str
    env: Mapping[str, str]
    cwd: Path
    log_folder: Path  # its stdout and stderr go there
    timeout: float | None = None  # seconds of wall time; then it is killed (exit 124)
    user: tuple[int, int] | None = None  # (uid, gid) to run as
    deadline: float | None = None  # seconds after which it is killed unless ``extend``ed (the lease)


class RunningSubtask(Protocol):
    """One started sub-task. ``interrupt`` and ``extend`` may be called from any thread."""

    def run(self) -> Outcome:
        """Run it to its end; ``runner.LocalFailure`` if it cannot be started here."""
        ...

    def interrupt(self, reason: str = "stop", grace: float | None = None) -> None:
        """Stop it (TERM, then KILL after ``grace`` seconds, default ``KILL_GRACE_SECONDS``);
        before ``run``, it never starts."""
        ...

    def extend(self, seconds: float) -> None:
        """Move its deadline to ``seconds`` from now (the lease was renewed)."""
        ...


class Launcher(Protocol):
    def launch(self, launch: Launch) -> RunningSubtask:
        """A sub-task ready to ``run`` (nothing has started yet)."""
        ...

    def close(self) -> None:
        """Release what the launcher holds; its sub-tasks have ended (or are to be killed)."""
        ...


class SupervisedLauncher:
    """A supervisor process per sub-task (``runner.SubtaskProcess``), started by the worker itself
    or, with ``server``, forked by a fork server. With ``cgroups`` (where the worker may create
    them) each sub-task also runs in a cgroup of its own."""

    def __init__(self, cgroups: CgroupParent | None = None, server: ForkServer | None = None) -> None:
        self.cgroups = cgroups
        self.server = server

    def launch(self, launch: Launch) -> RunningSubtask:
        return SubtaskProcess(launch.script, env=launch.env, cwd=launch.cwd, log_folder=launch.log_folder,
                              timeout=launch.timeout, user=launch.user, deadline=launch.deadline,
                              cgroups=self.cgroups, server=self.server)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class ForkServerLauncher(SupervisedLauncher):
    """The default: each supervisor forked by a fork server (``runner.ForkServer``) started on the
    first launch: the same containment without a Python start-up per sub-task."""

    def __init__(self, cgroups: CgroupParent | None = None) -> None:
        super().__init__(cgroups, ForkServer())


LAUNCHERS: dict[str, Callable[[CgroupParent | None], Launcher]] = {
    "fork-server": ForkServerLauncher, "process": SupervisedLauncher}
