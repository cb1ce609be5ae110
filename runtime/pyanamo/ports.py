"""What the worker and the operator's commands need of the table, as Protocols.

``queue.TaskQueue`` (DynamoDB) and the tests' in-memory queue (``tests/fakes.py``) both satisfy
them; the contract tests (``tests/integration/test_queue_contract.py``) prove they behave alike,
so what a unit test concludes on the fake holds for the table. The worker, the lease keeper and
the worker record are typed on ``WorkQueue``; reset and cancel (``admin``) on ``ItemAdmin``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from .gateway import Lease, SubtaskResult
from .model import Item
from .schema import ItemState


@runtime_checkable
class ItemAdmin(Protocol):
    """Selecting items and changing them without a lease (the operator's commands)."""

    def now(self) -> float: ...

    def get(self, item_id: str) -> Item | None: ...

    def index_rows(self, state: ItemState, attributes: list[str]) -> Iterator[dict[str, Any]]: ...

    def query_index(self, index: str, key: tuple[str, str], sort: tuple[str, str] | None = None,
                    attributes: Sequence[str] = ...) -> Iterator[dict[str, Any]]: ...

    def reset(self, item: Item, subtasks: Sequence[str], *, clear_attempts: bool) -> bool: ...

    def revoke(self, item: Item, subtasks: Sequence[str], *, clear_attempts: bool) -> bool: ...

    def cancel(self, item: Item) -> bool: ...

    def rerun(self, item: Item) -> bool: ...

    def put_new(self, item: Item) -> bool: ...

    def replace_unless_held(self, item: Item) -> bool | None: ...


@runtime_checkable
class WorkQueue(Protocol):
    """A worker's queue: claims, writes under a lease, and its own record."""

    table: str
    owner: str  # the instance ID stored in the items it claims
    worker_id: str
    lease_seconds: float
    failed_on_claim: int

    def now(self) -> float: ...

    def claim(self) -> tuple[Item, Lease] | None: ...

    def renew(self, lease: Lease) -> Lease: ...

    def came_back(self, lease: Lease) -> None: ...

    def mark_running(self, lease: Lease, keys: list[str]) -> None: ...

    def record(self, lease: Lease, result: SubtaskResult, *, final: ItemState | None = None,
               next_running: str | None = None) -> None: ...

    def finish(self, lease: Lease, final: ItemState, error_line: str | None = None,
               failed: Sequence[str] = ()) -> None: ...

    def fail_rejected(self, lease: Lease, error_line: str) -> None: ...

    def release(self, lease: Lease, interrupted: list[str]) -> None: ...

    def held_here(self) -> set[str]: ...

    def still_held(self, lease: Lease) -> bool: ...

    def any_in_state(self, state: ItemState) -> bool: ...

    def get(self, item_id: str) -> Item | None: ...

    def put_worker_record(self, key: str, values: dict[str, Any]) -> None: ...

    def update_worker_record(self, key: str, values: dict[str, Any]) -> None: ...

    def upsert_worker_record(self, key: str, values: dict[str, Any]) -> None: ...
