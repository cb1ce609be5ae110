"""Real `pyanamo worker` processes against one table on moto's server."""

from __future__ import annotations

import json
import re
import socket
import time
from collections import defaultdict
from pathlib import Path

from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState, SubtaskStatus

from helpers import cli, iso_to_epoch, kill_tree, max_overlap, wait_for, write_task_file

LEASE = "6"  # renewals every 2 s; a shorter lease can run out on 2 cores shared with other work


def import_rows(aws_env, table: str, tmp_path: Path, rows: list[str]) -> None:
    proc = cli("import", table, str(write_task_file(tmp_path / "tasks.txt", rows)), env=aws_env)
    assert proc.returncode == 0, proc.stderr


def test_three_workers_run_every_subtask_exactly_once(aws_env, client, table, tmp_path, workers, recorder):
    rows = [f"item{n:02d}|sample{n:02d}|{recorder.command(0.05)} chr{c}" for n in range(30) for c in (1, 2, 3)]
    import_rows(aws_env, table, tmp_path, rows)
    for _ in range(3):
        workers.start(table, "--lease", "10")
    assert workers.wait_all(timeout=180) == [0, 0, 0]

    runs = recorder.runs()
    starts = recorder.starts()
    assert len(starts) == 90 and set(starts.values()) == {1}, "a sub-task ran twice or never"
    assert all(r.end is not None for r in runs)
    by_item: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        by_item[run.item].add(run.worker)
    assert all(len(w) == 1 for w in by_item.values()), "the loser of a claim ran something"

    queue = TaskQueue(client, table)
    last_end = {item: max(r.end for r in runs if r.item == item) for item in by_item}
    for n in range(30):
        item = queue.get(f"item{n:02d}")
        assert item.state is ItemState.DONE and item.instance_id == socket.gethostname()
        assert [s.status for s in item.subtasks] == [SubtaskStatus.DONE] * 3
        assert all("CPU_Time" in item.log_summary[s.key] for s in item.subtasks)
        assert iso_to_epoch(item.done_date) >= last_end[item.item_id] - 0.001
    assert not queue.any_in_state(ItemState.TODO) and not queue.any_in_state(ItemState.LOCKED)


def test_killed_worker_item_is_finished_by_another_without_rerunning_done_subtasks(
        aws_env, client, table, tmp_path, workers, recorder):
    rows = [f"bundle|S|{recorder.command(0.7)} part{n}" for n in range(4)]
    import_rows(aws_env, table, tmp_path, rows)
    first = workers.start(table, "--lease", LEASE, name="first")
    queue = TaskQueue(client, table)
    wait_for(lambda: queue.get("bundle").subtasks[1].status is SubtaskStatus.DONE, message="Task_1 done")
    kill_tree(first.pid)  # as if the instance died
    first.wait(timeout=10)
    item = queue.get("bundle")
    assert item.state is ItemState.LOCKED
    done_before = {s.key for s in item.subtasks if s.status is SubtaskStatus.DONE}
    assert {"Task_0", "Task_1"} <= done_before

    second = workers.start(table, "--lease", LEASE, name="second")
    assert second.wait(timeout=60) == 0
    item = queue.get("bundle")
    assert item.state is ItemState.DONE
    starts = recorder.starts()
    for key in done_before:
        assert starts[("bundle", key)] == 1, f"{key} was done and ran again"
    assert {w.subtask for w in recorder.runs() if w.worker == "second"} == {
        f"Task_{n}" for n in range(4)} - done_before
    assert item.instance_id == socket.gethostname()


def test_failures_are_retried_then_fail_the_item_while_others_go_on(
        aws_env, client, table, tmp_path, workers, recorder):
    flaky = tmp_path / "flaky"
    rows = [
        f"bad|S|{recorder.command(0, 3)}",
        f"flaky|S|test -e {flaky} || {{ touch {flaky}; echo 'first try fails' >&2; exit 9; }}",
        f"good|S|{recorder.command(0)}",
        f"mixed|S|{recorder.command(0)} a",
        "mixed|S|echo 'disk full' >&2; exit 4",
        f"mixed|S|{recorder.command(0)} c",
    ]
    import_rows(aws_env, table, tmp_path, rows)
    worker = workers.start(table, "--lease", LEASE, "--max-attempts", "3", "--retry-delay", "0.1")
    assert worker.wait(timeout=60) == 3  # drained, with failed items
    queue = TaskQueue(client, table)

    bad = queue.get("bad")
    assert bad.state is ItemState.FAILED and bad.done_date is None
    assert (bad.subtasks[0].status, bad.subtasks[0].attempts, bad.subtasks[0].exit_code) == (
        SubtaskStatus.FAILED, 3, 3)
    assert recorder.starts()[("bad", "Task_0")] == 3

    flaky_item = queue.get("flaky")
    assert flaky_item.state is ItemState.DONE and flaky_item.subtasks[0].attempts == 2

    assert queue.get("good").state is ItemState.DONE
    mixed = queue.get("mixed")
    assert mixed.state is ItemState.FAILED
    assert [s.status for s in mixed.subtasks] == [SubtaskStatus.DONE, SubtaskStatus.FAILED, SubtaskStatus.DONE]
    assert mixed.last_error == "Task_1: disk full"
    assert mixed.logs["Task_1"]["stderr"] == "disk full\n"

    # Requeue the failures: only the failed sub-tasks run again.
    proc = cli("reset", table, "--state", "failed", "--subtasks", env=aws_env)
    assert "reset 2 items" in proc.stdout
    again = workers.start(table, "--lease", LEASE, "--max-attempts", "1")
    assert again.wait(timeout=60) == 3  # "bad" fails again
    assert recorder.starts()[("mixed", "Task_0")] == 1
    assert queue.get("mixed").subtasks[1].attempts == 1


def test_wall_time_stops_claiming(aws_env, client, table, tmp_path, workers, recorder):
    import_rows(aws_env, table, tmp_path, [f"i{n}|S|{recorder.command(0.6)}" for n in range(8)])
    worker = workers.start(table, "--lease", LEASE, "--wall-time", "1")
    assert worker.wait(timeout=30) == 0
    queue = TaskQueue(client, table)
    states = [queue.get(f"i{n}").state for n in range(8)]
    assert 1 <= states.count(ItemState.DONE) <= 3
    assert states.count(ItemState.TODO) == 8 - states.count(ItemState.DONE)


def test_nests_and_items_run_concurrently_up_to_their_limits(aws_env, client, table, tmp_path, workers, recorder):
    rows = [f"n{i}|S|{recorder.command(0.8)} {k}" for i in range(2) for k in range(6)]
    import_rows(aws_env, table, tmp_path, rows)
    worker = workers.start(table, "--lease", "10", "--nests", "3", "--items", "2")
    assert worker.wait(timeout=60) == 0
    runs = recorder.runs()
    assert len(runs) == 12 and all(r.end for r in runs)
    for item in ("n0", "n1"):
        assert max_overlap([r for r in runs if r.item == item]) == 3
    assert max_overlap(runs) == 6
    queue = TaskQueue(client, table)
    assert all(queue.get(i).state is ItemState.DONE for i in ("n0", "n1"))


def test_idle_worker_lingers_behind_live_items_then_exits(aws_env, client, table, tmp_path, workers, recorder):
    import_rows(aws_env, table, tmp_path, [f"held|S|{recorder.command(0)}"])
    other = TaskQueue(client, table, owner="i-other", lease_seconds=600)
    assert other.claim() is not None
    started = time.monotonic()
    worker = workers.start(table, "--lease", LEASE, "--linger", "1.5")
    assert worker.wait(timeout=30) == 0
    assert 1.5 <= time.monotonic() - started < 15
    assert recorder.starts() == {}
    assert b'"reason": "linger_expired"' in worker.log_path.read_bytes()


def test_drained_table_exits_at_once(aws_env, table, workers):
    started = time.monotonic()
    assert workers.start(table, "--lease", "600").wait(timeout=30) == 0
    assert time.monotonic() - started < 10


def test_full_logs_go_to_the_log_bucket(aws_env, client, table, tmp_path, workers):
    from helpers import s3_client

    s3 = s3_client(aws_env)
    s3.create_bucket(Bucket="run-logs")
    import_rows(aws_env, table, tmp_path, ["x|S|seq 1 5000; echo warn >&2"])
    worker = workers.start(table, "--lease", LEASE, "--log-bucket", "run-logs/pyanamo")
    assert worker.wait(timeout=60) == 0
    item = TaskQueue(client, table).get("x")
    location = item.log_summary["Task_0"]["Log_Location"]
    assert re.fullmatch(r"s3://run-logs/pyanamo/.+/Task_0/attempt-1-[0-9a-f]{12}/", location), location
    prefix = location.removeprefix("s3://run-logs/")
    body = s3.get_object(Bucket="run-logs", Key=prefix + "stdout")["Body"].read().decode()
    assert body.splitlines() == [str(n) for n in range(1, 5001)]
    assert s3.get_object(Bucket="run-logs", Key=prefix + "stderr")["Body"].read() == b"warn\n"
    assert item.log_summary["Task_0"]["Log_Length"] == 5001


def test_timeout_kills_the_subtask_and_is_recorded(aws_env, client, table, tmp_path, workers, recorder):
    import_rows(aws_env, table, tmp_path, [f"slow|S|{recorder.command(30)}"])
    worker = workers.start(table, "--lease", LEASE, "--timeout", "1", "--max-attempts", "1")
    assert worker.wait(timeout=30) == 3  # its only item failed
    item = TaskQueue(client, table).get("slow")
    assert item.state is ItemState.FAILED and item.subtasks[0].exit_code == 124
    assert item.log_summary["Task_0"]["Timed_Out"] is True
    assert item.last_error == "Task_0: timed out after 1s"
    assert [r.end for r in recorder.runs()] == [None]


def test_cancelling_a_running_item_stops_its_subtask_and_no_one_runs_it(
        aws_env, client, table, tmp_path, workers, recorder):
    import_rows(aws_env, table, tmp_path, [f"long|S|{recorder.command(60)}", f"never|S|{recorder.command(0)}"])
    proc = cli("cancel", table, "never", env=aws_env)
    assert proc.returncode == 0 and "cancelled never: todo -> cancelled" in proc.stdout
    worker = workers.start(table, "--lease", LEASE)
    wait_for(lambda: recorder.starts() == {("long", "Task_0"): 1}, message="the long sub-task started")
    cancelled_at = time.monotonic()
    proc = cli("cancel", table, "long", env=aws_env)
    assert "cancelled long: locked -> cancelled; its worker on" in proc.stdout
    assert worker.wait(timeout=30) == 0  # its lease was taken: nothing failed, nothing left to claim
    assert time.monotonic() - cancelled_at < float(LEASE) + 10  # stopped at a renewal, not after 60 s
    assert [r.end for r in recorder.runs()] == [None]  # killed, not finished
    queue = TaskQueue(client, table)
    assert queue.get("long").state is ItemState.CANCELLED and queue.get("never").state is ItemState.CANCELLED
    status = cli("status", table, "--json", env=aws_env)
    assert status.returncode == 0 and '"cancelled": 2' in status.stdout


def test_local_workers_on_one_host_are_told_apart(aws_env, client, table, tmp_path, workers):
    # each sub-task runs until the test has listed both (a fixed sleep could end before `ps` ran)
    release = tmp_path / "release"
    hold = f"for _ in $(seq 1200); do [ -e {release} ] && exit 0; sleep 0.1; done; exit 1"
    import_rows(aws_env, table, tmp_path, [f"i{n}|S|touch {tmp_path}/started.i{n}; {hold}" for n in range(2)])
    for _ in range(2):
        workers.start(table, "--lease", LEASE)
    queue = TaskQueue(client, table)
    wait_for(lambda: len(list(tmp_path.glob("started.*"))) == 2, timeout=60, message="both items started")
    listing = cli("ps", table, "--json", env=aws_env)
    release.touch()
    rows = json.loads(listing.stdout)
    assert len(rows) == 2 and len({r["worker"] for r in rows}) == 2
    assert all(r["instance"] == socket.gethostname() for r in rows)
    assert {r["worker"] for r in rows} == {f"{socket.gethostname()}:{w.pid}" for w in workers.processes}
    assert workers.wait_all(timeout=60) == [0, 0]
    assert queue.get("i0").worker_id != queue.get("i1").worker_id
