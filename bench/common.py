"""Shared pieces of the benchmarks: the local endpoint (dynalite or moto) and its CPU share,
tables, timed commands, results."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pyanamo.supervise import descendants  # the supervisor's own /proc walk

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
PYANAMO = [sys.executable, "-m", "pyanamo"]
# Request counting (PYANAMO_STATS_FILE) in the processes the benchmarks start: hooks/sitecustomize.py.
HOOKS = {"PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH / "hooks"), os.environ.get("PYTHONPATH")]))}


ENGINE = os.environ.get("PYANAMO_BENCH_ENGINE", "dynalite")  # as `pyanamo local` serves by default
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (from /proc)."""
    total = 0.0
    for each in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


class LocalServer:
    """`pyanamo local --engine ENGINE --in-memory` in its own process on 127.0.0.1: the endpoint
    under the benchmarks. ``cpu_share`` tells whether it, rather than PyAnamo, set the pace."""

    def __init__(self, engine: str = ENGINE) -> None:
        self.engine = engine

    def __enter__(self) -> LocalServer:
        args = ["--engine", self.engine] + (["--in-memory"] if self.engine == "dynalite" else [])
        self.process = subprocess.Popen([*PYANAMO, "local", "--port", "0", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        self.url = self.process.stdout.readline().strip().split("=", 1)[1]
        detail = self.process.stdout.readline()
        if f"({self.engine}," not in detail:
            raise SystemExit(f"pyanamo local did not serve {self.engine}: {detail.strip()}")
        self.env = {**os.environ, **HOOKS, "AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        return self

    def __exit__(self, *exc: Any) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # still busy answering: results are already taken
            self.process.kill()
            self.process.wait()

    def new_table(self) -> str:
        table = f"bench-{uuid.uuid4().hex[:8]}"
        subprocess.run([*PYANAMO, "create-table", table], env=self.env, check=True, capture_output=True)
        return table

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    @contextmanager
    def cpu_share(self) -> Iterator[dict[str, float]]:
        """``with server.cpu_share() as share:`` … then ``share["percent"]``: the endpoint's CPU
        time over the block's wall time, in % of one core (100 % = one core saturated)."""
        share: dict[str, float] = {}
        cpu, wall = self.cpu_seconds(), time.monotonic()
        yield share
        share["percent"] = round(100 * (self.cpu_seconds() - cpu) / max(time.monotonic() - wall, 1e-9), 1)


@dataclass
class Timed:
    seconds: float
    returncode: int
    max_rss_mb: float
    stats: dict[str, Any]
    cpu_seconds: float = 0.0  # the command's own (user + system)


def timed(args: list[str], env: dict[str, str], stats_file: Path | None = None) -> Timed:
    """Run a command; its wall time, exit code, peak RSS and (PYANAMO_STATS_FILE) request stats."""
    env = dict(env)
    if stats_file:
        env["PYANAMO_STATS_FILE"] = str(stats_file)
    started = time.monotonic()
    measured = subprocess.run([sys.executable, "-I", str(BENCH / "peak_rss.py"), *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
    seconds = time.monotonic() - started
    code, peak_kb, cpu = measured.stdout.split()
    stats = json.loads(stats_file.read_text()) if stats_file and stats_file.exists() else {}
    return Timed(seconds, int(code), int(peak_kb) / 1024, stats, float(cpu))


def write_task_file(path: Path, rows: list[str], header: str = "itemID|taskID|TaskScript") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def merge_stats(files: list[Path]) -> dict[str, Any]:
    """The sum of several processes' request stats."""
    total: dict[str, Any] = {"calls": {}, "errors": {}, "items_read": 0, "read_units": 0.0, "write_units": 0.0}
    for file in files:
        if not file.exists():
            continue
        stats = json.loads(file.read_text())
        for key in ("calls", "errors"):
            for name, count in stats[key].items():
                total[key][name] = total[key].get(name, 0) + count
        for key in ("items_read", "read_units", "write_units"):
            total[key] += stats[key]
    return total


def machine() -> dict[str, Any]:
    return {"cores": len(os.sched_getaffinity(0)), "engine": ENGINE, "python": platform.python_version(),
            "platform": platform.platform(), "date": datetime.now(UTC).strftime("%Y-%m-%d")}


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def show(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)


def peak_rss_self_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
