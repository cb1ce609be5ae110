"""`status` counts distinct items, even when one changes state between its per-state reads."""

from __future__ import annotations

import time

from pyanamo.model import to_dynamo
from pyanamo.schema import ItemState
from pyanamo.status import gather


class MovingQueue:
    """The state index as `status` reads it while a worker finishes item b: b is still in the
    todo partition when that is read, and already in the done partition when that is read."""

    table = "moving"

    def __init__(self) -> None:
        self.partitions = {
            ItemState.TODO: [{"itemID": "a", "Subtask_Count": 3, "Subtasks_Done": 0},
                             {"itemID": "b", "Subtask_Count": 3, "Subtasks_Done": 0}],
            ItemState.DONE: [{"itemID": "b", "Subtask_Count": 3}, {"itemID": "c", "Subtask_Count": 3}],
        }

    def index_rows(self, state, attributes):
        return [{k: to_dynamo(v) for k, v in row.items()} for row in self.partitions.get(state, [])]

    def now(self) -> float:
        return time.time()

    def worker_records(self):
        return []


def test_an_item_seen_in_two_states_counts_once_in_the_later_one():
    report = gather(MovingQueue())
    assert report.total == 3 and report.items[ItemState.TODO.value] == 1 and report.items[ItemState.DONE.value] == 2
    assert (report.subtasks_done, report.subtasks_total) == (6, 9)
