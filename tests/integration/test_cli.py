"""The `pyanamo` commands as a user runs them, against a real endpoint. Their output does not
depend on the engine (the queue's requests are proven on both in the contract and queue tests), so
they run on the first engine only, in this process (``helpers.cli``); the ones that watch and
refresh run as real subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyanamo.gateway import SubtaskResult
from pyanamo.local import free_port
from pyanamo.queue import Candidate, TaskQueue
from pyanamo.runs import RunRecord
from pyanamo.schema import ItemState, SubtaskStatus

from helpers import cli, cli_after_first_line, cli_in_process, write_task_file

pytestmark = pytest.mark.one_engine


def count_items(client, table: str) -> int:
    # Test-side check only (the product never scans).
    return client.scan(TableName=table, Select="COUNT")["Count"]


def assert_one_line_error(proc, code: int, *fragments: str) -> None:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_create_table_is_idempotent(aws_env, client):
    first = cli("create-table", "fresh", env=aws_env)
    second = cli("create-table", "fresh", env=aws_env)
    assert first.returncode == second.returncode == 0
    assert "table fresh is active" in second.stdout
    assert client.describe_table(TableName="fresh")["Table"]["TableStatus"] == "ACTIVE"


def test_import_bundles_and_reports(aws_env, client, table, tmp_path: Path):
    path = write_task_file(tmp_path / "t.txt", [
        "s1|s1|call.sh s1|chr1,chr2", "s2|s2|call.sh s2|chr1", "s1-extra|s1|echo extra|"],
        header="itemID|taskID|TaskScript|TaskArgs")
    proc = cli("import", table, str(path), "--nested-delimiter", ",", env=aws_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"imported 3 items (4 sub-tasks) into {table} at endpoint "
                                   f"{aws_env['AWS_ENDPOINT_URL_DYNAMODB']}")
    queue = TaskQueue(client, table)
    assert [s.script for s in queue.get("s1").subtasks] == ["call.sh s1 chr1", "call.sh s1 chr2"]


def test_import_tab_delimited(aws_env, client, table, tmp_path: Path):
    path = tmp_path / "t.tsv"
    path.write_text("itemID\ttaskID\tTaskScript\na\tt\techo a | wc -c\n")
    proc = cli("import", table, str(path), "--delimiter", "tab", env=aws_env)
    assert proc.returncode == 0, proc.stderr
    assert TaskQueue(client, table).get("a").subtasks[0].script == "echo a | wc -c"


def test_malformed_file_writes_nothing(aws_env, client, table, tmp_path: Path):
    path = write_task_file(tmp_path / "bad.txt", ["a|t|echo a", "b|t|", "c|t|echo c"])
    proc = cli("import", table, str(path), env=aws_env)
    assert_one_line_error(proc, 2, f"{path}:3: empty TaskScript for item 'b'", "nothing was imported")
    assert count_items(client, table) == 0


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00binary", b"itemID|taskID|TaskScript\n"])
def test_empty_binary_and_header_only_files_write_nothing(aws_env, client, table, tmp_path: Path, content):
    path = tmp_path / "f.txt"
    path.write_bytes(content)
    proc = cli("import", table, str(path), env=aws_env)
    assert_one_line_error(proc, 2, f"{path}")
    assert count_items(client, table) == 0


def test_existing_items_are_left_untouched_unless_replace(aws_env, client, table, tmp_path: Path):
    cli("import", table, str(write_task_file(tmp_path / "a.txt", ["a|t|echo old"])), env=aws_env)
    path = write_task_file(tmp_path / "b.txt", ["a|t|echo new", "b|t|echo b"])
    proc = cli("import", table, str(path), env=aws_env)
    assert proc.returncode == 0
    assert "left 1 existing items untouched (use --replace to overwrite): a" in proc.stdout
    assert "imported 1 items (1 sub-tasks)" in proc.stdout
    queue = TaskQueue(client, table)
    assert queue.get("a").subtasks[0].script == "echo old"
    proc = cli("import", table, str(path), "--replace", env=aws_env)
    assert "replaced 2 existing items" in proc.stdout and "imported 2 items" in proc.stdout
    assert queue.get("a").subtasks[0].script == "echo new"


def test_import_reads_standard_input(aws_env, client, table):
    proc = cli_in_process("import", table, "-", stdin=b"itemID|taskID|TaskScript\na|A|echo a | wc -c\n",
                          env=aws_env)
    assert proc.returncode == 0 and "imported 1 items" in proc.stdout, proc.stderr
    assert TaskQueue(client, table).get("a").subtasks[0].script == "echo a | wc -c"


def test_cli_habits_version_region_and_typos(aws_env, table, monkeypatch):
    version = cli("--version", env=aws_env)
    assert version.returncode == 0 and version.stdout.startswith("pyanamo ")
    # 127.0.0.2 is not one of the local endpoint's names, so a region is needed; nothing listens.
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    only_aws_region = {k: v for k, v in aws_env.items() if k != "AWS_DEFAULT_REGION"}
    status = cli("status", table, "--endpoint-url", "http://127.0.0.2:9",
                 env={**only_aws_region, "AWS_MAX_ATTEMPTS": "1"})
    assert_one_line_error(status, 1, "cannot reach the DynamoDB endpoint http://127.0.0.2:9")
    typo = cli("worker", table, "--itmes", "2", env=aws_env)
    assert_one_line_error(typo, 2, "pyanamo worker: error: unrecognized arguments: --itmes 2 "
                                   "(did you mean --items?)")
    assert "usage: pyanamo worker" in typo.stderr


def test_user_errors_are_one_line(aws_env, tmp_path: Path):
    assert_one_line_error(cli("status", "missing", env=aws_env), 1,
                          "table 'missing' does not exist (create it with: pyanamo create-table missing)")
    assert_one_line_error(cli("import", "missing", str(tmp_path / "nope.txt"), env=aws_env), 2,
                          "nope.txt: no such file")
    port = free_port()  # nothing listens there
    proc = cli("status", "x", "--endpoint-url", f"http://127.0.0.1:{port}",
               env={**aws_env, "AWS_MAX_ATTEMPTS": "1"})
    assert_one_line_error(proc, 1, f"cannot reach the DynamoDB endpoint http://127.0.0.1:{port}")
    assert_one_line_error(cli("worker", "t", "--items", "0", env=aws_env), 2, "must be greater than 0")
    assert_one_line_error(cli("reset", "missing", env=aws_env), 1, "does not exist")


# -- status, reset and logs on a table in a known state -----------------------------------

@pytest.fixture
def known_state(aws_env, client, table, tmp_path: Path) -> TaskQueue:
    """todo: t1; done: d1 (2 sub-tasks); failed: f1 (Task_1 failed); locked live: l1 by
    i-live; locked expired: x1 by i-dead (Task_0 done, Task_1 running)."""
    rows = ["t1|A|echo t1", "d1|A|echo d1a", "d1|A|echo d1b", "f1|B|echo ok", "f1|B|exit 7",
            "l1|B|sleep 1", "x1|C|echo x0", "x1|C|echo x1"]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0

    def claim(item_id: str, owner: str, lease: float):
        q = TaskQueue(client, table, owner=owner, lease_seconds=lease)
        got = q._try_claim(Candidate(item_id))
        assert got is not None
        return q, got[1]

    def ok(key: str, text: str = "") -> SubtaskResult:
        return SubtaskResult(key, SubtaskStatus.DONE, 1, 0, {"stdout": text, "stderr": ""},
                             RunRecord(exit_code=0, cpu_time=0.5, wall_time=1.0, log_length=1,
                                       log_location="/logs/x"))

    q, lease = claim("d1", "i-done", 60)
    q.record(lease, ok("Task_0", "hello d1\n"))
    q.record(lease, ok("Task_1"), final=ItemState.DONE)
    q, lease = claim("f1", "i-done", 60)
    q.record(lease, ok("Task_0"))
    q.record(lease, SubtaskResult("Task_1", SubtaskStatus.FAILED, 2, 7,
                                  {"stdout": "", "stderr": "boom\nsegfault at chr7\n"},
                                  RunRecord(exit_code=7), error_line="Task_1: segfault at chr7"),
             final=ItemState.FAILED)
    claim("l1", "i-live", 600)
    q, lease = claim("x1", "i-dead", 0.5)
    q.record(lease, ok("Task_0"), next_running="Task_1")
    time.sleep(0.6)
    return TaskQueue(client, table)


def test_status_json_on_a_known_table(aws_env, table, known_state):
    proc = cli("status", table, "--json", env=aws_env)
    assert proc.returncode == 3, proc.stderr  # the table holds a failed item
    report = json.loads(proc.stdout)
    assert report["items"] == {"todo": 1, "locked": 2, "done": 1, "failed": 1, "cancelled": 0, "waiting": 0,
                               "upstream_failed": 0}
    assert report["total_items"] == 5
    assert (report["subtasks_done"], report["subtasks_total"]) == (4, 8)
    assert report["instances"] == {"i-live": {"held": 1, "expired": 0}, "i-dead": {"held": 1, "expired": 1}}
    assert report["failed"] == [{"item_id": "f1", "task_id": "B", "error": "Task_1: segfault at chr7"}]


def test_status_table_on_a_known_table(aws_env, table, known_state):
    proc = cli("status", table, env={**aws_env, "COLUMNS": "120"})
    assert proc.returncode == 3, proc.stderr  # the table holds a failed item
    out = proc.stdout
    assert "sub-tasks done: 4/8 (50.0%)" in out
    assert "i-dead" in out and "i-live" in out
    assert "Task_1: segfault at chr7" in out
    assert f"pyanamo reset {table} --state failed --subtasks" in out


def test_logs_prints_tails_and_locations(aws_env, table, known_state):
    proc = cli("logs", table, "d1", env=aws_env)
    assert proc.returncode == 0, proc.stderr
    assert "== Task_0 [done, attempts 1, exit 0, cpu 0.50s, wall 1.00s, 1 lines]" in proc.stdout
    assert "hello d1" in proc.stdout and "full log: /logs/x" in proc.stdout
    proc = cli("logs", table, "f1", "--subtask", "Task_1", env=aws_env)
    assert "segfault at chr7" in proc.stdout and "Task_0" not in proc.stdout
    assert_one_line_error(cli("logs", table, "f1", "--subtask", "Task_9", env=aws_env), 2,
                          "has no sub-task 'Task_9' (it has Task_0, Task_1)")
    assert_one_line_error(cli("logs", table, "nope", env=aws_env), 2, "no item 'nope'")


def test_reset_needs_a_selection(aws_env, table, known_state):
    assert_one_line_error(cli("reset", table, env=aws_env), 2, "say which items to reset")


def test_reset_failed_with_subtasks_requeues_only_the_failed_subtask(aws_env, table, known_state):
    dry = cli("reset", table, "--state", "failed", "--subtasks", "--dry-run", env=aws_env)
    assert "would reset f1: failed -> todo (sub-tasks Task_1)" in dry.stdout
    assert known_state.get("f1").state is ItemState.FAILED
    proc = cli("reset", table, "--state", "failed", "--subtasks", env=aws_env)
    assert proc.returncode == 0 and "reset 1 items" in proc.stdout
    f1 = known_state.get("f1")
    assert f1.state is ItemState.TODO and f1.last_error is None
    assert [(s.status, s.attempts) for s in f1.subtasks] == [(SubtaskStatus.DONE, 1), (SubtaskStatus.TODO, 0)]


def test_reset_never_breaks_a_live_lease_unless_named(aws_env, table, known_state):
    proc = cli("reset", table, "--state", "locked", env=aws_env)
    assert "l1: skipped, lease held by i-live is live" in proc.stdout
    assert "reset x1: locked -> todo (sub-tasks Task_1)" in proc.stdout
    assert known_state.get("l1").state is ItemState.LOCKED
    x1 = known_state.get("x1")
    assert x1.state is ItemState.TODO and [s.status for s in x1.subtasks] == [SubtaskStatus.DONE, SubtaskStatus.TODO]
    before = known_state.get("l1")
    proc = cli("reset", table, "l1", env=aws_env)
    assert "revoked l1 from i-live: its worker stops it; claimable again when the lease runs out at" in proc.stdout
    after = known_state.get("l1")
    # Still locked until the old lease runs out, but the holder's token no longer works.
    assert after.state is ItemState.LOCKED and after.lease_expiry == before.lease_expiry
    assert after.lease_token != before.lease_token and after.lease_token.startswith("revoked-")


def test_replace_never_overwrites_an_item_a_worker_holds(aws_env, table, known_state, tmp_path: Path):
    path = write_task_file(tmp_path / "new.txt", ["l1|B|echo new", "t1|A|echo new t1"])
    proc = cli("import", table, str(path), "--replace", env=aws_env)
    assert proc.returncode == 0, proc.stderr
    assert ("left 1 items untouched that workers are running now (reset them by ID, then import again): l1"
            in proc.stdout)
    assert "replaced 1 existing items" in proc.stdout
    assert known_state.get("l1").subtasks[0].script == "sleep 1"
    assert known_state.get("t1").subtasks[0].script == "echo new t1"
    # The expired holder's item (x1) may be replaced: its worker is gone.
    path = write_task_file(tmp_path / "x.txt", ["x1|C|echo replaced"])
    assert "replaced 1 existing items" in cli("import", table, str(path), "--replace", env=aws_env).stdout


def test_reset_by_expired_instance_and_task(aws_env, table, known_state):
    assert "reset x1" in cli("reset", table, "--expired", env=aws_env).stdout
    assert "reset 0 items" in cli("reset", table, "--instance", "i-live", env=aws_env).stdout
    proc = cli("reset", table, "--task", "A", env=aws_env)
    assert "d1: skipped, done: every sub-task succeeded, so nothing would run again" in proc.stdout
    assert "t1: already todo" in proc.stdout and "reset 0 items" in proc.stdout
    assert_one_line_error(cli("reset", table, "ghost", env=aws_env), 2)


def test_status_watch_returns_once_the_run_is_finished(aws_env, client, table, tmp_path: Path):
    cli("import", table, str(write_task_file(tmp_path / "t.txt", ["a|t|true"])), env=aws_env)
    queue = TaskQueue(client, table, owner="w", lease_seconds=30)
    item, lease = queue.claim()
    result = SubtaskResult("Task_0", SubtaskStatus.DONE, 1, 0, {"stdout": "", "stderr": ""}, RunRecord(exit_code=0))
    # The item ends only after the watch has printed its first refresh (no timer to outrun).
    proc = cli_after_first_line("status", table, "--watch", "0.3", env=aws_env, timeout=30,
                                then=lambda: queue.record(lease, result, final=ItemState.DONE))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()  # not a terminal: one plain line per refresh
    assert len(lines) >= 2 and "todo 0 locked 1 done 0" in lines[0]
    assert "1/1 items ended, sub-tasks 1/1 done" in lines[-1] and lines[-1].endswith("to finish: done")
    assert "items/min" in lines[-1]


def test_json_watch_prints_one_object_per_refresh(aws_env, client, table, tmp_path: Path):
    cli("import", table, str(write_task_file(tmp_path / "t.txt", ["a|t|true"])), env=aws_env)
    queue = TaskQueue(client, table, owner="w", lease_seconds=30)
    item, lease = queue.claim()
    proc = cli_after_first_line("status", table, "--watch", "0.3", "--json", env=aws_env, timeout=30,
                                then=lambda: queue.finish(lease, ItemState.DONE))
    objects = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and len(objects) >= 2
    assert objects[0]["items"]["locked"] == 1 and objects[-1]["items"]["done"] == 1
    assert objects[-1]["rate_per_min"] > 0 and all("time" in o for o in objects)


def test_ps_lists_running_items_with_worker_subtask_and_elapsed(aws_env, table, known_state):
    proc = cli("ps", table, "--json", env=aws_env)
    assert proc.returncode == 0, proc.stderr
    rows = {r["item_id"]: r for r in json.loads(proc.stdout)}
    assert sorted(rows) == ["l1", "x1"]
    assert rows["l1"]["instance"] == "i-live" and rows["l1"]["subtask"] == "Task_0"
    assert rows["l1"]["script"] == "sleep 1" and rows["l1"]["elapsed_s"] >= 0 and rows["l1"]["lease_left_s"] > 0
    assert rows["x1"]["subtask"] == "Task_1" and rows["x1"]["lease_left_s"] < 0
    text = cli("status", table, "--running", env={**aws_env, "COLUMNS": "200"}).stdout  # piped: plain lines
    assert "\nl1\tB\ti-live\ti-live\tTask_0\t" in text and "\nx1\tC\ti-dead\t" in text


def test_rerun_and_cancel_from_the_command_line(aws_env, table, known_state):
    proc = cli("reset", table, "d1", "--rerun", env=aws_env)
    assert proc.returncode == 0 and "rerun d1: done -> todo, all 2 sub-tasks" in proc.stdout
    assert "rerun 1 items" in proc.stdout
    plan = cli("cancel", table, "--task", "B", "--dry-run", env=aws_env)
    assert plan.returncode == 0 and "would cancel f1: failed -> cancelled" in plan.stdout
    assert "would cancel l1: locked -> cancelled; its worker on i-live stops it" in plan.stdout
    proc = cli("cancel", table, "t1", env=aws_env)
    assert "cancelled t1: todo -> cancelled" in proc.stdout
    status = json.loads(cli("status", table, "--json", env=aws_env).stdout)
    assert status["items"]["cancelled"] == 1 and status["items"]["todo"] == 1  # d1 again
    assert_one_line_error(cli("reset", table, "d1", "--rerun", "--subtasks", env=aws_env), 2, "choose one")


def test_the_table_may_come_from_pyanamo_table(aws_env, table, known_state):
    env = {**aws_env, "PYANAMO_TABLE": table}
    assert json.loads(cli("status", "--json", env=env).stdout)["total_items"] == 5
    assert "item d1 (task A): done" in cli("logs", "d1", env=env).stdout
    assert "rerun d1" in cli("reset", "d1", "--rerun", "--dry-run", env=env).stdout  # an item ID, not a table
    assert "rerun d1" in cli("reset", table, "d1", "--rerun", "--dry-run", env=env).stdout
    assert_one_line_error(cli("status", env=aws_env), 2, "say which table", "PYANAMO_TABLE")


def test_a_first_argument_that_names_another_table_is_that_table(aws_env, table, known_state, tmp_path: Path):
    """`reset hand d1` with $PYANAMO_TABLE=my-run: `hand` is a table when one exists. Before, d1 of
    my-run was reset and `hand: no such item` came after the change."""
    hand = f"{table}-h"
    assert cli("create-table", hand, env=aws_env).returncode == 0
    tasks = write_task_file(tmp_path / "h.txt", ["d1|A|echo other"])
    assert cli("import", hand, str(tasks), env=aws_env).returncode == 0
    env = {**aws_env, "PYANAMO_TABLE": table}
    proc = cli("cancel", hand, "d1", env=env)
    assert proc.returncode == 0 and "cancelled d1: todo -> cancelled" in proc.stdout, proc.stderr
    assert "d1: skipped, already done" not in proc.stdout  # my-run's d1 (done) was not touched
    both = f"{table}-d1"  # a table named like an item of $PYANAMO_TABLE: refused, nothing changed
    assert cli("create-table", both, env=aws_env).returncode == 0
    tasks = write_task_file(tmp_path / "b.txt", [f"{both}|A|echo x"])
    assert cli("import", table, str(tasks), env=aws_env).returncode == 0
    assert_one_line_error(cli("cancel", both, "t1", env=env), 2, "is both a table and an item")
    assert json.loads(cli("status", table, "--json", env=aws_env).stdout)["items"]["cancelled"] == 0


def test_report_on_a_table_where_nothing_ran_and_bad_paths(aws_env, table, tmp_path: Path):
    cli("import", table, str(write_task_file(tmp_path / "t.txt", ["a|t|true"])), env=aws_env)
    proc = cli("report", table, "--json", "--html", str(tmp_path / "r.html"), "--trace", str(tmp_path / "t.tsv"),
               env=aws_env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["items"]["todo"] == 1 and summary["subtask_runs"] == 0 and summary["cost_usd"] is None
    assert "No sub-task has run yet." in (tmp_path / "r.html").read_text()
    assert "No sub-task has run yet: nothing to size." in (tmp_path / "r.html").read_text()
    assert (tmp_path / "t.tsv").read_text().startswith("item\ttask\tsubtask\tlabel\tattempt\tstatus\texit\t")
    assert_one_line_error(cli("report", table, "--html", str(tmp_path / "no" / "r.html"), env=aws_env), 2,
                          "no such folder")
    assert not (tmp_path / "no").exists()


def test_tables_lists_and_drop_table_deletes_only_when_told(aws_env, client, table, tmp_path: Path):
    listed = cli("tables", env=aws_env)
    assert listed.returncode == 0 and table in listed.stdout.splitlines()
    assert_one_line_error(cli("drop-table", table, env=aws_env), 2, "pass --yes")  # no terminal to ask on
    assert table in cli("tables", env=aws_env).stdout.splitlines()
    dropped = cli("drop-table", table, "--yes", env=aws_env)
    assert dropped.returncode == 0 and dropped.stdout.startswith(f"deleted table {table} (endpoint http")
    assert table not in cli("tables", env=aws_env).stdout.splitlines()


def test_import_dry_run_prints_the_commands_as_they_would_run_and_writes_nothing(aws_env, client, table,
                                                                                  tmp_path: Path):
    path = write_task_file(tmp_path / "t.txt", ["s1|s1|call.sh {/.}|in/a.bam,in/b.bam"],
                           header="itemID|taskID|TaskScript|TaskArgs")
    proc = cli("import", table, str(path), "--nested-delimiter", ",", "--dry-run", env=aws_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["s1\tTask_0\tcall.sh a", "s1\tTask_1\tcall.sh b"]
    assert proc.stderr == "would import 1 items (2 sub-tasks); nothing was written\n"
    assert json.loads(cli("status", table, "--json", env=aws_env).stdout)["total_items"] == 0


def test_a_subtask_made_from_an_argument_is_known_by_it(aws_env, client, table, tmp_path: Path):
    """`logs S03 --subtask chr2`, as users of per-chromosome bundles say it."""
    path = write_task_file(tmp_path / "t.txt", ["S03|S03|call.sh S03 {}|chr1,chr2"],
                           header="itemID|taskID|TaskScript|TaskArgs")
    assert cli("import", table, str(path), "--nested-delimiter", ",", env=aws_env).returncode == 0
    item = TaskQueue(client, table).get("S03")
    assert [(s.key, s.label) for s in item.subtasks] == [("Task_0", "chr1"), ("Task_1", "chr2")]
    logs = cli("logs", table, "S03", "--subtask", "chr2", env=aws_env)
    assert logs.returncode == 0 and "== Task_1 (chr2) [todo, attempts 0]" in logs.stdout
    assert "Task_0" not in logs.stdout
    assert_one_line_error(cli("logs", table, "S03", "--subtask", "chr9", env=aws_env), 2,
                          "has no sub-task 'chr9' (it has Task_0 (chr1), Task_1 (chr2))")


def on_a_terminal(*args: str, env: dict[str, str], timeout: float = 60) -> str:
    """Run `pyanamo` with its standard output on a pseudo-terminal (as in a user's shell), and
    return what it printed there: the process is the subject (TTY or pipe)."""
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "pyanamo", *args], stdout=terminal, stderr=subprocess.PIPE,
                               env={**os.environ, **env, "COLUMNS": "200"})
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=timeout)
    os.close(controller)
    return b"".join(chunks).decode(errors="replace")


def test_piped_output_is_plain_lines_and_a_terminal_gets_tables(aws_env, table, known_state):
    """ps and report, piped: a tab-separated header and rows (no table borders, no JSON in cells);
    the same commands on a terminal draw tables."""
    piped = cli("ps", table, env=aws_env).stdout.splitlines()
    assert piped[0].split("\t") == ["item", "task", "instance", "worker", "subtask", "claimed", "elapsed_s",
                                    "lease_left_s", "script"]
    rows = {line.split("\t")[0]: line.split("\t") for line in piped[1:]}
    assert sorted(rows) == ["l1", "x1"] and rows["l1"][8] == "sleep 1" and rows["l1"][2] == "i-live"
    report = dict(line.split("\t", 1) for line in cli("report", table, env=aws_env).stdout.splitlines())
    assert report["items"] == "5: 1 todo, 2 locked, 1 done, 1 failed" and "{" not in "".join(report.values())
    assert report["failed"].startswith("f1")
    shown = on_a_terminal("ps", table, env=aws_env)
    assert "running in" in shown and ("┃" in shown or "━" in shown), shown
    assert "run report" in on_a_terminal("report", table, env=aws_env)


def test_worker_progress_is_one_line_redrawn_instead_of_events(aws_env, table, tmp_path: Path):
    cli("import", table, str(write_task_file(tmp_path / "t.txt", ["a|t|true", "b|t|true"])), env=aws_env)
    proc = subprocess.run([sys.executable, "-m", "pyanamo", "worker", table, "--progress", "--workdir",
                           str(tmp_path), "--log-dir", str(tmp_path / "logs"), "--outputs", str(tmp_path / "out")],
                          env={**os.environ, **aws_env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    last = proc.stderr.split("\r")[-1]
    assert "2 done, 0 failed, 0 running here | table: 2 done (100% ended)" in last, proc.stderr
    assert '"event"' not in proc.stderr  # no JSON events (warnings would still print)
    piped = cli("worker", table, "--workdir", str(tmp_path), "--log-dir", str(tmp_path / "logs"), env=aws_env)
    assert '"worker_started"' in piped.stderr and "running here" not in piped.stderr  # piped: events


def test_the_reports_failures_name_the_subtask_its_exit_attempts_and_the_logs_command(aws_env, table,
                                                                                      known_state, tmp_path: Path):
    proc = cli("report", table, "--html", str(tmp_path / "r.html"), env=aws_env)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "r.html").read_text()
    failures = page[page.index("<h2>Failures (1)</h2>"):page.index("<h2>Items that never ran")]
    for shown in ("<th>sub-task</th><th>exit</th><th>attempts</th>", "<td>f1</td>", "<td>Task_1</td>", "<td>7</td>",
                  "<td>2</td>", "segfault at chr7", f"pyanamo logs {table} f1 --subtask Task_1"):
        assert shown in failures, shown
    text = re.sub(r"<[^>]+>", " ", page)
    assert not re.search(r"\d\.?\d*e-\d", text), "a number in e-notation"  # one format for numbers
