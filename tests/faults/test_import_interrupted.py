"""Scenario 27: Ctrl-C stops a large import at once, with only whole items written, and says how
many. Before, it went on writing the whole file (27,008 more items in 30 s after two Ctrl-C)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from faultkit import Figures
from helpers import wait_for, write_task_file


def stored(client, table: str) -> int:
    count, kwargs = 0, {}
    while True:
        page = client.scan(TableName=table, Select="COUNT", ConsistentRead=True, **kwargs)
        count += page["Count"]
        if "LastEvaluatedKey" not in page:
            return count
        kwargs = {"ExclusiveStartKey": page["LastEvaluatedKey"]}


def test_ctrl_c_stops_an_import_within_a_second_having_written_whole_items(aws_env, client, table, tmp_path, soak):
    rows = 100_000 if soak else 20_000
    tasks = write_task_file(tmp_path / "t.txt", [f"i{n:06d}|S|echo {n}" for n in range(rows)])
    # As at a terminal: SIGINT at its default, whatever this process inherited (a shell without job
    # control starts background jobs with SIGINT ignored, and an ignored signal stays ignored in a
    # child: Python then never raises KeyboardInterrupt, and the import would run on to its end).
    importer = subprocess.Popen([sys.executable, "-m", "pyanamo", "import", table, str(tasks)],
                                env={**os.environ, **aws_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: stored(client, table) >= 500, timeout=120, interval=0.2, message="the import under way")
    importer.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = importer.communicate(timeout=60)
    stopped_in = time.monotonic() - sent
    assert importer.returncode == 130, err
    imported = int(re.search(r"imported (\d+) items", out).group(1))
    assert 500 <= imported < rows
    assert stored(client, table) == imported  # the process is gone: nothing more can come
    assert f"{rows - imported} of the file's {rows} items were not written" in err
    for row in client.scan(TableName=table, Limit=50)["Items"]:  # whole items: every attribute there
        assert row["TaskScript"]["M"]["Task_0"]["M"]["Script"]["S"].startswith("echo ")
    assert stopped_in < 10
    Figures("27. Ctrl-C during a large import", runs=1, items=rows, subtasks=rows, lost=0, overlaps=0,
            duplicates=0, why={}, faults=f"SIGINT once {imported:,} of {rows:,} items were written",
            recovery=f"stopped {stopped_in:.2f} s after Ctrl-C (exit 130); {imported:,} whole items written and "
                     f"reported; the rest not written").save()
