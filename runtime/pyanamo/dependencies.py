"""Items that wait for other items: release without a driver, failure that propagates.

An item imported with ``After`` is ``waiting``: no claim sees it. Its ``Waiting_On`` holds the
upstream item IDs not yet done, and every upstream holds the item's ID in its ``Dependents`` (the
edges are read with a GetItem, never a Scan). When an upstream ends ``done``, the worker that
ended it strikes it off each dependent's ``Waiting_On`` and wakes (waiting -> todo) the ones left
with nothing to wait for; when it ends ``failed`` or ``cancelled``, its dependents (and theirs)
end ``upstream_failed``. Every such write is conditional on the dependent's state and idempotent.

A worker can die between its ``done`` write and the release. ``reconcile`` is the safety net:
it looks at every waiting item afresh (the state index's ``waiting`` shards, then a GetItem per
waiting item and per upstream) and makes the writes the dead worker did not. Idle workers run it
before they decide the queue is drained, and the backlog scaler runs it every minute, so a lost
release costs at most one idle poll of any worker (a fleet at zero: the scaler's next run).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .events import emit
from .model import Item
from .schema import BLOCKING_STATES, Attr, ItemState


class Workflow(Protocol):
    """The gateway's reads and writes that workflows use (``gateway.TableGateway``, the fake)."""

    def get(self, item_id: str) -> Item | None: ...

    def index_rows(self, state: ItemState, attributes: list[str]) -> Iterable[dict]: ...

    def drop_upstream(self, item_id: str, upstream_id: str) -> Item | None: ...

    def wake(self, item_id: str) -> bool: ...

    def block(self, item_id: str, upstream_id: str) -> Item | None: ...

    def unblock(self, item_id: str) -> Item | None: ...


@dataclass
class Settled:
    """What a look at waiting items found and did."""

    released: list[str] = field(default_factory=list)  # waiting -> todo
    blocked: list[str] = field(default_factory=list)  # waiting -> upstream_failed
    missing: dict[str, list[str]] = field(default_factory=dict)  # waiting on items not in the table
    waiting: int = 0  # still waiting after the look
    # listed as waiting by the state index but todo or locked when read: released by someone else
    # a moment ago (the index, a secondary index, may lag the item by that moment)
    moved: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.released or self.blocked)


def release_dependents(table: Workflow, item_id: str, dependents: Iterable[str]) -> list[str]:
    """Item ``item_id`` ended done: strike it off its dependents' ``Waiting_On`` and wake the
    ones with nothing left to wait for. Returns the items woken."""
    woken = []
    for dependent in sorted(dependents):
        after = table.drop_upstream(dependent, item_id)
        if after is not None and not after.waiting_on and table.wake(dependent):
            woken.append(dependent)
    if woken:
        emit("items_released", upstream=item_id, items=woken[:20], count=len(woken))
    return woken


def block_dependents(table: Workflow, item_id: str, dependents: Iterable[str]) -> list[str]:
    """Item ``item_id`` ended failed, cancelled or upstream_failed: the items that wait for it,
    and the items that wait for those, end ``upstream_failed`` (they would never run)."""
    blocked: list[str] = []
    frontier = [(item_id, d) for d in sorted(dependents)]
    seen: set[str] = set()
    while frontier:
        upstream, dependent = frontier.pop()
        if dependent in seen:
            continue
        seen.add(dependent)
        after = table.block(dependent, upstream)
        if after is not None:
            blocked.append(dependent)
            frontier += [(dependent, d) for d in sorted(after.dependents)]
    if blocked:
        emit("items_blocked", upstream=item_id, items=blocked[:20], count=len(blocked))
    return blocked


def unblock_dependents(table: Workflow, item: Item) -> list[str]:
    """``item`` was reset: the items its end blocked (and the items theirs blocked) wait again,
    then are looked at afresh (another upstream may still block them)."""
    waiting: list[str] = []
    frontier = sorted(item.dependents)
    seen: set[str] = set()
    while frontier:
        dependent = frontier.pop()
        if dependent in seen:
            continue
        seen.add(dependent)
        after = table.unblock(dependent)
        if after is not None:
            waiting.append(dependent)
            frontier += sorted(after.dependents)
    settle(table, [w for w in waiting if w != item.item_id], upstream_reset=item.item_id)
    return waiting


def settle(table: Workflow, item_ids: Iterable[str], *, upstream_reset: str | None = None) -> Settled:
    """Look at waiting items afresh: strike off upstreams that are done, block the item on one
    that ended badly, wake it when nothing is left. Idempotent: any number of workers may run it
    at once. ``upstream_reset``: an item just reset, which counts as live whatever was read."""
    found = Settled()
    upstreams: dict[str, Item | None] = {}

    def upstream(item_id: str) -> Item | None:
        if item_id not in upstreams:
            upstreams[item_id] = table.get(item_id)
        return upstreams[item_id]

    for item_id in item_ids:
        item = table.get(item_id)
        if item is None:
            continue
        if item.state is not ItemState.WAITING:
            if item.state.claimable:
                found.moved.append(item_id)
            continue
        for up_id in sorted(item.waiting_on):
            if up_id == upstream_reset:  # just reset: it will run again, whatever was read
                continue
            up = upstream(up_id)
            if up is None:
                found.missing.setdefault(item_id, []).append(up_id)
            elif up.state is ItemState.DONE:
                item = table.drop_upstream(item_id, up_id) or item
            elif up.state in BLOCKING_STATES:
                if table.block(item_id, up_id) is not None:
                    found.blocked.append(item_id)
                    found.blocked += block_dependents(table, item_id, item.dependents)
                break
        else:
            if not item.waiting_on and table.wake(item_id):
                found.released.append(item_id)
                continue
            found.waiting += 1
    return found


@dataclass(frozen=True)
class Stuck:
    """Waiting items that nothing will release: every item they wait for is missing from the
    table, or waiting itself on such an item (read-only: ``status`` reports them)."""

    items: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # the upstream IDs not in the table


def stuck(table: Workflow) -> Stuck:
    """The waiting items no release or reconcile can move now (none todo or locked is assumed:
    the caller checks). An item with an upstream that ended is not stuck: a reconcile moves it."""
    ids = [row[Attr.ITEM_ID]["S"] for row in table.index_rows(ItemState.WAITING, [Attr.ITEM_ID])]
    items, missing = [], set()
    for item_id in ids:
        item = table.get(item_id)
        if item is None or item.state is not ItemState.WAITING:
            continue
        ups = {up: table.get(up) for up in item.waiting_on}
        if any(u is not None and u.state.ended for u in ups.values()) or not item.waiting_on:
            continue
        items.append(item_id)
        missing |= {up for up, u in ups.items() if u is None}
    return Stuck(tuple(items), tuple(sorted(missing)))


def reconcile(table: Workflow) -> Settled:
    """Settle every waiting item (the state index's waiting shards: no Scan)."""
    ids = [row[Attr.ITEM_ID]["S"] for row in table.index_rows(ItemState.WAITING, [Attr.ITEM_ID])]
    found = settle(table, ids)
    if found.changed:
        emit("workflow_reconciled", released=len(found.released), blocked=len(found.blocked))
    return found
