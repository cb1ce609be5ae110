"""A cgroup per sub-task: found where this process may create one, joined by the sub-task, killed
whole (also what left the process tree and cleared its environment), swept when its worker is gone.
The behaviour tests use the machine's real cgroup v2 hierarchy and are skipped where this process
may not create cgroups there."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pyanamo.cgroups import PREFIX, Cgroup, CgroupParent, _mount_point, _own_path, process_start
from pyanamo.runner import SUPERVISOR_LOST_EXIT_CODE, ForkServer, SubtaskProcess

from helpers import wait_for

MOUNTINFO = """\
22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw
30 24 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory
"""

PARENT = CgroupParent.find()
needs_cgroups = pytest.mark.skipif(PARENT is None, reason="this process may not create cgroups here")


def test_the_cgroup_v2_mount_and_own_path_are_read_from_proc():
    assert _mount_point(MOUNTINFO) == Path("/sys/fs/cgroup/unified")
    assert _mount_point(MOUNTINFO.replace("cgroup2 cgroup2", "tmpfs tmpfs")) is None
    assert _own_path("4:memory:/x\n0::/system.slice/pyanamo-worker.service\n") == "/system.slice/pyanamo-worker.service"
    assert _own_path("4:memory:/x\n") is None  # cgroup v1 only


def sleeping_in(cgroup: Cgroup, seconds: str) -> subprocess.Popen:
    """A process that joined ``cgroup`` before it started sleeping."""
    return subprocess.Popen(["sleep", seconds], preexec_fn=lambda: cgroup.join(), start_new_session=True)


@needs_cgroups
@pytest.mark.parametrize("forked", [False, True], ids=["process", "fork-server"])
def test_a_subtask_that_leaves_the_tree_and_clears_its_environment_dies_with_its_killed_supervisor(tmp_path, forked):
    assert PARENT is not None
    server = ForkServer() if forked else None
    ours = f"{PREFIX}{os.getpid()}-"  # other test processes create cgroups here meanwhile

    def our_cgroups() -> set[str]:
        return {p.name for p in PARENT.path.iterdir() if p.name.startswith(ours)}

    before = our_cgroups()
    pids = tmp_path / "pids"
    process = SubtaskProcess(f"env -i setsid sleep 300 & echo $! > {pids}; sleep 0.2; kill -9 $PPID; sleep 300",
                             env=dict(os.environ), cwd=tmp_path, log_folder=tmp_path / "log", cgroups=PARENT,
                             server=server)
    try:
        outcome = process.run()  # not a subreaper here: without the cgroup both sleeps would run on
    finally:
        if server is not None:
            server.close()
    assert outcome.supervisor_lost and outcome.exit_code == SUPERVISOR_LOST_EXIT_CODE
    escapee = int(pids.read_text())
    wait_for(lambda: process_start(escapee) is None or _state(escapee) == "Z", timeout=5,
             message="the escapee killed")
    assert our_cgroups() == before, "the sub-task's cgroup was not removed"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@needs_cgroups
def test_kill_stops_every_process_of_the_cgroup_and_remove_deletes_it():
    assert PARENT is not None
    cgroup = PARENT.create()
    assert cgroup is not None and not cgroup.populated()
    sleepers = [sleeping_in(cgroup, "300") for _ in range(3)]
    try:
        assert sorted(cgroup.pids()) == sorted(s.pid for s in sleepers) and cgroup.populated()
        cgroup.kill()
        assert [s.wait(timeout=10) for s in sleepers] == [-signal.SIGKILL] * 3
        assert cgroup.remove() and not cgroup.path.exists()
    finally:
        for s in sleepers:
            s.kill()
        cgroup.remove()


@needs_cgroups
def test_cpu_seconds_count_every_process_that_ran_in_it():
    assert PARENT is not None
    cgroup = PARENT.create()
    assert cgroup is not None
    try:
        busy = subprocess.Popen(["python3", "-c", "import time\nend = time.process_time() + 0.3\n"
                                 "while time.process_time() < end: pass"], preexec_fn=lambda: cgroup.join())
        assert busy.wait(timeout=60) == 0
        assert cgroup.cpu_seconds() >= 0.3
    finally:
        cgroup.remove()


@needs_cgroups
def test_a_sweep_kills_the_cgroups_of_workers_that_are_gone_and_leaves_live_ones():
    assert PARENT is not None
    gone = Cgroup(PARENT.path / f"{PREFIX}{os.getpid()}-1-1")  # this PID, another start time: a dead worker's
    gone.path.mkdir()
    live = PARENT.create()  # this process's own
    assert live is not None
    orphan, own = sleeping_in(gone, "300"), sleeping_in(live, "300")
    try:
        assert PARENT.sweep() == 1
        assert orphan.wait(timeout=10) == -signal.SIGKILL and not gone.path.exists()
        time.sleep(0.1)
        assert own.poll() is None and live.path.exists()
    finally:
        for s in (orphan, own):
            s.kill()
            s.wait()
        gone.remove()
        live.remove()
