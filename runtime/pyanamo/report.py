"""`pyanamo report`: where every sub-task ran, how long, how much memory, what it cost.

Reads the table with Query (the state index: item IDs per state, and the worker records) and
BatchGetItem, never a Scan. Writes a trace (one TSV row per sub-task run, Nextflow's
``-with-trace`` is the model) and a self-contained HTML report (summary, a timeline with one lane
per worker, distributions per sub-task group, failures, the slowest and the most memory-hungry
sub-tasks, and a right-sizing hint) that opens offline: inline CSS and SVG, no script, and a
Content-Security-Policy that forbids any request.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import html
import io
import shlex
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from itertools import accumulate
from operator import attrgetter
from typing import Any

from .accounting import RunCost, WorkerSpan, parse_time, percentile, right_size, run_cost, worker_spans
from .errors import MalformedItem
from .gateway import TableGateway
from .model import Item, iso
from .runs import MAX_EARLIER_ATTEMPTS, RunRecord
from .schema import WORKERS_SHARD, Attr, ItemState, SubtaskStatus
from .status import duration

TRACE_COLUMNS = ("item", "task", "subtask", "label", "attempt", "status", "exit", "instance", "instance_type", "worker",
                 "host", "start", "end", "wall_s", "cpu_s", "peak_rss_mb", "output_bytes", "cost_usd", "earlier_exits",
                 "command")
TOP = 10  # rows in the slowest and most memory-hungry lists
REPORT_ATTRIBUTES = (Attr.ITEM_ID, Attr.TASK_ID, Attr.STATE, Attr.TASK_SCRIPT, Attr.LOG_SUMMARY, Attr.INSTANCE_ID,
                     Attr.LAST_ERROR, Attr.DONE_DATE, Attr.BLOCKED_BY, Attr.WAITING_ON, Attr.IMPORTED_DATE)
TASK_TABLE_ROWS = 2000  # the HTML's task table; the trace has every run


@dataclass(frozen=True)
class Blocked:
    """An item that never ran: an item it waits for ended failed or cancelled (or is missing)."""

    item: str
    task: str
    state: str  # upstream_failed, or waiting
    because: str  # the item that blocked it, or the items it still waits for


@dataclass(frozen=True)
class SubtaskRun:
    """The latest run of one sub-task, from its record in the item."""

    item: str
    task: str
    subtask: str
    attempt: int
    status: str
    exit: int | None
    instance: str
    instance_type: str
    worker: str
    host: str
    start: str
    end: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    output_bytes: int  # committed to $PYANAMO_OUTDIR's store by this run (0: none)
    cost_usd: float | None
    earlier_exits: tuple[int | None, ...]
    command: str
    label: str = ""  # the TaskArgs argument that made the sub-task (chr2), if one did
    imported: str = ""  # when its item was imported (the queue wait: imported -> started)
    # ``start`` and ``end`` as epoch seconds, read for every sort, lane and bar: parsed once, here
    # (fields, not cached properties: an attribute added later gives each of 100,000 runs a
    # dictionary of its own, 130 MB more at the peak)
    started: float = field(init=False, repr=False, compare=False)
    ended: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        started = parse_time(self.start) or 0.0
        object.__setattr__(self, "started", started)
        object.__setattr__(self, "ended", parse_time(self.end) or started + self.wall_s)

    @property
    def cpu_percent(self) -> float:
        """Its CPU time over its wall time: 100 % keeps one core busy."""
        return 100 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def queue_wait_s(self) -> float | None:
        imported = parse_time(self.imported) if self.imported else None
        return None if imported is None else max(0.0, self.started - imported)

    @property
    def name(self) -> str:
        return f"{self.subtask} ({self.label})" if self.label else self.subtask

    @property
    def program(self) -> str:
        """The command's first word (its program), for grouping."""
        words = self.command.split()
        return words[0].rsplit("/", 1)[-1] if words else "?"

    def trace_row(self) -> list[object]:
        """Its row of the trace, for ``csv.writer`` (which writes None as an empty field)."""
        row = list(_TRACE_VALUES(self))
        row[_COST_COLUMN] = None if self.cost_usd is None else f"{self.cost_usd:.6f}"
        row[_EXITS_COLUMN] = ",".join("" if c is None else str(c) for c in self.earlier_exits)
        return row


_TRACE_VALUES = attrgetter(*TRACE_COLUMNS)
_COST_COLUMN = TRACE_COLUMNS.index("cost_usd")
_EXITS_COLUMN = TRACE_COLUMNS.index("earlier_exits")


def records_of(item: Item) -> dict[str, RunRecord | None]:
    """Each sub-task's run record, read once (values of the wrong type read as unknown)."""
    return {s.key: RunRecord.from_map(item.log_summary.get(s.key), s.key) for s in item.subtasks}


def runs_of(item: Item, records: Mapping[str, RunRecord | None] | None = None) -> Iterator[SubtaskRun]:
    """One run per sub-task that has a run record (sub-tasks that never ran have none); values
    of the wrong type read as unknown (``runs.RunRecord``)."""
    records = records_of(item) if records is None else records
    for s in item.subtasks:
        record = records.get(s.key)
        if record is None or not record.ran:
            continue
        exit_code = record.exit_code if record.exit_code is not None else s.exit_code
        yield SubtaskRun(
            item=item.item_id, task=item.task_id, subtask=s.key,
            attempt=record.attempt if record.attempt is not None else s.attempts,
            status=s.status.value, exit=exit_code,
            instance=record.instance_id or item.instance_id or "?",
            instance_type=record.instance_type or "?", worker=record.worker_id or "?",
            host=record.host or "?", start=str(record.started), end=record.ended or "",
            wall_s=round(record.wall_time, 3), cpu_s=round(record.cpu_time, 3),
            peak_rss_mb=round(record.peak_rss_kb / 1024, 1),
            output_bytes=record.output_bytes or 0,
            cost_usd=record.cost_usd,
            earlier_exits=record.earlier_exits,
            command=s.script,
            label=s.label or "",
            imported=item.imported_date or "",
        )


def attempts_of(item: Item, records: Mapping[str, RunRecord | None] | None = None) -> Iterator[SubtaskRun]:
    """The earlier attempts of each sub-task that the record keeps (``Earlier_Attempts``: the
    latest few), as runs with status ``retried``: the timeline draws every attempt."""
    records = records_of(item) if records is None else records
    for s in item.subtasks:
        record = records.get(s.key)
        if record is None or not record.earlier_attempts:
            continue
        latest = record.attempt if record.attempt is not None else s.attempts
        for back, earlier in enumerate(reversed(record.earlier_attempts), start=1):
            yield SubtaskRun(
                item=item.item_id, task=item.task_id, subtask=s.key, attempt=max(1, latest - back),
                status=RETRIED, exit=earlier.exit_code, instance="?", instance_type="?",
                worker=earlier.worker_id, host="?", start=iso(earlier.started),
                end=iso(earlier.started + earlier.wall_time), wall_s=earlier.wall_time, cpu_s=0.0,
                peak_rss_mb=0.0, output_bytes=0, cost_usd=None, earlier_exits=(), command=s.script,
                label=s.label or "", imported=item.imported_date or "")


RETRIED = "retried"  # the status of an earlier attempt's bar


@dataclass
class Failure:
    item: str
    task: str
    error: str
    stderr_tail: str
    subtask: str = ""  # the first failed sub-task: ``Task_1 (chr2)``
    exit_code: int | None = None
    attempts: int = 0
    logs: str = ""  # the command that shows its log tails


@dataclass
class RunReport:
    table: str
    items: dict[str, int]
    subtasks: dict[str, int]
    runs: list[SubtaskRun]
    workers: list[dict[str, Any]]
    cost: RunCost
    failures: list[Failure] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # trace rows of sub-tasks that never ran
    retried: list[SubtaskRun] = field(default_factory=list)  # earlier attempts (the latest few of each)
    attempts: int = 0  # every attempt of every sub-task (the Attempts counters)
    retries: int = 0  # of them, those after a sub-task's first

    @cached_property
    def bars(self) -> list[SubtaskRun]:
        """Every attempt the timeline draws: the earlier ones the records keep, and each latest."""
        return [*self.retried, *self.runs]

    @cached_property
    def span(self) -> tuple[float, float] | None:
        times = [t for r in self.bars for t in (r.started, r.ended)]
        times += [t for s in self.spans for t in (s.started, s.ended)]
        return (min(times), max(times)) if times else None

    @cached_property
    def spans(self) -> list[WorkerSpan]:
        return worker_spans(self.workers)

    @cached_property
    def cpu_hours(self) -> float:
        return sum(r.cpu_s for r in self.runs) / 3600

    def groups(self, by: str) -> dict[str, list[SubtaskRun]]:
        grouped: dict[str, list[SubtaskRun]] = defaultdict(list)
        for run in self.runs:
            # sub-tasks made from arguments group by argument (chr2 of every sample), others by key
            grouped[(run.label or run.subtask) if by == "subtask" else run.program].append(run)
        return dict(sorted(grouped.items()))

    @cached_property
    def sizing(self) -> dict[str, object]:
        slots = max((s.slots for s in self.spans), default=1)
        return right_size([r.peak_rss_mb for r in self.runs], slots)

    def summary(self) -> dict[str, Any]:
        """The report's facts as JSON values (`report --json`); the HTML and the text read them too."""
        return dict(self._summary)

    @cached_property
    def _summary(self) -> dict[str, Any]:
        span = self.span
        return {
            "table": self.table, "items": self.items, "subtasks": self.subtasks, "subtask_runs": len(self.runs),
            "attempts": self.attempts, "retries": self.retries, "workers": len(self.workers),
            "start": None if span is None else iso(span[0]), "end": None if span is None else iso(span[1]),
            "span_s": None if span is None else round(span[1] - span[0], 1),
            "cpu_hours": round(self.cpu_hours, 4), "output_bytes": sum(r.output_bytes for r in self.runs),
            **self.cost.to_json(), "right_sizing": self.sizing,
            "blocked": [asdict(b) for b in self.blocked],
        }


def report_facts(report: RunReport) -> list[tuple[str, str]]:
    """The summary as a person reads it (``pyanamo report`` without --json): one fact a line,
    counts by state, times with units, money with a currency or "not priced"."""
    s = report.summary()

    def counts(values: dict[str, int]) -> str:
        return ", ".join(f"{count} {state}" for state, count in values.items() if count) or "none"

    facts = [("items", f"{sum(s['items'].values())}: {counts(s['items'])}"),
             ("sub-tasks", f"{sum(s['subtasks'].values())}: {counts(s['subtasks'])}"),
             ("sub-task runs", f"{s['subtask_runs']} ({s['attempts']} attempts, {s['retries']} retries)"),
             ("workers", str(s["workers"]))]
    if s["span_s"] is not None:
        facts.append(("span", f"{s['start']} → {s['end']} ({_seconds(s['span_s'])})"))
    facts.append(("CPU", f"{s['cpu_hours']:.2f} h"))
    if s["output_bytes"]:
        facts.append(("outputs", f"{s['output_bytes'] / 1e6:.1f} MB"))
    cost = report.cost
    if s["workers"]:
        facts.append(("instance-hours", f"{cost.instance_hours:.3f} h"
                      + ("" if cost.utilization is None else f", {100 * cost.utilization:.0f} % busy")))
        facts.append(("cost", "not priced" if cost.cost_usd is None else f"${cost.cost_usd:.4f}"
                      + (f" (+ {cost.unknown_price_hours:.3f} h not priced)" if cost.unknown_price_hours else "")))
    if report.failures:
        facts.append(("failed", ", ".join(f.item for f in report.failures[:10])
                      + (" …" if len(report.failures) > 10 else "") + " (pyanamo logs TABLE ITEM)"))
    if report.blocked:
        facts.append(("never ran", ", ".join(f"{b.item} ({b.because})" for b in report.blocked[:10])
                      + (" …" if len(report.blocked) > 10 else "")))
    sizing = s["right_sizing"]
    if report.runs and sizing.get("smallest_types"):
        facts.append(("right-sizing", f"peak memory p95 {sizing['p95_mb']} MB, max {sizing['max_mb']} MB; "
                                      f"{sizing['slots']} at once need {sizing['needed_gib']} GiB: "
                                      f"{', '.join(sizing['smallest_types'])}"))
    return facts


def _failure(table: str, item: Item) -> Failure:
    """What the failures table shows of a failed item: its first failed sub-task, that one's exit
    code and attempts, the last line it wrote on stderr, and the command to read its logs."""
    failed = next((s for s in item.subtasks if s.status is SubtaskStatus.FAILED), None)
    lines = [line for s in item.subtasks if s.status is SubtaskStatus.FAILED
             for line in str((item.logs.get(s.key) or {}).get("stderr") or "").splitlines() if line.strip()]
    command = f"pyanamo logs {shlex.quote(table)} {shlex.quote(item.item_id)}"
    if failed is not None:
        command += f" --subtask {shlex.quote(failed.label or failed.key)}"
    return Failure(item.item_id, item.task_id, item.last_error or "", lines[-1] if lines else "",
                   subtask=failed.name if failed else "", exit_code=failed.exit_code if failed else None,
                   attempts=failed.attempts if failed else 0, logs=command)


@contextlib.contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """Python's cycle collector off while a report is built: it walks every live container again
    and again as they pile up, and 100,000 items' worth of them took more than half the time of
    reading them. What the report builds holds no reference cycles; reference counting frees it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def gather(queue: TableGateway) -> RunReport:
    """Every item (one parallel Scan, then the failed items' logs) and every worker record."""
    items: dict[str, int] = {s.value: 0 for s in ItemState}
    subtasks: dict[str, int] = {s.value: 0 for s in SubtaskStatus}
    runs: list[SubtaskRun] = []
    failures: list[Failure] = []
    failed: list[Mapping[str, Any]] = []  # the failed items' rows, their logs still to read
    blocked: list[Blocked] = []
    skipped: list[dict[str, str]] = []
    retried: list[SubtaskRun] = []
    attempts = retries = 0
    # A Scan reads every item in a third of the endpoint's work of the state index + BatchGetItem
    # (gateway.SCAN_SEGMENTS); the log tails (up to 100 KB an item) only where the report shows
    # them: failed items, read afterwards by ID.
    for row in queue.scan_rows((*REPORT_ATTRIBUTES, Attr.STATE_SHARD)):
        if row.get(Attr.STATE_SHARD, {}).get("S") == WORKERS_SHARD:
            continue  # a worker's record: read below
        try:
            item = Item.from_row(row)
        except MalformedItem as exc:
            state = row.get(Attr.STATE, {}).get("S")
            if state in items:
                items[state] += 1
            failures.append(Failure(exc.item_id, "", f"malformed item: {exc.reason}", ""))
            continue
        items[item.state.value] += 1
        for s in item.subtasks:
            subtasks[s.status.value] += 1
            attempts += s.attempts
            retries += max(0, s.attempts - 1)
        records = records_of(item)
        runs.extend(runs_of(item, records))
        retried.extend(attempts_of(item, records))
        skipped += [{"item": item.item_id, "task": item.task_id, "subtask": s.key, "label": s.label or "",
                     "status": s.status.value, "command": s.script}
                    for s in item.subtasks if s.status is SubtaskStatus.SKIPPED]
        if item.state is ItemState.UPSTREAM_FAILED:
            blocked.append(Blocked(item.item_id, item.task_id, item.state.value, item.blocked_by or "?"))
        elif item.state is ItemState.WAITING:
            blocked.append(Blocked(item.item_id, item.task_id, item.state.value,
                                   "waits for " + ", ".join(sorted(item.waiting_on)[:5])
                                   + (" …" if len(item.waiting_on) > 5 else "")))
        if item.state is ItemState.FAILED:
            failed.append(row)
    ids = [row[Attr.ITEM_ID]["S"] for row in failed]
    logs = {row[Attr.ITEM_ID]["S"]: row.get(Attr.LOG) for row in queue.get_many(ids, (Attr.ITEM_ID, Attr.LOG))}
    for item_id, failed_row in zip(ids, failed, strict=True):
        log = logs.get(item_id)
        failures.append(_failure(queue.table, Item.from_row({**failed_row, Attr.LOG: log} if log else failed_row)))
    workers = list(queue.worker_records())
    machines = {str(w.get("Worker_ID")): w for w in workers}

    def placed(run: SubtaskRun) -> SubtaskRun:  # where an earlier attempt ran: its worker's record says
        machine = machines.get(run.worker, {})
        return replace(run, instance=str(machine.get("InstanceID") or "?"),
                       instance_type=str(machine.get("Instance_Type") or "?"), host=str(machine.get("Host") or "?"))

    retried = [placed(r) for r in retried]
    runs.sort(key=lambda r: (r.started, r.item, r.subtask))
    retried.sort(key=lambda r: (r.started, r.item, r.subtask))
    failures.sort(key=lambda f: f.item)
    skipped.sort(key=lambda s: (s["item"], s["subtask"]))
    blocked.sort(key=lambda b: (b.state, b.item))
    return RunReport(queue.table, items, subtasks, runs, workers, run_cost(worker_spans(workers)), failures,
                     blocked, skipped, retried, attempts, retries)


# -- the trace -----------------------------------------------------------------------------

def write_trace(report: RunReport, out: io.TextIOBase | Any) -> None:
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(TRACE_COLUMNS)
    for run in report.runs:
        writer.writerow(run.trace_row())
    for never in report.skipped:  # `--on-failure stop`: sub-tasks that never ran, as such
        writer.writerow([never.get(c, "") for c in TRACE_COLUMNS])


# -- the HTML report ------------------------------------------------------------------------

COLOURS = {"done": "#2e7d32", "failed": "#c62828", RETRIED: "#ef6c00", "running": "#1565c0", "todo": "#9e9e9e"}
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
TIMELINE_WIDTH = 1000
LANE_HEIGHT = 18
LABEL_WIDTH = 190


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _money(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"${value:.6f}" if value < 0.01 else f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def _hours(value: float) -> str:
    """Hours in one fixed format (never ``4.667e-05``): small amounts in seconds."""
    return f"{value:,.3f} h" if value >= 0.01 else f"{value * 3600:.1f} s"


def _seconds(value: float) -> str:
    return duration(value) if value >= 60 else f"{value:.1f}s"


def _table(columns: Iterable[str], rows: Iterable[Iterable[object]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def timeline_svg(report: RunReport) -> str:
    """One lane per worker, one bar per attempt of a sub-task, coloured by outcome (Nextflow's
    timeline); earlier attempts (retried) are outlined."""
    span = report.span
    bars = report.bars
    lanes = sorted({r.worker for r in bars})
    if span is None or not lanes:
        return "<p>No sub-task has run yet.</p>"
    t0, t1 = span
    axis = TimeAxis.of(t0, t1, bars)
    by_lane: dict[str, list[SubtaskRun]] = defaultdict(list)
    for run in bars:
        by_lane[run.worker].append(run)
    binned = len(bars) > TIMELINE_MOST_BARS
    # binned: one row per lane (its busy slots over time); else as many rows as runs overlap
    rows = {lane: [by_lane[lane]] if binned else _rows(by_lane[lane]) for lane in lanes}
    height = LANE_HEIGHT * sum(len(r) for r in rows.values()) + 24
    parts = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{TIMELINE_WIDTH}" height="{height}" '
             f'role="img" aria-label="timeline">']
    lifecycle = {str(w.get("Worker_ID")): str(w.get("Lifecycle") or "") for w in report.workers}
    top = 0
    for n, lane in enumerate(lanes):
        shade = ' fill="#f5f5f5"' if n % 2 else ' fill="#ffffff"'
        first = by_lane[lane][0]
        # the machine first (what is paid for), the worker process under it in the tooltip
        kind = ", ".join(dict.fromkeys(k for k in (first.instance_type, lifecycle.get(lane, "")) if k and k != "?"))
        name = f"{first.instance} ({kind})" if kind else first.instance
        parts.append(f'<g class="lane" data-worker="{_e(lane)}" data-instance="{_e(first.instance)}">'
                     f'<rect x="0" y="{top}" width="{TIMELINE_WIDTH}" '
                     f'height="{LANE_HEIGHT * len(rows[lane])}"{shade}/><text x="0" y="{top + 13}" class="label">'
                     f'{_e(name[:30])}<title>{_e(f"{name}, worker {lane}")}</title></text>')
        if binned:
            parts.append(_occupancy(by_lane[lane], top, axis))
        else:
            parts += [_bar_of(run, top + row * LANE_HEIGHT, axis)
                      for row, runs in enumerate(rows[lane]) for run in runs]
        parts.append("</g>")
        top += LANE_HEIGHT * len(rows[lane])
    axis_y = top + 16
    parts.append(f'<text x="0" y="{axis_y}" class="axis">{_e(iso(t0)[:19].replace("T", " "))} UTC</text>')
    for start, end in axis.gaps:  # a break in the axis: a long idle time cut short
        x = axis.x(start)
        parts.append(f'<g class="break"><rect x="{x:.1f}" y="0" width="{BREAK_PX}" height="{top + 4}" '
                     f'fill="#eeeeee"/><text x="{x + BREAK_PX / 2:.1f}" y="{axis_y}" class="axis" '
                     f'text-anchor="middle">≈<title>{_e(f"nothing ran for {_seconds(end - start)}")}</title>'
                     f'</text></g>')
    for offset in axis_ticks(t1 - t0):
        if axis.inside_gap(t0 + offset):
            continue
        x = axis.x(t0 + offset)
        parts.append(f'<line class="tick" x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{top + 4}" stroke="#bdbdbd" '
                     f'stroke-width="0.5"/><text x="{x:.1f}" y="{axis_y}" class="axis" text-anchor="middle">'
                     f'+{_e(_seconds(offset))}</text>')
    parts.append("</svg>")
    return "".join(parts)


TIMELINE_MOST_BARS = 3000  # more attempts than this: each lane shows its busy slots over time instead
BIN_PX = 2  # the width of one column of a binned lane


def _occupancy(runs: list[SubtaskRun], top: float, axis: TimeAxis) -> str:
    """A lane with too many runs for a bar each: how many of them ran at each moment (columns of
    BIN_PX pixels, scaled to the lane's busiest column), those that failed or were retried in red
    on top. A difference array: one step per run whatever its length."""
    columns = (TIMELINE_WIDTH - LABEL_WIDTH) // BIN_PX + 2
    steps = {"all": [0] * (columns + 1), "bad": [0] * (columns + 1)}
    for run in runs:
        first = int((axis.x(run.started) - LABEL_WIDTH) // BIN_PX)
        last = max(first, int((axis.x(run.ended) - LABEL_WIDTH) // BIN_PX))
        for kind in ("all", "bad") if run.status in (SubtaskStatus.FAILED.value, RETRIED) else ("all",):
            steps[kind][max(0, first)] += 1
            steps[kind][min(columns, last + 1)] -= 1
    counts = {kind: list(accumulate(diff[:columns])) for kind, diff in steps.items()}
    most = max(counts["all"]) or 1
    bottom = top + LANE_HEIGHT - 1
    return "".join(
        f'<path class="busy {kind}" d="{_area(counts[kind], most, bottom)}" fill="{colour}">'
        f'<title>{_e(f"runs at once (at most {most})")}</title></path>'
        for kind, colour in (("all", COLOURS["done"]), ("bad", COLOURS["failed"])) if any(counts[kind]))


def _area(counts: list[int], most: int, bottom: float) -> str:
    """An SVG path outlining a step chart of ``counts`` (a point only where the height changes)."""
    path, level = [f"M{LABEL_WIDTH},{bottom}"], bottom
    for c, n in enumerate([*counts, 0]):
        y = round(bottom - (LANE_HEIGHT - 3) * n / most, 1)
        if y != level:
            x = LABEL_WIDTH + c * BIN_PX
            path.append(f"L{x},{level}L{x},{y}")
            level = y
    return "".join(path) + "Z"


BREAK_PX = 24  # the width of a break in the time axis
GAP_SECONDS = 300.0  # idle time (no run in progress) longer than this, and than a quarter of the span, is cut


@dataclass(frozen=True)
class TimeAxis:
    """Where a moment falls on the timeline: linear, except that idle gaps (no run in progress)
    longer than GAP_SECONDS and a quarter of the span are cut to BREAK_PX, so a rerun hours after
    the first run does not squash both into slivers."""

    t0: float
    gaps: tuple[tuple[float, float], ...]
    scale: float  # pixels per second outside the gaps

    @classmethod
    def of(cls, t0: float, t1: float, runs: Iterable[SubtaskRun]) -> TimeAxis:
        busy: list[list[float]] = []
        for start, end in sorted((r.started, max(r.started, r.ended)) for r in runs):
            if busy and start <= busy[-1][1]:
                busy[-1][1] = max(busy[-1][1], end)
            else:
                busy.append([start, end])
        edges = [t0, *(t for segment in busy for t in segment), t1]
        threshold = max(GAP_SECONDS, 0.25 * (t1 - t0))
        gaps = tuple((a, b) for a, b in zip(edges[::2], edges[1::2], strict=False) if b - a > threshold)
        visible = (t1 - t0) - sum(b - a for a, b in gaps)
        width = TIMELINE_WIDTH - LABEL_WIDTH - 10 - BREAK_PX * len(gaps)
        return cls(t0, gaps, width / max(visible, 1e-6))

    def inside_gap(self, t: float) -> bool:
        return any(a < t < b for a, b in self.gaps)

    def x(self, t: float) -> float:
        cut, breaks = 0.0, 0
        for a, b in self.gaps:
            if t >= b:
                cut, breaks = cut + (b - a), breaks + 1
            elif t > a:
                t = a
                break
        return LABEL_WIDTH + (t - self.t0 - cut) * self.scale + BREAK_PX * breaks


def axis_ticks(span: float, most: int = 8) -> list[float]:
    """Offsets from the start for the time axis: a round step (1, 2, 5 × 10^k seconds, or whole
    minutes or hours) that gives at most ``most`` ticks."""
    steps = [round(n * 10.0 ** k, 1) for k in range(-1, 2) for n in (1, 2, 5)] + [30.0]
    steps += [60.0 * m for m in (1, 2, 5, 10, 15, 30)]
    steps += [3600 * h for h in (1, 2, 3, 6, 12, 24, 48, 96)]
    step = next((s for s in sorted(steps) if span / s <= most), span)
    return [round(step * n, 1) for n in range(1, int(span / step + 1e-9) + 1)]


def _rows(runs: list[SubtaskRun]) -> list[list[SubtaskRun]]:
    """A worker's runs in as few rows as they fit without overlapping (a worker with several
    slots runs several at once): each run goes to the first row free at its start."""
    rows: list[list[SubtaskRun]] = []
    for run in sorted(runs, key=lambda r: r.started):
        free = next((row for row in rows if row[-1].ended <= run.started), None)
        if free is None:
            rows.append([run])
        else:
            free.append(run)
    return rows


def _bar_of(run: SubtaskRun, y: float, axis: TimeAxis) -> str:
    x = axis.x(run.started)
    width = max(1.5, axis.x(run.ended) - x)
    colour = COLOURS.get(run.status, "#6d4c41")
    tip = (f"{run.item} {run.name} ({run.status}, exit {run.exit}) {_seconds(run.wall_s)}, "
           f"{run.peak_rss_mb} MB, wrote {run.output_bytes:,} bytes, {run.command[:120]}")
    if run.status == RETRIED:  # an earlier attempt: what the record keeps of it
        tip = (f"{run.item} {run.name} attempt {run.attempt} (exit {'?' if run.exit is None else run.exit}; "
               f"retried) {_seconds(run.wall_s)}, {run.command[:120]}")
    outline = ' stroke="#b71c1c" stroke-width="1.5" stroke-dasharray="3,2"' if run.status == RETRIED else ""
    bar = (f'<rect class="run {_e(run.status)}" x="{x:.1f}" y="{y + 2}" width="{width:.1f}" '
           f'height="{LANE_HEIGHT - 4}" fill="{colour}"{outline} data-item="{_e(run.item)}" '
           f'data-subtask="{_e(run.subtask)}" data-attempt="{run.attempt}"><title>{_e(tip)}</title></rect>')
    label = f"{run.item} {run.label or run.subtask}"
    if width >= 7 * len(label) + 6:  # a readable label where the bar is wide enough
        bar += (f'<text x="{x + 3:.1f}" y="{y + 13}" class="barlabel" fill="#ffffff">{_e(label)}'
                f'<title>{_e(tip)}</title></text>')
    return bar


def _bar(value: float, most: float) -> str:
    width = 0 if most <= 0 else max(1, round(120 * value / most))
    return f'<svg width="122" height="10"><rect width="{width}" height="10" fill="#5c6bc0"/></svg>'


def distribution_table(groups: Mapping[str, list[SubtaskRun]]) -> str:
    most = max((r.peak_rss_mb for runs in groups.values() for r in runs), default=0.0)
    head = ["group", "runs", "wall p50", "wall p95", "wall max", "CPU p50", "CPU max", "peak MB p50",
            "peak MB p95", "peak MB max", ""]
    rows = []
    for name, runs in groups.items():
        wall, cpu, rss = [r.wall_s for r in runs], [r.cpu_s for r in runs], [r.peak_rss_mb for r in runs]
        cells = [name, len(runs), _seconds(percentile(wall, .5)), _seconds(percentile(wall, .95)),
                 _seconds(max(wall)), _seconds(percentile(cpu, .5)), _seconds(max(cpu)),
                 f"{percentile(rss, .5):.1f}", f"{percentile(rss, .95):.1f}", f"{max(rss):.1f}"]
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + f"<td>{_bar(max(rss), most)}</td></tr>")
    return ('<table class="dist"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def render_html(report: RunReport, meta: Mapping[str, str] | None = None) -> str:
    """The report page; ``meta``: how it was made (command line, version, endpoint, who, when)."""
    summary = report.summary()
    sizing = report.sizing
    ran = list(report.runs)
    slowest = sorted(ran, key=lambda r: r.wall_s, reverse=True)[:TOP]
    hungry = sorted(ran, key=lambda r: r.peak_rss_mb, reverse=True)[:TOP]
    facts = [
        ("items", ", ".join(f"{n} {s}" for s, n in report.items.items() if n) or "none"),
        ("sub-tasks", ", ".join(f"{n} {s}" for s, n in report.subtasks.items() if n) or "none"),
        ("sub-task runs", f"{len(report.runs)} ({report.attempts} attempts, {report.retries} retries)"),
        ("workers", len(report.workers)),
        ("span", "-" if summary["span_s"] is None else f"{summary['start']} → {summary['end']} "
                                                        f"({_seconds(summary['span_s'])})"),
        ("CPU", _hours(report.cpu_hours)),
        ("instance time", _hours(report.cost.instance_hours)),
        ("cost", _money(report.cost.cost_usd) + (f" (+ {report.cost.unknown_price_hours:.2f} instance-hours at an "
                                                 "unknown price)" if report.cost.unknown_price_hours else "")),
        ("utilization", "-" if report.cost.utilization is None else f"{100 * report.cost.utilization:.1f} % of "
                                                                     "paid slot-time ran sub-tasks"),
    ]
    fits = ", ".join(sizing["smallest_types"]) if sizing["smallest_types"] else "none of the listed types"  # type: ignore[arg-type]
    busy = sorted(r.cpu_s / r.wall_s for r in ran if r.wall_s > 0)  # cores a run kept busy
    cores = f"{busy[min(len(busy) - 1, int(0.95 * len(busy)))]:.2f}" if busy else "0"
    hint = ("No sub-task has run yet: nothing to size." if not ran else
            f"Peak resident memory per sub-task: p95 {sizing['p95_mb']} MB, max {sizing['max_mb']} MB. "
            f"{sizing['slots']} at once with 20 % headroom need {sizing['needed_gib']} GiB: smallest fitting "
            f"types {fits}. CPU: a run keeps p95 {cores} cores busy (its CPU time over its wall time), so "
            f"{sizing['slots']} at once need about {float(cores) * int(sizing['slots']):.1f} vCPUs "  # type: ignore[call-overload]
            "(fewer: sub-tasks wait for the CPU; more: the instance idles). Peak memory is the largest resident "
            "set of the sub-task's process tree (wait4's ru_maxrss, the largest single process among those "
            "waited for); page cache and memory of processes that escaped and were killed are not counted.")
    failures = _table(["item", "task", "sub-task", "exit", "attempts", "last error", "stderr (last line)", "its logs"],
                      [[f.item, f.task, f.subtask, "" if f.exit_code is None else f.exit_code, f.attempts or "",
                        f.error, f.stderr_tail, f.logs] for f in report.failures]) \
        if report.failures else "<p>None.</p>"
    blocked = _table(["item", "task", "state", "blocked by"],
                     [[b.item, b.task, b.state, b.because] for b in report.blocked]) \
        if report.blocked else "<p>None.</p>"
    run_columns = ["item", "sub-task", "status", "exit", "worker", "wall", "CPU", "peak MB", "cost", "command"]

    def run_rows(runs: list[SubtaskRun]) -> list[list[object]]:
        return [[r.item, r.name, r.status, r.exit, r.worker, _seconds(r.wall_s), _seconds(r.cpu_s),
                 r.peak_rss_mb, _money(r.cost_usd), r.command[:100]] for r in runs]

    timeline_note = (
        f"One lane per worker: {len(report.bars):,} attempts are too many for a bar each, so each lane shows how "
        "many ran at once over time (failed or retried ones in red); the trace (--trace) has every run."
        if len(report.bars) > TIMELINE_MOST_BARS else
        f"One lane per worker, one bar per attempt of a sub-task (earlier attempts that were retried outlined, "
        f"the latest {MAX_EARLIER_ATTEMPTS} of each).")
    legend = " ".join(f'<span class="key" style="background:{c}"></span>{_e(s)}' for s, c in COLOURS.items())
    unsuccessful = report.items.get("failed", 0) + report.items.get("upstream_failed", 0)
    live = sum(report.items.get(s.value, 0) for s in ItemState if s.live)
    banner = (f'<p class="banner failed">{unsuccessful} items did not succeed (see Failures)</p>' if unsuccessful
              else f'<p class="banner running">{live} items not ended yet</p>' if live
              else '<p class="banner ok">Every item ended done</p>' if report.runs else "")
    about = _table(["", ""], list((meta or {}).items()), "facts") if meta else ""
    task_columns = ["item", "sub-task", "status", "exit", "attempt", "instance", "worker", "queued", "start (UTC)",
                    "wall", "CPU", "%CPU", "peak MB", "cost", "command"]
    task_rows = [[r.item, r.name, r.status, r.exit, r.attempt, r.instance, r.worker,
                  "" if r.queue_wait_s is None else _seconds(r.queue_wait_s), r.start[:19].replace("T", " "),
                  _seconds(r.wall_s), _seconds(r.cpu_s), f"{r.cpu_percent:.0f}", r.peak_rss_mb, _money(r.cost_usd),
                  r.command[:80]] for r in ran[:TASK_TABLE_ROWS]]
    capped = (f"<p>The first {TASK_TABLE_ROWS:,} of {len(ran):,} runs by start; the trace (--trace) has every "
              "one.</p>" if len(ran) > TASK_TABLE_ROWS else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>PyAnamo run report: {_e(report.table)}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#212121;max-width:1100px}}
h1{{font-size:22px}} h2{{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{border:1px solid #ddd;padding:3px 7px;text-align:left;
vertical-align:top}} th{{background:#f5f5f5}} table.facts td:first-child{{width:140px;font-weight:600}}
table.facts td:last-child{{min-width:520px}} table.facts thead{{display:none}}
.timeline .label{{font-size:11px;fill:#424242}} .timeline .axis{{font-size:11px;fill:#757575}}
.timeline .barlabel{{font-size:10px}}
.key{{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}}
td{{max-width:420px;overflow-wrap:anywhere}}
.banner{{padding:6px 10px;font-weight:600;color:#fff}} .banner.ok{{background:#2e7d32}}
.banner.failed{{background:#c62828}} .banner.running{{background:#1565c0}}
</style></head><body>
<h1>PyAnamo run report: {_e(report.table)}</h1>
{banner}
<h2>Summary</h2>
{_table(["", ""], facts, "facts")}
{about}
<h2>Timeline</h2>
<p>{timeline_note} {legend}</p>
{timeline_svg(report)}
<h2>Wall time, CPU and peak memory by sub-task</h2>
{distribution_table(report.groups("subtask"))}
<h2>… by program (the command's first word)</h2>
{distribution_table(report.groups("program"))}
<h2>Right-sizing</h2>
<p>{_e(hint)}</p>
<h2>Failures ({len(report.failures)})</h2>
{failures}
<h2>Items that never ran ({len(report.blocked)})</h2>
<p>Items that wait for other items: upstream_failed when one of those ended failed or cancelled (reset it
to run them), waiting while one of those has not ended.</p>
{blocked}
<h2>Slowest sub-tasks</h2>
{_table(run_columns, run_rows(slowest))}
<h2>Most memory-hungry sub-tasks</h2>
{_table(run_columns, run_rows(hungry))}
<h2>Every sub-task run ({len(ran):,})</h2>
<p>Queued: from the item's import to the run's start. %CPU: its CPU time over its wall time.</p>
{capped}
{_table(task_columns, task_rows)}
</body></html>
"""
