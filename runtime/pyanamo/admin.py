"""Steering a run: `reset` puts items back to todo (`--rerun`: finished ones from the start),
`cancel` stops items for good, `logs` shows what a sub-task printed. One selection (IDs, state,
taskID, instance, expired leases) serves all three."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .dependencies import block_dependents, settle, unblock_dependents
from .errors import MalformedItem, UsageError
from .model import Item
from .ports import ItemAdmin
from .runs import RunRecord
from .schema import INSTANCE_INDEX, TASK_INDEX, Attr, ItemState, SubtaskStatus


@dataclass(frozen=True)
class ResetFilter:
    item_ids: tuple[str, ...] = ()
    state: ItemState | None = None
    task_id: str | None = None
    instance_id: str | None = None
    expired: bool = False
    subtasks: bool = False
    rerun: bool = False

    @property
    def empty(self) -> bool:
        return not (self.item_ids or self.state or self.task_id or self.instance_id or self.expired)


@dataclass(frozen=True)
class ResetAction:
    item_id: str
    changed: bool
    message: str
    missing: bool = False  # named by ID, but there is no such item
    malformed: bool = False  # stored in a form PyAnamo cannot read: left as it is, named


def _ids(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    return (row[Attr.ITEM_ID]["S"] for row in rows)


def _instance_state(spec: ResetFilter) -> ItemState:
    """Which of an instance's items --instance means: those it holds, or (--rerun) those it
    finished; --state says otherwise."""
    return spec.state or (ItemState.DONE if spec.rerun else ItemState.LOCKED)


def _candidate_ids(queue: ItemAdmin, spec: ResetFilter) -> Iterable[str]:
    if spec.item_ids:
        return spec.item_ids
    if spec.instance_id:
        return _ids(queue.query_index(INSTANCE_INDEX.name, (Attr.INSTANCE_ID, spec.instance_id),
                                      (Attr.STATE, _instance_state(spec).value)))
    if spec.task_id:
        return _ids(queue.query_index(TASK_INDEX.name, (Attr.TASK_ID, spec.task_id)))
    state = ItemState.LOCKED if spec.expired else spec.state
    if state is None:  # _selected() refuses an empty selection before it gets here
        raise UsageError("say which items")
    return _ids(queue.index_rows(state, [Attr.ITEM_ID]))


def _matches(item: Item, spec: ResetFilter, now: float) -> bool:
    if spec.state and item.state is not spec.state:
        return False
    if spec.task_id and item.task_id != spec.task_id:
        return False
    if spec.instance_id and (item.instance_id != spec.instance_id or item.state is not _instance_state(spec)):
        return False
    if spec.expired and (item.state is not ItemState.LOCKED or item.lease_live(now)):
        return False
    return True


def _selected(queue: ItemAdmin, spec: ResetFilter, verb: str) -> Iterator[Item | str | MalformedItem]:
    """The items the selection names, read afresh; a named ID with no item yields the ID, an
    item that cannot be read yields why (the others are still handled)."""
    if spec.empty:
        raise UsageError(f"say which items to {verb}: ITEM_ID ..., --state, --task, --instance or --expired")
    for item_id in dict.fromkeys(_candidate_ids(queue, spec)):
        try:
            item = queue.get(item_id)
        except MalformedItem as exc:
            yield exc
            continue
        if item is None:
            if spec.item_ids:
                yield item_id
        elif _matches(item, spec, queue.now()):
            yield item


def _missing(item_id: str) -> ResetAction:
    return ResetAction(item_id, False, f"{item_id}: no such item", missing=True)


def _unreadable(item: str | MalformedItem) -> ResetAction:
    if isinstance(item, str):
        return _missing(item)
    return ResetAction(item.item_id, False, f"{item.item_id}: skipped, malformed: {item.reason} "
                                            f"(import it again with --replace)", malformed=True)


def reset(queue: ItemAdmin, spec: ResetFilter, *, dry_run: bool = False) -> list[ResetAction]:
    """Put matching items back to todo (``rerun``: finished items from their first sub-task).
    A live lease is only revoked for items named by ID."""
    one = _rerun_one if spec.rerun else _reset_one
    return [
        one(queue, item, spec, dry_run) if isinstance(item, Item) else _unreadable(item)
        for item in _selected(queue, spec, "reset")
    ]


def cancel(queue: ItemAdmin, spec: ResetFilter, *, dry_run: bool = False) -> list[ResetAction]:
    """Stop matching items for good: a cancelled item is claimed by no one until it is reset. A
    running item's worker notices within seconds (``lease.CANCEL_CHECK_SECONDS``) and stops the
    item's processes."""
    return [
        _cancel_one(queue, item, dry_run) if isinstance(item, Item) else _unreadable(item)
        for item in _selected(queue, spec, "cancel")
    ]


def _cancel_one(queue: ItemAdmin, item: Item, dry_run: bool) -> ResetAction:
    if item.state in (ItemState.DONE, ItemState.CANCELLED):
        return ResetAction(item.item_id, False, f"{item.item_id}: skipped, already {item.state.value}")
    detail = ""
    if item.lease_live(queue.now()):
        detail = f"; its worker on {item.instance_id} stops it within seconds"
    if dry_run:
        return ResetAction(item.item_id, True, f"would cancel {item.item_id}: {item.state.value} -> cancelled{detail}")
    if not queue.cancel(item):
        return ResetAction(item.item_id, False, f"{item.item_id}: skipped, it changed meanwhile")
    blocked = block_dependents(queue, item.item_id, item.dependents)
    if blocked:
        detail += f"; {len(blocked)} items that wait for it are now upstream_failed"
    return ResetAction(item.item_id, True, f"cancelled {item.item_id}: {item.state.value} -> cancelled{detail}")


def _waits(item: Item) -> str:
    return ", ".join(sorted(item.waiting_on)[:5]) + (" …" if len(item.waiting_on) > 5 else "")


def _unblocked(queue: ItemAdmin, item: Item, message: str) -> ResetAction:
    """``message``, after the items whose ``upstream_failed`` this item's end caused wait again."""
    waiting = unblock_dependents(queue, item)
    if waiting:
        message += f"; {len(waiting)} items that wait for it are waiting again"
    return ResetAction(item.item_id, True, message)


def _reset_blocked(queue: ItemAdmin, item: Item, dry_run: bool) -> ResetAction:
    """An upstream_failed item waits again (and is released at once if nothing blocks it now)."""
    message = (f"{'would reset' if dry_run else 'reset'} {item.item_id}: upstream_failed -> waiting "
               f"(for {_waits(item)})")
    if dry_run:
        return ResetAction(item.item_id, True, message)
    if queue.unblock(item.item_id) is None:
        return ResetAction(item.item_id, False, f"{item.item_id}: skipped, it changed meanwhile")
    settle(queue, [item.item_id])
    return _unblocked(queue, item, message)


def _reset_in_workflow(queue: ItemAdmin, item: Item, dry_run: bool) -> ResetAction:
    """reset and --rerun alike: an upstream_failed item waits again; a waiting one is left."""
    if item.state is ItemState.UPSTREAM_FAILED:
        return _reset_blocked(queue, item, dry_run)
    return ResetAction(item.item_id, False, f"{item.item_id}: already waiting (for {_waits(item)})")


def _rerun_one(queue: ItemAdmin, item: Item, spec: ResetFilter, dry_run: bool) -> ResetAction:
    if item.state in (ItemState.UPSTREAM_FAILED, ItemState.WAITING):
        return _reset_in_workflow(queue, item, dry_run)
    if item.state is ItemState.TODO:
        return ResetAction(item.item_id, False, f"{item.item_id}: already todo")
    if item.state is ItemState.LOCKED:
        holder = "a worker holds it" if item.lease_live(queue.now()) else "its lease ran out; reset it instead"
        return ResetAction(item.item_id, False, f"{item.item_id}: skipped, locked ({holder})")
    verb = "would rerun" if dry_run else "rerun"
    message = (f"{verb} {item.item_id}: {item.state.value} -> todo, all {len(item.subtasks)} sub-tasks from the "
               f"first (the earlier run's record is kept)")
    if dry_run:
        return ResetAction(item.item_id, True, message)
    if not queue.rerun(item):
        return ResetAction(item.item_id, False, f"{item.item_id}: skipped, it changed meanwhile")
    return _unblocked(queue, item, message)


def _reset_one(queue: ItemAdmin, item: Item, spec: ResetFilter, dry_run: bool) -> ResetAction:
    if item.state in (ItemState.UPSTREAM_FAILED, ItemState.WAITING):
        return _reset_in_workflow(queue, item, dry_run)
    now = queue.now()
    forced = item.item_id in spec.item_ids
    live = item.lease_live(now)
    if live and not forced:
        return ResetAction(item.item_id, False,
                           f"{item.item_id}: skipped, lease held by {item.instance_id} is live "
                           f"(name the item to force it)")
    subtasks = [s.key for s in item.subtasks
                if s.status in (SubtaskStatus.RUNNING, SubtaskStatus.SKIPPED)
                or (spec.subtasks and s.status is SubtaskStatus.FAILED)]
    if item.state is ItemState.TODO and not subtasks:
        return ResetAction(item.item_id, False, f"{item.item_id}: already todo")
    # Do what is printed: a reset that would only let a worker end the item again at once is refused.
    failed = [s.key for s in item.subtasks if s.status is SubtaskStatus.FAILED]
    if item.state is ItemState.FAILED and failed and not spec.subtasks:
        return ResetAction(item.item_id, False,
                           f"{item.item_id}: skipped, its failed sub-tasks ({', '.join(failed)}) have no attempts "
                           f"left; add --subtasks to run them again")
    if item.state is ItemState.DONE:
        return ResetAction(item.item_id, False,
                           f"{item.item_id}: skipped, done: every sub-task succeeded, so nothing would run again "
                           f"(--rerun runs it again from the first sub-task)")
    verb = "would reset" if dry_run else "reset"
    detail = f" (sub-tasks {', '.join(subtasks)})" if subtasks else ""
    if live:
        # Revoke, do not requeue: the holder's next renewal fails and it stops the item's
        # processes; nobody may claim it before the old lease runs out, so no two runs overlap.
        until = datetime.fromtimestamp(item.lease_expiry or now, UTC).strftime("%H:%M:%S UTC")
        message = (f"{'would revoke' if dry_run else 'revoked'} {item.item_id} from {item.instance_id}: "
                   f"its worker stops it; claimable again when the lease runs out at {until}{detail}")
    else:
        message = f"{verb} {item.item_id}: {item.state.value} -> todo{detail}"
    if dry_run:
        return ResetAction(item.item_id, True, message)
    write = queue.revoke if live else queue.reset
    if not write(item, subtasks, clear_attempts=spec.subtasks):
        return ResetAction(item.item_id, False, f"{item.item_id}: skipped, it changed meanwhile")
    return _unblocked(queue, item, message) if item.state.ended else ResetAction(item.item_id, True, message)


def format_logs(item: Item, subtask: str | None = None) -> Iterator[str]:
    if subtask is not None and not any(subtask in (s.key, s.label) for s in item.subtasks):
        names = ", ".join(s.name for s in item.subtasks)
        raise UsageError(f"item {item.item_id!r} has no sub-task {subtask!r} (it has {names})")
    yield f"item {item.item_id} (task {item.task_id}): {item.state.value}" + (
        f", held by {item.instance_id}" if item.instance_id else "") + (
        f", waiting for {_waits(item)}" if item.state is ItemState.WAITING else "") + (
        f", blocked by {item.blocked_by} (it ended failed or cancelled)" if item.blocked_by else "")
    for s in item.subtasks:
        if subtask is not None and subtask not in (s.key, s.label):
            continue
        record = RunRecord.from_map(item.log_summary.get(s.key), s.key)
        facts = [s.status.value, f"attempts {s.attempts}"]
        if s.exit_code is not None:
            facts.append(f"exit {s.exit_code}")
        if record is not None:
            facts.append(f"cpu {record.cpu_time:.2f}s")
            facts.append(f"wall {record.wall_time:.2f}s")
            facts.append(f"{record.log_length} lines")
            if record.timed_out:
                facts.append("timed out")
        yield f"== {s.name} [{', '.join(facts)}]"
        yield f"   {s.script}"
        for problem in record.problems if record is not None else ():
            yield f"   (malformed record: {problem})"
        log = item.logs.get(s.key) or {}
        for stream in ("stdout", "stderr"):
            text = str(log.get(stream) or "")
            if text:
                yield f"-- {stream} (tail) --"
                yield text.rstrip("\n")
        if record is not None and record.log_location:
            yield f"full log: {record.log_location}"
        elif not log:
            yield "(no output recorded yet)"
