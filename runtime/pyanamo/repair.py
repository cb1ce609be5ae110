"""`pyanamo repair TABLE`: find items whose state-index keys disagree with their state, and fix them.

Every state change moves an item between partitions of the state index in the same write, so the
two agree unless something else wrote the item: a hand edit, another tool, a restore from an old
backup. An item indexed under the wrong state is never claimed (or keeps the queue from draining
for ever), one missing from the index is invisible to claims and counts, and a lock without a
lease can never be reclaimed. Workers fix the first and the last when they meet them; only a Scan
finds the second, so this command reads the whole table — dry-run by default, ``--apply`` to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .gateway import TableGateway, index_disagrees
from .schema import WORKERS_SHARD, Attr

READ = (Attr.ITEM_ID, Attr.STATE, Attr.STATE_SHARD, Attr.STATE_RANK, Attr.LEASE_TOKEN, Attr.LEASE_EXPIRY,
        Attr.DONE_DATE)


@dataclass(frozen=True)
class IndexProblem:
    item_id: str
    why: str
    row: dict[str, Any]


def find_problems(queue: TableGateway) -> Iterator[IndexProblem]:
    """Every item whose index keys disagree with its state (a Scan of the whole table)."""
    for row in queue.scan_rows(READ):
        if row.get(Attr.STATE_SHARD, {}).get("S") == WORKERS_SHARD:
            continue  # a worker's own record: no state, by design
        why = index_disagrees(row)
        if why is not None:
            yield IndexProblem(row[Attr.ITEM_ID]["S"], why, row)
