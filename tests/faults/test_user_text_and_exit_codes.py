"""Scenario 16: text that users' commands print is data (never markup, never a traceback), and a
script can tell a run with failed items from a clean one by exit statuses alone."""

from __future__ import annotations

import subprocess
import sys

from pyanamo.model import Item, Subtask
from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from faultkit import Analysis, Figures, executions, measured
from helpers import cli, put_items, write_task_file


def test_user_text_is_rendered_as_data(aws_env, client, table, tmp_path, workers):
    rows = ["close|S|echo '[/bold]' >&2; exit 1",
            "markup|S|echo '[red]not red[/red]' >&2; exit 1",
            "many|S|seq 1 5000"]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    assert workers.start(table, "--lease", "10", "--max-attempts", "1").wait(timeout=60) == 3
    status = cli("status", table, env={**aws_env, "COLUMNS": "160"})
    assert status.returncode == 3 and status.stderr == "", status.stderr
    assert "Task_0: [red]not red[/red]" in status.stdout and "Task_0: [/bold]" in status.stdout
    assert "not priced" in status.stdout and "$0" not in status.stdout  # off EC2, no --price-per-hour
    head = subprocess.run(f"{sys.executable} -m pyanamo logs {table} many | head -n 2; echo \"${{PIPESTATUS[0]}}\"",
                          shell=True, executable="/bin/bash", capture_output=True, text=True,
                          env={**aws_env, "PATH": "/usr/bin:/bin"})
    assert head.stderr == "", head.stderr
    assert head.stdout.splitlines()[-1] == "0"
    empty = f"{table}-empty"
    assert cli("create-table", empty, env=aws_env).returncode == 0
    watch = cli("status", empty, "--watch", "1", env=aws_env, timeout=20)
    assert watch.returncode == 0 and "is empty: nothing to watch" in watch.stderr
    Figures("16. user text", runs=1, items=3, subtasks=3,
            faults="rich markup in stderr ('[/bold]'), `logs | head`, `status --watch` on an empty table",
            **measured(TaskQueue(client, table), {"close": ItemState.FAILED, "markup": ItemState.FAILED,
                                                  "many": ItemState.DONE}, Analysis(executions(workers.processes))),
            recovery="status shows the text as written (exit 3: a failed item); no traceback; "
                     "watch on an empty table says so and exits").save()


def test_exit_statuses_and_signals_tell_failure_apart(aws_env, client, table, tmp_path, workers):
    clean = f"{table}-clean"
    assert cli("create-table", clean, env=aws_env).returncode == 0
    assert cli("import", clean, str(write_task_file(tmp_path / "c.txt", ["clean|S|true"])),
               env=aws_env).returncode == 0
    assert workers.start(clean, "--lease", "10").wait(timeout=60) == 0
    assert cli("status", clean, env=aws_env).returncode == 0
    assert cli("status", clean, "--json", env=aws_env).returncode == 0

    rows = ["oom|S|kill -9 $$", "segv|S|kill -SEGV $$", "ok|S|true"]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    worker = workers.start(table, "--lease", "10", "--max-attempts", "1")
    assert worker.wait(timeout=60) == 3
    assert b"pyanamo: 2 of the items this worker finished failed" in worker.log_path.read_bytes()
    assert cli("status", table, "--json", env=aws_env).returncode == 3
    queue = TaskQueue(client, table)
    oom, segv = queue.get("oom"), queue.get("segv")
    assert oom.state is ItemState.FAILED and oom.subtasks[0].exit_code == 137
    assert oom.last_error == "Task_0: killed (SIGKILL: out of memory?)"
    assert segv.subtasks[0].exit_code == 139 and segv.last_error == "Task_0: killed (SIGSEGV)"
    Figures("17. exit statuses", runs=1, items=4, subtasks=4,
            faults="sub-tasks ended by SIGKILL and SIGSEGV next to a clean run",
            **measured(queue, {"oom": ItemState.FAILED, "segv": ItemState.FAILED, "ok": ItemState.DONE},
                       Analysis(executions(workers.processes))),
            recovery="worker and status exit 0 on the clean run, 3 with failed items; "
                     "signals recorded as 128+N with their names").save()


def test_escape_sequences_from_the_table_never_reach_the_terminal(aws_env, client, table, tmp_path, workers):
    """Import refuses control characters, but anyone who can write the table can put an item
    directly, and any command can print escape sequences: `logs`, `status` and `ps` show them
    as ``\\x1b`` text, never as sequences the terminal would obey (retitle, clear, hide)."""
    item_id = "evil\x1b]0;pwned\x07\x1b[2J"
    put_items(client, table, [Item(item_id, "T\x1b[8m", (Subtask("Task_0", r"printf 'out\033[31m\r\n'; exit 1"),))])
    assert workers.start(table, "--lease", "10", "--max-attempts", "1").wait(timeout=60) == 3
    shown = {"logs": cli("logs", table, item_id, env=aws_env),
             "status": cli("status", table, env={**aws_env, "COLUMNS": "200"})}
    assert shown["logs"].returncode == 0 and shown["status"].returncode == 3
    for name, proc in shown.items():
        assert "\x1b" not in proc.stdout + proc.stderr and "\r" not in proc.stdout, name
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J" in shown["logs"].stdout
    assert "out\\x1b[31m\\x0d" in shown["logs"].stdout
    assert "evil\\x1b]0;pwned" in shown["status"].stdout
    Figures("22. escape sequences in items and output", runs=1, items=1, subtasks=1,
            faults="an item written directly with escape sequences in its IDs; a command printing them",
            **measured(TaskQueue(client, table), {item_id: ItemState.FAILED}, Analysis(executions(workers.processes))),
            recovery="logs and status print them escaped (\\x1b); none reaches the terminal").save()
