"""Importing a checked task file (``taskfile``): its dependencies resolved, then each item written
with one conditional put, a window of them in flight, in file order (items that wait first).
"""

from __future__ import annotations

import bisect
import fnmatch
import re
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from .dependencies import Settled, settle, unblock_dependents
from .errors import QueueError
from .gateway import TableGateway
from .model import Item
from .schema import TASK_INDEX, Attr, ItemState
from .taskfile import InvalidTaskFile, TaskFile

IO_THREADS = 16  # conditional puts in flight at once
# Attempts per request (boto3's standard mode: jittered backoff doubling to 20 s). An import is
# tens of thousands of puts: at the client's default 4, a fifth of requests throttled fails one
# put in 625 — a 30-item import failed that way in CI; at 10, one in ten million.
IMPORT_ATTEMPTS = 10


# -- dependencies (the After column and --after) ------------------------------------------

TASK_REFERENCE = "task:"
_GLOB = re.compile(r"[*?\[]")


def resolve_after(items: TaskFile, table: TableGateway, *, after: Iterable[str] = (),
                  allow_missing: bool = False) -> TaskFile:
    """Resolve the items' ``After`` references to item IDs (``TaskFile.resolve``): each
    dependent's upstream items, and on each upstream of the same file the items that wait for it.
    A reference is an item ID (of the file or the table), ``task:TASKID`` (every item of that
    taskID, in the file or the table) or a glob of item IDs (``sample-*``). ``after`` applies to
    every item of the file. InvalidTaskFile (``FILE:LINE``) for a reference that matches nothing
    (an item ID is kept with ``allow_missing``: it may be imported later) and for a cycle;
    nothing is written. The edges are held in memory: a file with dependencies costs memory
    in the number of its edges."""
    extra = list(after)
    if not extra and not items.has_after:
        return items
    errors: list[str] = []
    table_ids: list[str] | None = None  # every item ID in the table: only for a glob

    def matches(reference: str) -> list[str] | None:
        nonlocal table_ids
        if reference.startswith(TASK_REFERENCE):
            task = reference[len(TASK_REFERENCE):]
            found = items.items_of_task(task)
            found += [row[Attr.ITEM_ID]["S"] for row in table.query_index(TASK_INDEX.name, (Attr.TASK_ID, task))]
            return list(dict.fromkeys(found)) or None
        if _GLOB.search(reference):
            if table_ids is None:
                table_ids = [row[Attr.ITEM_ID]["S"] for state in ItemState
                             for row in table.index_rows(state, [Attr.ITEM_ID])]
            found = fnmatch.filter(list(dict.fromkeys([*items.item_ids(), *table_ids])), reference)
            return found or None
        return [reference] if reference in items or table.exists(reference) else None

    resolved: dict[str, tuple[str, ...]] = {}
    known: dict[str, list[str] | None] = {}
    for item_id, references in items.references():
        upstream: list[str] = []
        for reference in [*references, *extra]:
            if reference not in known:
                known[reference] = matches(reference)
            found = known[reference]
            if found is None and allow_missing and not reference.startswith(TASK_REFERENCE) \
                    and not _GLOB.search(reference):
                found = [reference]
            if found is None:
                errors.append(f"{items.where(item_id)}: item {item_id!r} waits for {reference!r}, "
                              f"which matches no item in the file or the table"
                              + ("" if reference.startswith(TASK_REFERENCE) or _GLOB.search(reference)
                                 else " (--allow-missing if it is imported later)"))
                continue
            upstream += [u for u in found if u != item_id or reference == item_id]
        if upstream:
            resolved[item_id] = tuple(dict.fromkeys(upstream))
    errors += _cycles(items, resolved)
    if errors:
        raise InvalidTaskFile(errors)
    dependents: dict[str, set[str]] = {}
    for item_id, upstreams in resolved.items():
        for u in upstreams:
            dependents.setdefault(u, set()).add(item_id)
    items.resolve(resolved, {u: frozenset(d) for u, d in dependents.items()})
    return items


def _cycles(items: TaskFile, resolved: dict[str, tuple[str, ...]]) -> list[str]:
    """One ``FILE:LINE`` error per cycle among the file's items (a self-reference is one);
    a depth-first walk without recursion (a chain may be thousands of items long)."""
    errors: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in resolved:
        if start in state:
            continue
        state[start] = 1
        path, stack = [start], [iter(resolved[start])]
        while stack:
            up = next(stack[-1], None)
            if up is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(up) == 1:
                cycle = [*path[path.index(up):], up]
                errors.append(f"{items.where(up)}: items wait for each other in a cycle: {' -> '.join(cycle)}")
            elif up not in state and up in resolved:
                state[up] = 1
                path.append(up)
                stack.append(iter(resolved[up]))
    return errors


def link_upstreams(table: TableGateway, items: TaskFile) -> Settled:
    """After the items are written: record the dependents on each upstream that was already in
    the table (an upstream of the same file has them in its row), then settle every waiting item
    of the file (an upstream may have ended before the edge was recorded: done ones are struck
    off, failed ones block). In this order no release can be missed."""
    in_file: dict[str, bool] = {}
    edges: dict[str, set[str]] = {}
    for item_id, upstreams in items.upstreams.items():
        for u in upstreams:
            if u not in in_file:
                in_file[u] = u in items
            if not in_file[u]:
                edges.setdefault(u, set()).add(item_id)
    for upstream, dependents in sorted(edges.items()):
        table.add_dependents(upstream, dependents)  # False: not in the table (--allow-missing)
    return settle(table, list(items.upstreams))


def unblock_replaced(table: TableGateway, item_ids: Iterable[str]) -> list[str]:
    """After ``--replace``: the items that a replaced item's failure had blocked wait again (the
    fixed item will release them)."""
    waiting: list[str] = []
    for item_id in item_ids:
        now = table.get(item_id)
        if now is not None and now.dependents and now.state is ItemState.TODO:
            waiting += unblock_dependents(table, now)
    return waiting


# -- writing ------------------------------------------------------------------------------

SHOWN_IDS = 10  # item IDs kept for the messages about items left untouched


@dataclass
class ImportReport:
    imported: int = 0
    subtasks: int = 0
    skipped: int = 0  # already in the table: left untouched
    replaced: int = 0
    busy: int = 0  # held by a worker: left untouched (--replace)
    interrupted: bool = False  # Ctrl-C: the items not reported here were not written
    failed: QueueError | None = None  # a put failed past its retries (outage, throttling): the import stopped
    total: int = 0  # the items the file holds
    skipped_ids: list[str] = field(default_factory=list)  # the first SHOWN_IDS in file order
    busy_ids: list[str] = field(default_factory=list)

    @property
    def not_written(self) -> int:
        """Items of the file neither written nor found there (a Ctrl-C or a failed request
        stopped the import)."""
        return self.total - self.imported - self.skipped - self.busy


IN_FLIGHT = 4 * IO_THREADS  # puts submitted ahead: what a Ctrl-C lets finish, never the whole file


def write_items(
    queue: TableGateway,
    items: Iterable[Item],
    *,
    total: int,
    waiting: int = 0,
    replace: bool = False,
    advance: Callable[[int], None] = lambda n: None,
) -> ImportReport:
    """Write ``total`` items, given in write order with the ``waiting`` items that wait for others
    first (``TaskFile.in_write_order``), each with one conditional put (from a few threads): an
    itemID that exists, or comes to exist meanwhile (another import), is never overwritten unless
    ``replace``; even then an item a worker holds is left alone (reported as busy). Items that
    wait are all written before any other, so no upstream can run and end before the items that
    wait for it exist (its release would find nothing to release).

    Ctrl-C (KeyboardInterrupt) stops it: the puts already sent finish (each writes one whole
    item), nothing more is sent, and the report says how many were written (``interrupted``).
    A put that fails past the client's retries (an outage, throttling that outlasts them) stops it
    the same way, its error in ``failed``: the items written are counted, never left unreported.
    Only a window of IN_FLIGHT puts is queued at a time, so stopping takes one round of puts, and
    memory stays flat however many items there are.

    Why not batches: BatchWriteItem carries no conditions. TransactWriteItems does, but moto
    copies the whole table for every transaction (a 100-item transaction took 0.4 s on an empty
    table and 9 s with 400 items in it) and dynalite has none; one conditional put per item
    scales linearly everywhere and costs DynamoDB the same write units."""
    def write(item: Item) -> str:
        if replace:
            outcome = queue.replace_unless_held(item)
            return "busy" if outcome is None else "replaced" if outcome else "new"
        return "new" if queue.put_new(item) else "skipped"

    report = ImportReport(total=total)
    shown: dict[str, list[tuple[int, str]]] = {"skipped": [], "busy": []}
    pending: dict[Future[str], tuple[int, Item]] = {}

    def collect(done: Iterable[Future[str]]) -> None:
        for future in done:
            position, item = pending.pop(future)
            try:
                outcome = future.result()
            except QueueError as exc:
                report.failed = report.failed or exc
                continue
            if outcome in ("new", "replaced"):
                report.imported += 1
                report.subtasks += len(item.subtasks)
                report.replaced += outcome == "replaced"
            else:
                setattr(report, outcome, getattr(report, outcome) + 1)
                bisect.insort(shown[outcome], (position, item.item_id))
                del shown[outcome][SHOWN_IDS:]
            advance(1)

    pool = ThreadPoolExecutor(max_workers=IO_THREADS)
    try:
        for position, item in enumerate(items):
            if report.failed:
                break
            if position == waiting and pending:
                collect(wait(pending).done)
            elif len(pending) >= IN_FLIGHT:
                collect(wait(pending, return_when=FIRST_COMPLETED).done)
            pending[pool.submit(write, item)] = (position, item)
        collect(wait(pending).done)
    except KeyboardInterrupt:
        report.interrupted = True
        collect(wait(pending).done)  # the puts already sent: each writes a whole item or nothing
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    report.skipped_ids = [item_id for _, item_id in shown["skipped"]]
    report.busy_ids = [item_id for _, item_id in shown["busy"]]
    return report
