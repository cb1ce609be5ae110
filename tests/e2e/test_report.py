"""The run report from a real run: the trace's rows and peak memory, the worker records, the
cost in `status`, and the HTML opened in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import cli, write_task_file

LEASE = "6"
ROWS = [
    "big|S1|python3 -c \"b = bytearray(200_000_000); import time; time.sleep(0.3)\"",
    "big|S1|sleep 0.2",
    "bad|S2|echo 'boom: chr7 truncated' >&2; exit 3",
    "ok|S3|echo fine; head -c 1234 /dev/zero > $PYANAMO_OUTDIR/result.bin",
]


@pytest.fixture
def finished_run(aws_env, table, tmp_path, workers) -> Path:
    """Two workers (one with two slots) ran ROWS at $0.50/hour; the report and trace are written."""
    tasks = write_task_file(tmp_path / "tasks.txt", ROWS)
    assert cli("import", table, str(tasks), env=aws_env).returncode == 0
    workers.start(table, "--lease", LEASE, "--items", "2", "--max-attempts", "2", "--retry-delay", "0.1",
                  "--price-per-hour", "0.5")
    workers.start(table, "--lease", LEASE, "--max-attempts", "2", "--retry-delay", "0.1", "--price-per-hour", "0.5")
    assert sorted(workers.wait_all(timeout=120)) in ([0, 3], [3, 3])  # the failed item ended on one of them
    proc = cli("report", table, "--html", str(tmp_path / "report.html"), "--trace", str(tmp_path / "trace.tsv"),
               "--json", env=aws_env)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "summary.json").write_text(proc.stdout)
    return tmp_path


def test_the_trace_has_a_row_per_subtask_run_with_where_when_memory_and_cost(finished_run, workers):
    with (finished_run / "trace.tsv").open() as trace:
        rows = list(csv.DictReader(trace, delimiter="\t"))
    assert {"item", "task", "subtask", "attempt", "status", "exit", "instance", "instance_type", "start", "end",
            "wall_s", "cpu_s", "peak_rss_mb", "cost_usd"} <= set(rows[0])
    by_run = {(r["item"], r["subtask"]): r for r in rows}
    assert sorted(by_run) == [("bad", "Task_0"), ("big", "Task_0"), ("big", "Task_1"), ("ok", "Task_0")]
    big = by_run[("big", "Task_0")]
    assert float(big["peak_rss_mb"]) >= 190, big  # the sub-task's own 200 MB, through its supervisor
    assert float(by_run[("ok", "Task_0")]["peak_rss_mb"]) < 100
    assert by_run[("ok", "Task_0")]["output_bytes"] == "1234" and big["output_bytes"] == "0"
    bad = by_run[("bad", "Task_0")]
    assert (bad["status"], bad["exit"], bad["attempt"], bad["earlier_exits"]) == ("failed", "3", "2", "3")
    pids = {f":{w.pid}" for w in workers.processes}
    for row in rows:
        assert row["start"] < row["end"] and row["instance_type"] == "local"
        assert any(row["worker"].endswith(p) for p in pids)
        slots = 2 if row["worker"].endswith(f":{workers.processes[0].pid}") else 1
        assert float(row["cost_usd"]) == pytest.approx(0.5 * float(row["wall_s"]) / 3600 / slots, abs=2e-6)


def test_the_summary_counts_workers_hours_cost_and_utilization(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["items"]["done"] == 2 and summary["items"]["failed"] == 1
    assert summary["subtask_runs"] == 4 and summary["workers"] == 2
    assert (summary["attempts"], summary["retries"]) == (5, 1)  # "bad" ran twice
    assert summary["instance_hours"] > 0  # rounded to 4 places: the cost is checked to that precision
    assert summary["cost_usd"] == pytest.approx(summary["instance_hours"] * 0.5, abs=0.5e-4 * 0.5 + 1e-9)
    assert 0 < summary["utilization"] <= 1
    assert summary["right_sizing"]["max_mb"] >= 190


def test_status_shows_the_cost_so_far(aws_env, table, finished_run):
    proc = cli("status", table, "--json", env=aws_env)
    report = json.loads(proc.stdout)
    assert report["workers"] == 2 and report["cost_usd"] > 0 and report["cost_to_finish_usd"] == 0
    assert report["completion_per_hour"] > 0
    text = cli("status", table, env={**aws_env, "COLUMNS": "200"}).stdout
    assert "workers: 2," in text and "cost so far $" in text
    assert text.count("to finish") == 1 and text.count("items/min") == 1  # one rate, one time to finish
    assert "(since the first worker started); to finish: done" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", "--window-size=1150,1500"]


def page_requests(net_log: Path, page: str) -> list[str]:
    """URLs the page asked for, from Chromium's net log: requests with an initiator (the page's
    origin; the browser's own background requests have none), other than the page itself."""
    text = net_log.read_text().rstrip()
    log = json.loads(text if text.endswith("}") else text.rstrip(",") + "]}")  # cut short at exit
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    found = []
    for event in log["events"]:
        params = event.get("params") or {}
        url = params.get("url")
        if event["type"] == start and url and params.get("initiator") != "not an origin" and url != page:
            found.append(url)
    return found


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed here (make test installs Debian's "
                                             "chromium where apt-get can; the report's browser check needs it)")
def test_the_html_report_renders_offline_with_a_bar_per_run_and_a_lane_per_worker(finished_run):
    html_file = finished_run / "report.html"
    profile = finished_run / "chromium-profile"
    net_log = finished_run / "net-log.json"
    dom = subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", f"--log-net-log={net_log}",
                          "--dump-dom", html_file.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    bars = re.findall(r'<rect class="run (\w+)"', rendered)
    assert sorted(bars) == ["done", "done", "done", "failed", "retried"]  # a bar per attempt, by outcome
    attempts = re.findall(r'<rect class="run (\w+)"[^>]*data-item="bad" data-subtask="Task_0" data-attempt="(\d)"',
                          rendered)
    assert sorted(attempts) == [("failed", "2"), ("retried", "1")]  # the retry is a bar of its own
    assert "5 attempts, 1 retries" in rendered
    with (finished_run / "trace.tsv").open() as trace:  # which workers ran something: the first one may
        ran = {row["worker"] for row in csv.DictReader(trace, delimiter="\t")}  # have taken every item
    assert len(re.findall(r'<g class="lane"', rendered)) == len(ran)  # one lane per worker
    lanes = re.findall(r'<g class="lane" data-worker="[^"]*" data-instance="([^"]*)"', rendered)
    assert lanes and all(re.search(rf'class="label">{re.escape(i)}', rendered) for i in lanes)  # named by machine
    assert len(re.findall(r'<line class="tick"', rendered)) >= 2  # a time axis with ticks
    assert "boom: chr7 truncated" in rendered and "Task_0: boom: chr7 truncated" in rendered
    assert "cores busy" in rendered and "vCPUs" in rendered  # right-sizing weighs CPU as well as memory
    assert '<p class="banner failed">1 items did not succeed' in rendered  # a failure banner
    assert "<td>pyanamo report t-" in rendered and "<td>pyanamo</td>" in rendered  # metadata: command, version
    runs = rendered[rendered.index("<h2>Every sub-task run (4)</h2>"):]  # the task table: every run
    assert "<th>queued</th>" in runs and "<th>%CPU</th>" in runs and runs.count("<tr>") == 5
    assert page_requests(net_log, html_file.as_uri()) == []  # the browser's own update checks aside
    # The same check sees a page that does ask for something (so the empty list above means it).
    leaky = finished_run / "leaky.html"
    leaky.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/pixel.png"></body></html>')
    leaky_log = finished_run / "leaky-net-log.json"
    subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", f"--log-net-log={leaky_log}",
                    "--dump-dom", leaky.as_uri()], capture_output=True, text=True, timeout=120)
    assert page_requests(leaky_log, leaky.as_uri()) == ["http://127.0.0.1:9/pixel.png"]
    shot = finished_run / "report.png"
    screenshot = subprocess.run([CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}",
                                 f"--screenshot={shot}", html_file.as_uri()], capture_output=True, text=True,
                                timeout=120)
    assert screenshot.returncode == 0 and shot.stat().st_size > 10_000, screenshot.stderr[-2000:]
