"""Where a run stands, from the state index alone (Query per shard; never a Scan)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .accounting import cost_to_finish, parse_time, run_cost, worker_spans
from .dependencies import stuck
from .errors import MalformedItem
from .fleet import BOOT_FAILED, boot_breaker
from .gateway import TableGateway
from .model import Item, from_dynamo
from .schema import CLAIMABLE_STATES, ENDED_STATES, LIVE_STATES, Attr, ItemState, SubtaskStatus
from .terminal import cell, printable

MAX_FAILED_SHOWN = 20


@dataclass
class InstanceLoad:
    held: int = 0
    expired: int = 0


@dataclass
class FailedItem:
    item_id: str
    task_id: str
    error: str


@dataclass
class StatusReport:
    table: str
    items: dict[str, int]
    subtasks_done: int
    subtasks_total: int
    instances: dict[str, InstanceLoad]
    failed: list[FailedItem] = field(default_factory=list)
    items_read: int = 0
    rate_per_min: float | None = None  # items finished per minute, over the watch's window
    eta_s: float | None = None
    workers: int = 0  # worker records: every worker that ran on this table
    instance_hours: float = 0.0
    cost_usd: float | None = None  # so far; None when no worker's price is known
    completion_per_hour: float | None = None  # items ended per hour since the first worker started
    cost_to_finish_usd: float | None = None  # at the cost per ended item so far
    boot_failures: int = 0  # instances whose boot failed (``fleet.boot_failed`` records)
    unleased: int = 0  # locked items without a lease: never reclaimed (``pyanamo repair``)
    stuck: list[str] = field(default_factory=list)  # waiting items nothing will release now
    stuck_on: list[str] = field(default_factory=list)  # the missing items they wait for
    warnings: list[str] = field(default_factory=list)  # what workers recorded (a refused permission)
    scaler_paused: str | None = None  # why the backlog scaler does not raise the fleet (failed boots)
    last_boot_failure: str | None = None

    @property
    def total(self) -> int:
        return sum(self.items.values())

    @property
    def ended(self) -> int:
        """Items that will not run again by themselves: done, failed or cancelled."""
        return sum(self.items[s.value] for s in ENDED_STATES)

    @property
    def unsuccessful(self) -> int:
        """Items that failed, or never ran because an item they wait for failed (exit 3)."""
        return self.items[ItemState.FAILED.value] + self.items[ItemState.UPSTREAM_FAILED.value]

    @property
    def finished(self) -> bool:
        """Nothing left that can run: no live item, or only waiting ones that are stuck."""
        live = sum(self.items[s.value] for s in LIVE_STATES)
        return live == 0 or (live == self.items[ItemState.WAITING.value] == len(self.stuck))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_items"] = self.total
        return data


def _number(value: Any, default: float = 0.0) -> float:
    """A stored number; a malformed one (hand-edited, another tool) reads as ``default``."""
    return float(value) if isinstance(value, (int, Decimal)) and not isinstance(value, bool) else default


def _count(value: Any, default: int) -> int:
    return int(_number(value, default))


def gather(queue: TableGateway) -> StatusReport:
    attributes = [Attr.ITEM_ID, Attr.TASK_ID, Attr.INSTANCE_ID, Attr.LEASE_EXPIRY,
                  Attr.SUBTASK_COUNT, Attr.SUBTASKS_DONE, Attr.LAST_ERROR]
    report = StatusReport(
        table=queue.table,
        items={s.value: 0 for s in ItemState},
        subtasks_done=0,
        subtasks_total=0,
        instances={},
    )
    # The states are read one after another, so an item that changes state meanwhile is seen in
    # two of them: each item counts once, in the state it was seen in last (the newer reading).
    latest: dict[str, tuple[ItemState, dict[str, Any]]] = {}
    for state in ItemState:
        for row in queue.index_rows(state, attributes):
            data = from_dynamo(row)
            report.items_read += 1
            latest[str(data.get(Attr.ITEM_ID))] = (state, data)
    now = queue.now()  # on the endpoint's clock, known from the reads above
    for state, data in latest.values():
        report.items[state.value] += 1
        count = _count(data.get(Attr.SUBTASK_COUNT), 1)
        report.subtasks_total += count
        report.subtasks_done += count if state is ItemState.DONE else _count(data.get(Attr.SUBTASKS_DONE), 0)
        if state is ItemState.LOCKED:
            load = report.instances.setdefault(str(data.get(Attr.INSTANCE_ID, "?")), InstanceLoad())
            load.held += 1
            if Attr.LEASE_EXPIRY not in data:
                report.unleased += 1
            if _number(data.get(Attr.LEASE_EXPIRY)) < now:
                load.expired += 1
        elif state is ItemState.FAILED:
            report.failed.append(FailedItem(
                str(data[Attr.ITEM_ID]), str(data.get(Attr.TASK_ID, "")), str(data.get(Attr.LAST_ERROR, ""))))
    report.failed.sort(key=lambda f: f.item_id)
    _add_cost(report, queue, now)
    if report.items[ItemState.WAITING.value] and not any(
            report.items[s.value] for s in CLAIMABLE_STATES):
        found = stuck(queue)
        report.stuck, report.stuck_on = list(found.items), list(found.missing)
    return report


def _add_cost(report: StatusReport, queue: TableGateway, now: float) -> None:
    """Instance-hours and cost so far from the worker records; the completion rate and the
    estimated cost to finish."""
    records = list(queue.worker_records())
    boots = sorted((r for r in records if r.get("Record_Type") == BOOT_FAILED), key=lambda r: str(r.get("Started")))
    if boots:
        report.boot_failures = len(boots)
        report.last_boot_failure = f"{boots[-1].get('InstanceID', '?')}: {boots[-1].get('Last_Line', '')}"
    report.warnings = sorted({str(r["Warning"]) for r in records if r.get("Warning")})
    report.scaler_paused = boot_breaker(records, now)
    spans = worker_spans(r for r in records if r.get("Record_Type") != BOOT_FAILED)
    if not spans:
        return
    cost = run_cost(spans)
    report.workers = len(spans)
    report.instance_hours = round(cost.instance_hours, 4)
    report.cost_usd = None if cost.cost_usd is None else round(cost.cost_usd, 6)
    hours = (now - min(s.started for s in spans)) / 3600
    report.completion_per_hour = round(report.ended / hours, 2) if hours > 0 else None
    remaining = report.total - report.ended
    finish = cost_to_finish(cost.cost_usd, report.ended, remaining)
    report.cost_to_finish_usd = None if finish is None else round(finish, 6)


def cost_line(report: StatusReport) -> str:
    """Workers, instance-hours and cost: priced only where a price is known (EC2's, or the
    worker's --price-per-hour); elsewhere "not priced", never a cost of $0."""
    priced = bool(report.cost_usd)
    cost = f"cost so far ${report.cost_usd:,.4f}" if priced else "not priced"
    finish = f"; about ${report.cost_to_finish_usd:,.4f} to finish" \
        if priced and report.cost_to_finish_usd is not None and not report.finished else ""
    return f"workers: {report.workers}, {report.instance_hours:.4g} instance-hours, {cost}{finish}"


class RateWindow:
    """The completion rate over the last ``window`` seconds of a watch, and the time to finish
    at that rate (the whole watch until it is that long)."""

    def __init__(self, window: float = 300.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, report: StatusReport, now: float) -> None:
        self._samples.append((now, report.ended))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        first_time, first_ended = self._samples[0]
        if now - first_time <= 0:
            report.rate_per_min = None
            return
        per_second = (report.ended - first_ended) / (now - first_time)
        report.rate_per_min = round(per_second * 60, 2)
        remaining = report.total - report.ended
        report.eta_s = round(remaining / per_second, 1) if per_second > 0 else None


def progress_line(report: StatusReport) -> str | None:
    """One rate and one time to finish: over the last minutes of a watch, or else since the
    first worker started (None before anything is known)."""
    if report.total == 0:
        return None
    if report.rate_per_min is not None:
        rate, eta, since = report.rate_per_min, report.eta_s, "last 5 min"
    elif report.completion_per_hour:
        rate, since = round(report.completion_per_hour / 60, 2), "since the first worker started"
        eta = round((report.total - report.ended) / (report.completion_per_hour / 3600), 1)
    elif report.finished:
        return "rate: -; to finish: done"
    else:
        return None
    left = "done" if report.finished else "unknown (nothing finished lately)" if eta is None else duration(eta)
    return f"rate: {rate:g} items/min ({since}); to finish: {left}"


def plain_line(report: StatusReport, now: float) -> str:
    """One line per refresh, for a watch whose output is a file or a pipe."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    counts = " ".join(f"{state} {count}" for state, count in report.items.items())
    return (f"{stamp} {counts} | {report.ended}/{report.total} items ended, sub-tasks "
            f"{report.subtasks_done}/{report.subtasks_total} done | {progress_line(report) or 'rate: -'}")


def render(report: StatusReport) -> Group:
    # Item IDs, task IDs, instance names and error lines are user text: never read as markup.
    items = Table(title=f"PyAnamo table {escape(report.table)}", title_justify="left")
    for column in ("state", "items", "share"):
        items.add_column(column, justify="right" if column != "state" else "left")
    for state, count in report.items.items():
        share = f"{100 * count / report.total:.1f}%" if report.total else "-"
        items.add_row(state, str(count), share)
    items.add_row("total", str(report.total), "", style="bold")
    done_share = (
        f" ({100 * report.subtasks_done / report.subtasks_total:.1f}%)" if report.subtasks_total else ""
    )
    parts: list[Any] = [items, f"sub-tasks done: {report.subtasks_done}/{report.subtasks_total}{done_share}"]
    progress = progress_line(report)
    if progress is not None:
        parts.append(progress)
    if report.workers:
        parts.append(cost_line(report))
    if report.boot_failures:
        parts.append(cell(f"failed boots: {report.boot_failures} (last: {report.last_boot_failure})"))
    if report.unleased:
        parts.append(Text(f"{report.unleased} locked items have no lease and can never be reclaimed: "
                          f"pyanamo repair {report.table} --apply"))
    if report.stuck:
        waits = f" (not in the table: {', '.join(report.stuck_on[:5])})" if report.stuck_on else ""
        parts.append(cell(f"{len(report.stuck)} waiting items can never run as things stand: they wait for "
                          f"items that will not end{waits}; import those, or cancel them"))
    if report.scaler_paused:
        parts.append(Text(f"the scaler does not raise the fleet: {report.scaler_paused}"))
    for warning in report.warnings:
        parts.append(cell(f"warning from a worker: {warning}"))
    if report.instances:
        held = Table(title="items held per instance", title_justify="left")
        held.add_column("instance")
        held.add_column("held", justify="right")
        held.add_column("lease expired", justify="right")
        for instance, load in sorted(report.instances.items()):
            held.add_row(cell(instance), str(load.held), str(load.expired))
        parts.append(held)
    if report.failed:
        failed = Table(title=f"failed items ({len(report.failed)})", title_justify="left")
        for column in ("item", "task", "last error"):
            failed.add_column(column, overflow="fold")
        for entry in report.failed[:MAX_FAILED_SHOWN]:
            failed.add_row(cell(entry.item_id), cell(entry.task_id), cell(entry.error))
        parts.append(failed)
        if len(report.failed) > MAX_FAILED_SHOWN:
            parts.append(f"… and {len(report.failed) - MAX_FAILED_SHOWN} more (see --json)")
        parts.append(Text(f"requeue them with: pyanamo reset {report.table} --state failed --subtasks"))
    return Group(*parts)


# -- what is running where (`pyanamo ps`) ----------------------------------------------------

@dataclass(frozen=True)
class RunningItem:
    item_id: str
    task_id: str
    instance: str
    worker: str
    subtask: str
    script: str
    claimed: str
    elapsed_s: float | None
    lease_left_s: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def running(queue: TableGateway, now: float | None = None) -> list[RunningItem]:
    """One entry per locked item: where it runs, which sub-task, since when (state index, then
    BatchGetItem for the locked items only)."""
    now = queue.now() if now is None else now
    entries = []
    for row in queue.rows_in_state(ItemState.LOCKED):
        try:
            item = Item.from_row(row)
        except MalformedItem:
            continue  # its worker fails it at once; status lists it then
        if item.state is not ItemState.LOCKED:
            continue  # it finished since the index was read
        current = next((s for s in item.subtasks if s.status is SubtaskStatus.RUNNING), None)
        claimed = parse_time(item.lock_date)
        entries.append(RunningItem(
            item_id=item.item_id, task_id=item.task_id, instance=item.instance_id or "?",
            worker=item.worker_id or item.instance_id or "?",
            subtask=current.name if current else "-", script=current.script if current else "",
            claimed=item.lock_date or "?", elapsed_s=None if claimed is None else round(now - claimed, 1),
            lease_left_s=None if item.lease_expiry is None else round(item.lease_expiry - now, 1),
        ))
    entries.sort(key=lambda e: (e.instance, e.worker, e.item_id))
    return entries


def duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s`` or ``12s``: how long, at a glance."""
    if seconds is None:
        return "?"
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


RUNNING_COLUMNS = ("item", "task", "instance", "worker", "subtask", "claimed", "elapsed_s", "lease_left_s", "script")


def running_lines(entries: list[RunningItem]) -> Iterator[str]:
    """``ps`` piped or redirected: a header and one tab-separated line per running item (user
    text made printable: a tab or newline in it is shown escaped, never a column break)."""
    yield "\t".join(RUNNING_COLUMNS)
    for e in entries:
        values = (e.item_id, e.task_id, e.instance, e.worker, e.subtask, e.claimed,
                  "" if e.elapsed_s is None else f"{e.elapsed_s:.0f}",
                  "" if e.lease_left_s is None else f"{e.lease_left_s:.0f}", e.script)
        yield "\t".join(printable(str(v)).replace("\t", "\\t") for v in values)


def render_running(table: str, entries: list[RunningItem]) -> Table | Text:
    if not entries:
        return Text(f"nothing is running in table {table}")
    listing = Table(title=f"running in {escape(table)}: {len(entries)} items", title_justify="left")
    for column in ("item", "task", "instance", "worker", "sub-task", "claimed (UTC)", "elapsed", "lease left"):
        listing.add_column(column, overflow="fold")
    for e in entries:
        lease = duration(e.lease_left_s) if (e.lease_left_s or 0) >= 0 else "expired"
        listing.add_row(cell(e.item_id), cell(e.task_id), cell(e.instance), cell(e.worker),
                        cell(f"{e.subtask} {e.script[:40]}".strip()), e.claimed.replace("T", " ")[:19],
                        duration(e.elapsed_s), lease)
    return listing
