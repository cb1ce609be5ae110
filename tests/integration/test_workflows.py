"""Workflows on both engines: items that wait for other items (fan-in, fan-out, chains),
release without a driver, failure that propagates, and items whose sub-tasks stop at the first
failure. Workers run in this process through ``InstantLauncher`` (no sub-task processes: the
queue's logic is the subject); ``tests/e2e/test_workflow_run.py`` runs real worker processes."""

from __future__ import annotations

import json
from pathlib import Path

from pyanamo.dependencies import reconcile
from pyanamo.gateway import TableGateway
from pyanamo.queue import TaskQueue
from pyanamo.schema import Attr, ItemState, SubtaskStatus
from pyanamo.worker import EXIT_DRAINED, EXIT_FAILED_ITEMS, Worker, WorkerConfig

from helpers import InstantLauncher, cli, write_task_file


def run_workers(client, table: str, tmp_path: Path, *, slots: int = 4, launcher=None,
                exit_code: int = EXIT_DRAINED) -> InstantLauncher:
    """One worker with ``slots`` slots until the queue is drained (its exit status checked: 3 when
    an item it ran failed); what it launched, in order."""
    launcher = launcher or InstantLauncher()
    queue = TaskQueue(client, table, owner="w", lease_seconds=30)
    config = WorkerConfig(table=table, items=slots, lease=30.0, max_attempts=1, retry_delay=0.01,
                          workdir=tmp_path, log_dir=tmp_path / "logs", outputs=str(tmp_path / "outputs"))
    assert Worker(queue, config, launcher=launcher).run() == exit_code
    return launcher


def import_file(aws_env, table: str, path: Path, *args: str):
    proc = cli("import", table, str(path), *args, env=aws_env)
    assert proc.returncode == 0, proc.stderr
    return proc


def states(client, table: str, *item_ids: str) -> dict[str, ItemState]:
    gateway = TableGateway(client, table)
    return {i: gateway.get(i).state for i in item_ids}


# On moto, which answers one request at a time, 200 samples take two minutes of a test process;
# the same requests are proven with 50 there (--full-matrix: 200 on every engine).
FAN_IN = {"dynalite": 200, "moto": 50}


def test_fan_in_of_many_samples_into_one_joint_step(aws_env, client, table, tmp_path: Path, engine: str,
                                                    request):
    count = 200 if request.config.getoption("--full-matrix") else FAN_IN[engine]
    samples = [f"S{n:03d}|call|true" for n in range(count)]
    import_file(aws_env, table, write_task_file(tmp_path / "call.txt", samples))
    proc = import_file(aws_env, table, write_task_file(tmp_path / "joint.txt", ["joint|joint|true"]),
                       "--after", "task:call")
    assert "1 items wait for other items" in proc.stdout
    gateway = TableGateway(client, table)
    joint = gateway.get("joint")
    assert joint.state is ItemState.WAITING and len(joint.waiting_on) == count
    assert len(gateway.get("S000").dependents) == 1
    launched = run_workers(client, table, tmp_path).launched
    assert launched[-1] == ("joint", "Task_0") and len(launched) == count + 1  # after every sample
    last = f"S{count - 1:03d}"
    assert states(client, table, "joint", "S000", last) == dict.fromkeys(("joint", "S000", last), ItemState.DONE)


def test_fan_out_one_preparation_into_50_and_a_chain_of_5(aws_env, client, table, tmp_path: Path):
    rows = ["prep|prep|true|"] + [f"chr{n}|call|true|prep" for n in range(1, 51)]
    rows += ["c1|chain|true|", *(f"c{n}|chain|true|c{n - 1}" for n in range(2, 6))]
    import_file(aws_env, table, write_task_file(tmp_path / "t.txt", rows,
                                                header="itemID|taskID|TaskScript|After"))
    assert states(client, table, "prep", "chr7", "c1", "c5") == {
        "prep": ItemState.TODO, "chr7": ItemState.WAITING, "c1": ItemState.TODO, "c5": ItemState.WAITING}
    launched = [i for i, _ in run_workers(client, table, tmp_path).launched]
    assert launched.index("prep") < min(launched.index(f"chr{n}") for n in range(1, 51))
    chain = [i for i in launched if i.startswith("c") and not i.startswith("chr")]
    assert chain == ["c1", "c2", "c3", "c4", "c5"]
    assert all(s is ItemState.DONE for s in states(client, table, *launched).values())


def test_a_release_lost_with_its_worker_is_made_by_the_next_idle_worker(aws_env, client, table, tmp_path: Path):
    """The table as a worker SIGKILLed between its ``done`` write and the release leaves it: the
    upstream done, its dependent still waiting on it. The next worker's drain check settles it."""
    import_file(aws_env, table, write_task_file(tmp_path / "t.txt", ["up|A|true|", "down|B|true|up"],
                                                header="itemID|taskID|TaskScript|After"))
    dead = TaskQueue(client, table, owner="dead", lease_seconds=30)
    _, lease = dead.claim()
    assert dead.finish(lease, ItemState.DONE) == frozenset({"down"})  # ... and it died here
    assert states(client, table, "down")["down"] is ItemState.WAITING
    launched = run_workers(client, table, tmp_path).launched
    assert launched == [("down", "Task_0")]
    assert reconcile(TableGateway(client, table)).waiting == 0


def test_a_failed_upstream_blocks_its_dependents_and_a_reset_brings_them_back(aws_env, client, table,
                                                                               tmp_path: Path):
    import_file(aws_env, table, write_task_file(tmp_path / "t.txt", [
        "align|S1|exit 3|", "call|S1|true|align", "merge|all|true|call", "other|S2|true|"],
        header="itemID|taskID|TaskScript|After"))
    run_workers(client, table, tmp_path, exit_code=EXIT_FAILED_ITEMS)
    assert states(client, table, "align", "call", "merge", "other") == {
        "align": ItemState.FAILED, "call": ItemState.UPSTREAM_FAILED, "merge": ItemState.UPSTREAM_FAILED,
        "other": ItemState.DONE}
    gateway = TableGateway(client, table)
    assert gateway.get("call").blocked_by == "align" and gateway.get("merge").blocked_by == "call"
    status = cli("status", table, "--json", env=aws_env)
    counts = json.loads(status.stdout)["items"]
    assert counts["upstream_failed"] == 2 and counts["failed"] == 1 and status.returncode == 3
    report = json.loads(cli("report", table, "--json", env=aws_env).stdout)
    assert [(b["item"], b["because"]) for b in report["blocked"]] == [("call", "align"), ("merge", "call")]
    logs = cli("logs", table, "merge", env=aws_env).stdout
    assert logs.startswith("item merge (task all): upstream_failed, blocked by call (it ended failed or cancelled)")
    reset = cli("reset", table, "align", "--subtasks", env=aws_env)
    assert reset.returncode == 0 and "2 items that wait for it are waiting again" in reset.stdout, reset.stdout
    assert states(client, table, "call", "merge") == {"call": ItemState.WAITING, "merge": ItemState.WAITING}
    again = run_workers(client, table, tmp_path, exit_code=EXIT_FAILED_ITEMS).launched
    assert again == [("align", "Task_0")]  # `exit 3` fails again, and blocks them again
    assert states(client, table, "call")["call"] is ItemState.UPSTREAM_FAILED
    replaced = import_file(aws_env, table, write_task_file(tmp_path / "fix.txt", ["align|S1|true"]), "--replace")
    assert "2 items that wait for replaced items are waiting again" in replaced.stdout, replaced.stdout
    assert [i for i, _ in run_workers(client, table, tmp_path).launched] == ["align", "call", "merge"]
    assert set(states(client, table, "align", "call", "merge").values()) == {ItemState.DONE}


def test_a_cycle_or_an_unknown_reference_is_refused_with_nothing_written(aws_env, client, table, tmp_path: Path):
    header = "itemID|taskID|TaskScript|After"
    cycle = write_task_file(tmp_path / "cycle.txt", ["a|t|true|c", "b|t|true|a", "c|t|true|b"], header=header)
    proc = cli("import", table, str(cycle), env=aws_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{cycle}:2: items wait for each other in a cycle: a -> c -> b -> a" in proc.stderr, proc.stderr
    unknown = write_task_file(tmp_path / "unknown.txt", ["a|t|true|", "b|t|true|ghost"], header=header)
    proc = cli("import", table, str(unknown), env=aws_env)
    assert proc.returncode == 2
    assert f"{unknown}:3: item 'b' waits for 'ghost', which matches no item in the file or the table" in proc.stderr
    assert "nothing was imported" in proc.stderr
    assert client.scan(TableName=table, Select="COUNT")["Count"] == 0  # test-side check only
    proc = import_file(aws_env, table, unknown, "--allow-missing")
    assert "1 items wait for items not in the table yet: ghost" in proc.stdout
    run_workers(client, table, tmp_path)  # exits: b can never run until ghost is imported
    assert states(client, table, "a", "b") == {"a": ItemState.DONE, "b": ItemState.WAITING}
    watch = cli("status", table, "--watch", "1", "--json", env=aws_env)  # returns: nothing can move
    report = json.loads(watch.stdout.splitlines()[-1])
    assert watch.returncode == 0 and report["stuck"] == ["b"] and report["stuck_on"] == ["ghost"]
    assert "1 waiting items can never run as things stand" in cli("status", table, env=aws_env).stdout
    import_file(aws_env, table, write_task_file(tmp_path / "ghost.txt", ["ghost|t|true"]))
    assert [i for i, _ in run_workers(client, table, tmp_path).launched] == ["ghost", "b"]


def test_on_failure_stop_skips_the_rest_of_the_item(aws_env, client, table, tmp_path: Path):
    rows = ["S1|S1|echo align", "S1|S1|exit 4", "S1|S1|echo call", "S2|S2|exit 4", "S2|S2|echo chr2"]
    import_file(aws_env, table, write_task_file(tmp_path / "steps.txt", rows[:3]), "--on-failure", "stop")
    import_file(aws_env, table, write_task_file(tmp_path / "chroms.txt", rows[3:]))
    launched = run_workers(client, table, tmp_path, slots=1, exit_code=EXIT_FAILED_ITEMS).launched
    assert ("S1", "Task_2") not in launched and ("S2", "Task_1") in launched  # stop vs continue (default)
    gateway = TableGateway(client, table)
    stopped = gateway.get("S1")
    assert stopped.state is ItemState.FAILED and stopped.on_failure == "stop"
    assert [s.status for s in stopped.subtasks] == [SubtaskStatus.DONE, SubtaskStatus.FAILED, SubtaskStatus.SKIPPED]
    logs = cli("logs", table, "S1", env=aws_env)
    assert "== Task_2 [skipped, attempts 0]" in logs.stdout, logs.stdout
    report = cli("report", table, "--trace", str(tmp_path / "trace.tsv"), "--json", env=aws_env)
    assert json.loads(report.stdout)["subtasks"]["skipped"] == 1
    rows = [line.split("\t") for line in (tmp_path / "trace.tsv").read_text().splitlines()]
    assert [(r[0], r[2], r[5]) for r in rows if r[5] == "skipped"] == [("S1", "Task_2", "skipped")]
    reset = cli("reset", table, "S1", "--subtasks", env=aws_env)
    assert "(sub-tasks Task_1, Task_2)" in reset.stdout, reset.stdout
    row = client.get_item(TableName=table, Key={Attr.ITEM_ID: {"S": "S1"}})["Item"]
    assert row[Attr.ON_FAILURE]["S"] == "stop"
