"""Running one sub-task as a real process: exit codes, logs, CPU time, timeouts, interrupts —
with its supervisor started both ways (a process of its own, and forked by the fork server)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pyanamo.runner import (
    SUPERVISOR_LOST_EXIT_CODE,
    TIMEOUT_EXIT_CODE,
    ForkServer,
    LocalFailure,
    SubtaskProcess,
    last_line,
    safe_name,
    summarize_stream,
)


@pytest.fixture(params=["process", "fork-server"])
def server(request):
    """How the supervisor starts: as a process of its own (None), or forked by a fork server."""
    server = ForkServer() if request.param == "fork-server" else None
    yield server
    if server is not None:
        server.close()


@pytest.fixture
def subtask(server):
    """``SubtaskProcess`` with the supervisor started the way under test."""
    def make(script: str, **kwargs) -> SubtaskProcess:
        return SubtaskProcess(script, server=server, **kwargs)
    return make


@pytest.fixture
def run(subtask):
    def run(script: str, tmp_path: Path, **kwargs) -> tuple:
        process = subtask(script, env={**os.environ, "X": "from-env"}, cwd=tmp_path, log_folder=tmp_path / "logs",
                          **kwargs)
        return process, process.run()
    return run


def test_exit_code_streams_env_and_shell_features(tmp_path: Path, run):
    script = "echo out $X | tr a-z A-Z; echo 'err line' >&2; cd . && printf '%s\\n' \"$(echo sub)\"; exit 3"
    _, outcome = run(script, tmp_path)
    assert outcome.exit_code == 3 and not outcome.timed_out and not outcome.interrupted
    assert outcome.stdout.read_text() == "OUT FROM-ENV\nsub\n"
    assert outcome.stderr.read_text() == "err line\n"


def test_cpu_time_counts_the_whole_process_tree(tmp_path: Path, run):
    # Two child processes burn CPU; bash waits for both.
    burn = "python3 -c 'import time; t=time.process_time(); exec(\"while time.process_time()-t<0.3: pass\")'"
    _, outcome = run(f"{burn} & {burn} & wait", tmp_path)
    assert outcome.exit_code == 0
    assert outcome.cpu_time >= 0.5, outcome.cpu_time


# A background job that says it started (its PID in ``started``) before the script goes on, so a
# test of its killing cannot pass because it never ran.
BACKGROUND_JOB = "(echo $BASHPID > started; exec sleep 60) & while [ ! -s started ]; do sleep 0.01; done"


def gone(pid: int, within: float = 10) -> bool:
    """Whether process ``pid`` is dead (gone, or a zombie awaiting its reaper) within ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_timeout_kills_the_whole_process_group(tmp_path: Path, run):
    _, outcome = run(f"{BACKGROUND_JOB}; sleep 60", tmp_path, timeout=3)
    assert outcome.timed_out and outcome.exit_code == TIMEOUT_EXIT_CODE
    assert outcome.wall_time < 30
    started = tmp_path / "started"
    assert started.exists(), "the background job never started: nothing was proven"
    assert gone(int(started.read_text())), "a background child outlived the timeout"


def test_interrupt_from_another_thread_stops_the_group(tmp_path: Path, subtask):
    process = subtask("sleep 30 & sleep 30; wait", env=dict(os.environ), cwd=tmp_path,
                             log_folder=tmp_path / "logs")
    threading.Timer(0.3, process.interrupt, kwargs={"reason": "stop", "grace": 0}).start()
    started = time.monotonic()
    outcome = process.run()
    assert outcome.interrupted and outcome.exit_code is None
    assert time.monotonic() - started < 5


def test_interrupt_before_start_runs_nothing(tmp_path: Path, subtask):
    marker = tmp_path / "ran"
    process = subtask(f"touch {marker}", env=dict(os.environ), cwd=tmp_path,
                             log_folder=tmp_path / "logs")
    process.interrupt("stop")
    assert process.run().interrupted
    assert not marker.exists()


def test_leftover_background_processes_are_killed_after_exit(tmp_path: Path, run):
    _, outcome = run(f"{BACKGROUND_JOB}; exit 0", tmp_path)
    assert outcome.exit_code == 0
    started = tmp_path / "started"
    assert started.exists(), "the background job never started: nothing was proven"
    assert gone(int(started.read_text())), "a background job outlived its sub-task"


def test_summary_of_huge_and_invalid_output(tmp_path: Path, run):
    _, outcome = run("head -c 3000000 /dev/zero | tr '\\0' 'x' | fold -w 100; printf '\\xff\\xfe bad\\n' >&2",
                     tmp_path)
    out = summarize_stream(outcome.stdout, 4096)
    assert out.size == 3_000_000 + 29_999 and out.lines == 30_000  # last line unterminated
    assert out.tail.startswith("…") and len(out.tail.encode()) <= 4096 + 3
    err = summarize_stream(outcome.stderr, 4096)
    assert err.tail == "\ufffd\ufffd bad\n" and err.lines == 1


def test_summary_of_missing_and_unterminated_output(tmp_path: Path):
    assert summarize_stream(tmp_path / "nope", 100).lines == 0
    (tmp_path / "f").write_bytes(b"a\nb")
    assert summarize_stream(tmp_path / "f", 100).lines == 2


def test_last_line_and_safe_names():
    assert last_line("a\nreal error  \n\n") == "real error"
    assert last_line("") is None
    assert safe_name("NA12878") == "NA12878"
    odd = safe_name("../a b/é")
    assert "/" not in odd and " " not in odd and not odd.startswith(".")
    assert safe_name("a/b") != safe_name("a_b")
    assert len(safe_name("x" * 1000)) < 100


def test_a_tail_of_invalid_utf8_stays_within_its_stored_bytes(tmp_path: Path):
    path = tmp_path / "out"
    path.write_bytes(b"\xff" * 10_000)  # each byte decodes to a 3-byte replacement character
    summary = summarize_stream(path, 300)
    assert len(summary.tail.encode("utf-8")) <= 300 and summary.tail.startswith("…")
    assert summary.size == 10_000


def test_processes_that_leave_the_session_do_not_outlive_the_subtask(tmp_path: Path, run):
    pids = tmp_path / "pids"
    _, outcome = run(f"setsid sleep 30 & echo $! > {pids}; nohup sleep 30 >/dev/null 2>&1 & echo $! >> {pids}",
                     tmp_path)
    assert outcome.exit_code == 0
    for pid in map(int, pids.read_text().split()):  # killed and reaped by the supervisor
        assert not Path(f"/proc/{pid}").exists(), pid


def test_a_signal_is_reported_as_128_plus_its_number_with_its_name(tmp_path: Path, run):
    _, outcome = run("kill -9 $$", tmp_path)
    assert outcome.exit_code == 137 and outcome.signal == 9
    assert outcome.signal_reason() == "killed (SIGKILL: out of memory?)"


def test_peak_memory_of_the_subtask_tree_is_measured(tmp_path: Path, run):
    _, outcome = run("python3 -c 'b = bytearray(100_000_000); b[::4096] = b\"x\" * len(b[::4096])'", tmp_path)
    assert outcome.exit_code == 0 and outcome.peak_rss_kb >= 95_000


def test_a_log_folder_that_cannot_be_created_is_a_local_failure(tmp_path: Path, subtask):
    blocker = tmp_path / "logs"
    blocker.write_text("a file, not a folder")
    with pytest.raises(LocalFailure, match="cannot write logs in"):
        subtask("true", env=dict(os.environ), cwd=tmp_path, log_folder=blocker / "x").run()


def test_the_supervisor_kills_the_tree_when_the_lease_deadline_passes_unextended(tmp_path: Path, run):
    """Nothing calls ``interrupt`` (the worker might be paused): the supervisor's own clock does it."""
    _, outcome = run("sleep 60 & sleep 60; wait", tmp_path, deadline=0.3)
    assert outcome.interrupted and outcome.exit_code is None
    assert outcome.wall_time < 30


def test_an_extended_deadline_lets_the_subtask_finish(tmp_path: Path, subtask):
    """The script outlives its first deadline (5 s) only if that was extended: it waits for a file
    the test writes after ``extend``, then runs 6 s more. Extending from another thread, as the
    lease renewer does, keeps it alive to its end."""
    go = tmp_path / "go"
    process = subtask(f"while [ ! -e {go} ]; do sleep 0.05; done; sleep 6", env=dict(os.environ),
                             cwd=tmp_path, log_folder=tmp_path / "logs", deadline=5)

    def extend_then_go() -> None:
        while process._pid is None:
            time.sleep(0.01)
        process.extend(120)
        go.touch()

    threading.Thread(target=extend_then_go, daemon=True).start()
    outcome = process.run()
    assert outcome.exit_code == 0 and not outcome.interrupted


def test_logs_are_the_operators_alone(tmp_path: Path, run):
    _, outcome = run("echo secret output", tmp_path)
    assert (tmp_path / "logs").stat().st_mode & 0o777 == 0o700
    assert outcome.stdout.stat().st_mode & 0o777 == 0o600 and outcome.stderr.stat().st_mode & 0o777 == 0o600


def test_a_fork_server_killed_mid_run_kills_the_subtask_which_is_recorded_as_such_and_the_next_starts_afresh(
        tmp_path: Path):
    """The supervisor's parent-death signal fires when the fork server dies: it kills the sub-task
    and says so, and the run is recorded as exit 125 with that reason (an attempt, as when the
    supervisor itself is killed), never as the sub-task's own SIGKILL. The next sub-task gets a
    new fork server."""
    server = ForkServer()
    started = tmp_path / "started"
    process = SubtaskProcess(f"{BACKGROUND_JOB}; sleep 60", env=dict(os.environ), cwd=tmp_path,
                             log_folder=tmp_path / "logs", server=server)

    def kill_the_server_once_started() -> None:
        while not (started.exists() and started.read_text().strip()):
            time.sleep(0.01)
        assert server._process is not None
        server._process.kill()

    threading.Thread(target=kill_the_server_once_started, daemon=True).start()
    try:
        outcome = process.run()
        assert outcome.exit_code == SUPERVISOR_LOST_EXIT_CODE and outcome.fork_server_lost
        assert "fork server" in (outcome.signal_reason() or "")
        assert gone(int(started.read_text())), "the sub-task outlived its fork server"
        again = SubtaskProcess("exit 4", env=dict(os.environ), cwd=tmp_path, log_folder=tmp_path / "again",
                               server=server)
        assert again.run().exit_code == 4
    finally:
        server.close()


def test_a_folder_that_is_gone_is_a_local_failure_with_the_fork_server_too(tmp_path: Path, subtask):
    with pytest.raises(LocalFailure, match="cannot start a sub-task"):
        subtask("true", env=dict(os.environ), cwd=tmp_path / "gone", log_folder=tmp_path / "logs").run()


def test_a_subtask_gets_default_signal_handling_so_a_closed_pipe_ends_its_writer_quietly(tmp_path: Path, run):
    """Python ignores SIGPIPE (and SIGXFSZ) at start-up, and an exec keeps a signal ignored: the
    supervisor must undo it, or `yes | head` prints "Broken pipe" and exits 1 instead of 141."""
    _, outcome = run("yes | head -1 > /dev/null; echo ${PIPESTATUS[0]}; grep SigIgn /proc/self/status", tmp_path)
    status, ignored = outcome.stdout.read_text().split("\n", 1)
    assert status == "141" and outcome.stderr.read_text() == ""
    mask = int(ignored.split()[1], 16)
    assert not mask & (1 << (signal.SIGPIPE - 1)) and not mask & (1 << (signal.SIGXFSZ - 1)), ignored
