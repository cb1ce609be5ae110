"""Where a run stands, from the state index alone (Query per shard; never a Scan)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .model import from_dynamo
from .queue import TaskQueue
from .schema import Attr, ItemState

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

    @property
    def total(self) -> int:
        return sum(self.items.values())

    @property
    def finished(self) -> bool:
        return self.items[ItemState.TODO.value] == 0 and self.items[ItemState.LOCKED.value] == 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_items"] = self.total
        return data


def gather(queue: TaskQueue) -> StatusReport:
    now = time.time()
    attributes = [Attr.ITEM_ID, Attr.TASK_ID, Attr.INSTANCE_ID, Attr.LEASE_EXPIRY,
                  Attr.SUBTASK_COUNT, Attr.SUBTASKS_DONE, Attr.LAST_ERROR]
    report = StatusReport(
        table=queue.table,
        items={s.value: 0 for s in ItemState},
        subtasks_done=0,
        subtasks_total=0,
        instances={},
    )
    for state in ItemState:
        for row in queue.index_rows(state, attributes):
            data = from_dynamo(row)
            report.items_read += 1
            report.items[state.value] += 1
            count = int(data.get(Attr.SUBTASK_COUNT, 1))
            report.subtasks_total += count
            report.subtasks_done += count if state is ItemState.DONE else int(data.get(Attr.SUBTASKS_DONE, 0))
            if state is ItemState.LOCKED:
                load = report.instances.setdefault(str(data.get(Attr.INSTANCE_ID, "?")), InstanceLoad())
                load.held += 1
                if float(data.get(Attr.LEASE_EXPIRY, 0)) < now:
                    load.expired += 1
            elif state is ItemState.FAILED:
                report.failed.append(FailedItem(
                    data[Attr.ITEM_ID], str(data.get(Attr.TASK_ID, "")), str(data.get(Attr.LAST_ERROR, ""))))
    report.failed.sort(key=lambda f: f.item_id)
    return report


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
    if report.instances:
        held = Table(title="items held per instance", title_justify="left")
        held.add_column("instance")
        held.add_column("held", justify="right")
        held.add_column("lease expired", justify="right")
        for instance, load in sorted(report.instances.items()):
            held.add_row(Text(instance), str(load.held), str(load.expired))
        parts.append(held)
    if report.failed:
        failed = Table(title=f"failed items ({len(report.failed)})", title_justify="left")
        for column in ("item", "task", "last error"):
            failed.add_column(column, overflow="fold")
        for entry in report.failed[:MAX_FAILED_SHOWN]:
            failed.add_row(Text(entry.item_id), Text(entry.task_id), Text(entry.error))
        parts.append(failed)
        if len(report.failed) > MAX_FAILED_SHOWN:
            parts.append(f"… and {len(report.failed) - MAX_FAILED_SHOWN} more (see --json)")
        parts.append(Text(f"requeue them with: pyanamo reset {report.table} --state failed --subtasks"))
    return Group(*parts)
