"""Scenario 8: hostile item IDs and scripts, and random task files imported for real."""

from __future__ import annotations

import contextlib
import io
import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyanamo.cli import main
from pyanamo.model import Item, Subtask
from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState, create_table_request
from pyanamo.taskfile import InvalidTaskFile, parse_task_bytes

from faultkit import Analysis, Figures, executions, measured
from helpers import put_items, wait_active

HOSTILE_IDS = [
    "it's \"quoted\"",
    "$(touch pwned-id)",
    "`touch pwned-backtick`",
    "line one\nline two",
    "ünïcødé ✓ 样本 🧬",
    "x" * 1000,
    "lockID",
    "#n0 = :v0",
    ":v0, Lease_Token = :v1",
    "a; rm -rf / #",
    "../../etc/passwd",
    "-rf",
]
HOSTILE_SCRIPTS = [
    "echo '$(touch pwned-single)' > /dev/null",
    "x='a b'; [ \"$x\" = 'a b' ]",
    "printf '%s\\n' 'multi\nline script' > /dev/null\ntrue",
    "echo \"ok\" | tr a-z A-Z | grep -q OK",
]


def test_hostile_ids_and_scripts_run_exactly_as_written(aws_env, client, table, tmp_path: Path, workers):
    items = [
        Item(item_id, f"t{n:02d}", (
            Subtask("Task_0", 'mkdir -p ids && printf %s "$PYANAMO_ITEM_ID" > "ids/$PYANAMO_TASK_ID"'),
            Subtask("Task_1", HOSTILE_SCRIPTS[n % len(HOSTILE_SCRIPTS)]),
        ))
        for n, item_id in enumerate(HOSTILE_IDS)
    ]
    put_items(client, table, items)
    worker = workers.start(table, "--lease", "10", "--items", "2")
    assert worker.wait(timeout=120) == 0
    queue = TaskQueue(client, table)
    for n, item_id in enumerate(HOSTILE_IDS):
        item = queue.get(item_id)
        assert item.item_id == item_id and item.state is ItemState.DONE, (item_id, item.last_error)
        assert (tmp_path / "ids" / f"t{n:02d}").read_text() == item_id
    assert not list(tmp_path.rglob("pwned*")), "an item field was run as a command"
    assert all(p.is_relative_to(tmp_path / "logs") for p in (tmp_path / "logs").rglob("*"))
    Figures("8. hostile input", runs=1, items=len(HOSTILE_IDS), subtasks=2 * len(HOSTILE_IDS),
            faults="IDs with quotes, $(), backticks, newlines, unicode, 1,000 characters, expression-like "
                   "text; scripts with quotes, pipes, newlines; plus random task files (hypothesis)",
            **measured(queue, {item_id: ItemState.DONE for item_id in HOSTILE_IDS},
                       Analysis(executions(workers.processes))),
            recovery="every item ran exactly as written; no field was ever executed").save()


_line = st.text(alphabet=st.sampled_from(list("ab|,\t \"'$()`#é\\\r") + ["\x00", "\xff", "x", "\n"]),
                max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.lists(_line, max_size=6), st.booleans())
def test_property_import_writes_exactly_the_file_or_nothing(aws_env, client, lines, with_args):
    """A random file either imports exactly what the parser says, or exits 2 writing nothing."""
    header = "itemID|taskID|TaskScript" + ("|TaskArgs" if with_args else "")
    raw = "\n".join([header, *lines]).encode("utf-8", "surrogateescape")
    table = f"p-{uuid.uuid4().hex[:12]}"
    client.create_table(**create_table_request(table))
    wait_active(client, table)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tasks.txt"
        path.write_bytes(raw)
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["import", table, str(path), "--nested-delimiter", ","])
    stored = {row["itemID"]["S"] for row in client.scan(TableName=table)["Items"]}  # test-side check
    try:
        expected = parse_task_bytes(raw, str(path), nested_delimiter=",")
    except InvalidTaskFile:
        assert code == 2 and stored == set()
        assert stderr.getvalue().startswith(f"pyanamo: error: {path}:") and "Traceback" not in stderr.getvalue()
    else:
        assert code == 0, stderr.getvalue()
        assert stored == {i.item_id for i in expected}
        queue = TaskQueue(client, table)
        for item in expected:
            assert [s.script for s in queue.get(item.item_id).subtasks] == [s.script for s in item.subtasks]
