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
from helpers import REPO, wait_for, write_task_file


def stored(client, table: str) -> int:
    count, kwargs = 0, {}
    while True:
        page = client.scan(TableName=table, Select="COUNT", ConsistentRead=True, **kwargs)
        count += page["Count"]
        if "LastEvaluatedKey" not in page:
            return count
        kwargs = {"ExclusiveStartKey": page["LastEvaluatedKey"]}


def test_ctrl_c_stops_an_import_within_a_second_having_written_whole_items(aws_env, client, table, tmp_path, soak):
    rows = 1_000_000 if soak else 20_000
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


def peak_rss_mb(*args: str, env: dict[str, str]) -> float:
    """The peak resident memory of ``pyanamo ARGS`` (its stdout discarded), measured by
    bench/peak_rss.py (a process that once held much would pass its own peak on to a child)."""
    measured = subprocess.run([sys.executable, "-I", str(REPO / "bench" / "peak_rss.py"), sys.executable, "-m",
                               "pyanamo", *args], env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=600)
    code, peak_kb, _ = measured.stdout.split()
    assert code == "0", measured.stderr
    return int(peak_kb) / 1024


def test_an_imports_memory_stays_flat_in_the_files_size(aws_env, table, tmp_path, soak):
    """Rows are checked as they are read and kept on disk; items are read back one at a time.
    Measured on --dry-run, which does all of an import but the puts (the puts keep a window of
    64 items in flight). Before: 394 MB at 200,000 rows, 2.7 GB at 1,000,000."""
    small, large = (250_000, 1_000_000) if soak else (25_000, 200_000)
    peaks = {}
    for rows in (small, large):
        tasks = write_task_file(tmp_path / f"{rows}.txt",
                                [f"sample{n:07d}|call|bcftools call -mv sample{n:07d}.bam > {n}.vcf"
                                 for n in range(rows)])
        peaks[rows] = peak_rss_mb("import", table, str(tasks), "--dry-run", env=aws_env)
    assert peaks[large] - peaks[small] < 20, peaks  # not in the file's size (before: ~2 KB a row)
    Figures("27b. import memory in the file's size", runs=1, items=large, subtasks=large, lost=0, overlaps=0,
            duplicates=0, why={}, faults=f"task files of {small:,} and {large:,} rows (import --dry-run)",
            recovery=f"peak memory {peaks[small]:.0f} MB at {small:,} rows, {peaks[large]:.0f} MB at "
                     f"{large:,} rows").save()
