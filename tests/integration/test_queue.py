"""The claim protocol and fencing against a real DynamoDB-compatible server over HTTP."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from pyanamo.aws import Endpoint, dynamodb_client
from pyanamo.model import Item, Subtask
from pyanamo.queue import Candidate, LeaseLost, SubtaskResult, TaskQueue
from pyanamo.schema import (
    INDEXES,
    STATE_INDEX,
    Attr,
    ItemState,
    SubtaskStatus,
)

from helpers import put_items


def item(item_id: str, *scripts: str, task: str = "T") -> Item:
    scripts = scripts or ("true",)
    return Item(item_id, task, tuple(Subtask(f"Task_{n}", s) for n, s in enumerate(scripts)))


def result(key: str, status=SubtaskStatus.DONE) -> SubtaskResult:
    return SubtaskResult(key, status, 1, 0, {"stdout": "", "stderr": ""}, {"ExitCode": 0})


def test_created_table_matches_the_definition(client, table):
    described = client.describe_table(TableName=table)["Table"]
    assert described["KeySchema"] == [{"AttributeName": "itemID", "KeyType": "HASH"}]
    indexes = {g["IndexName"]: g for g in described["GlobalSecondaryIndexes"]}
    assert set(indexes) == {i.name for i in INDEXES}
    for index in INDEXES:
        assert indexes[index.name]["KeySchema"] == [
            {"AttributeName": index.partition_key, "KeyType": "HASH"},
            {"AttributeName": index.sort_key, "KeyType": "RANGE"},
        ]
    assert set(indexes[STATE_INDEX.name]["Projection"]["NonKeyAttributes"]) == set(STATE_INDEX.projection)


def test_claim_locks_the_item_and_records_the_lease(queue, client, table):
    put_items(client, table, [item("a", "echo 1", "echo 2")])
    claimed = queue.claim()
    assert claimed is not None
    got, lease = claimed
    assert got.item_id == "a" and got.state is ItemState.LOCKED
    assert got.instance_id == "test-owner" and got.lease_token == lease.token
    assert [s.script for s in got.subtasks] == ["echo 1", "echo 2"]
    assert queue.claim() is None  # nothing else claimable


def test_exactly_one_of_many_racing_claimers_wins(aws_env, client, table):
    put_items(client, table, [item("only")])
    wins, barrier = [], threading.Barrier(12)

    def racer(n: int) -> None:
        q = TaskQueue(dynamodb_client(Endpoint()), table, owner=f"w{n}", lease_seconds=30)
        barrier.wait()
        if q.claim() is not None:
            wins.append(n)

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1


def test_concurrent_claimers_never_share_an_item(aws_env, client, table):
    put_items(client, table, [item(f"i{n:03d}") for n in range(120)])
    claims: list[str] = []
    lock = threading.Lock()

    def claimer(n: int) -> None:
        q = TaskQueue(dynamodb_client(Endpoint()), table, owner=f"w{n}", lease_seconds=30)
        while (got := q.claim()) is not None:
            with lock:
                claims.append(got[0].item_id)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = Counter(claims)
    assert len(counts) == 120 and set(counts.values()) == {1}


def test_fencing_a_worker_whose_lease_was_taken_over_cannot_write(client, table):
    put_items(client, table, [item("a", "echo 1", "echo 2")])
    old = TaskQueue(client, table, owner="old", lease_seconds=0.2)
    new = TaskQueue(client, table, owner="new", lease_seconds=30)
    _, old_lease = old.claim()
    time.sleep(0.3)  # the old lease expires (its worker hung)
    reclaimed = new.claim()
    assert reclaimed is not None and reclaimed[0].instance_id == "new"
    new_lease = reclaimed[1]
    for write in (
        lambda: old.renew(old_lease),
        lambda: old.mark_running(old_lease, ["Task_0"]),
        lambda: old.record(old_lease, result("Task_0"), final=ItemState.DONE),
        lambda: old.release(old_lease, ["Task_0"]),
        lambda: old.finish(old_lease, ItemState.FAILED, "x"),
    ):
        with pytest.raises(LeaseLost):
            write()
    current = new.get("a")
    assert current.state is ItemState.LOCKED and current.lease_token == new_lease.token
    # Only the new owner's claim shows: its first sub-task running, nothing from the old owner.
    assert [s.status for s in current.subtasks] == [SubtaskStatus.RUNNING, SubtaskStatus.TODO]
    # ... and the new owner's writes go through.
    new.record(new_lease, result("Task_0"))
    new.record(new_lease, result("Task_1"), final=ItemState.DONE)
    assert new.get("a").state is ItemState.DONE


def test_live_leases_are_not_reclaimed_and_renewal_keeps_them(client, table):
    put_items(client, table, [item("a")])
    holder = TaskQueue(client, table, owner="holder", lease_seconds=1.0)
    other = TaskQueue(client, table, owner="other", lease_seconds=30)
    _, lease = holder.claim()
    for _ in range(4):
        time.sleep(0.4)
        lease = holder.renew(lease)
        assert other.claim() is None
    time.sleep(1.2)
    assert other.claim() is not None


def test_release_keeps_done_subtasks_and_requeues_the_item(queue, client, table):
    put_items(client, table, [item("a", "echo 1", "echo 2", "echo 3")])
    _, lease = queue.claim()
    queue.record(lease, result("Task_0"), next_running="Task_1")
    queue.release(lease, ["Task_1"])
    back = queue.get("a")
    assert back.state is ItemState.TODO and back.lease_token is None
    assert [s.status for s in back.subtasks] == [SubtaskStatus.DONE, SubtaskStatus.TODO, SubtaskStatus.TODO]
    again, _ = queue.claim()
    assert [s.key for s in again.pending] == ["Task_1", "Task_2"]


def test_done_sets_done_date_and_leaves_the_claimable_index(queue, client, table):
    put_items(client, table, [item("a")])
    _, lease = queue.claim()
    queue.record(lease, result("Task_0"), final=ItemState.DONE)
    done = queue.get("a")
    assert done.state is ItemState.DONE and done.done_date and done.lease_token is None
    row = client.get_item(TableName=table, Key={"itemID": {"S": "a"}})["Item"]
    assert row[Attr.STATE_SHARD]["S"].startswith("done#") and row[Attr.SUBTASKS_DONE]["N"] == "1"
    assert not queue.any_in_state(ItemState.TODO) and not queue.any_in_state(ItemState.LOCKED)
    assert queue.any_in_state(ItemState.DONE)


def test_hostile_item_ids_and_subtask_keys_are_placeholders(queue, client, table):
    hostile = "a #n0 :v0 = lockID, REMOVE Lease_Token"
    put_items(client, table, [item(hostile, "echo '$(rm -rf /)' \"`x`\"")])
    got, lease = queue.claim()
    assert got.item_id == hostile
    queue.record(lease, result("Task_0"), final=ItemState.DONE)
    assert queue.get(hostile).subtasks[0].script == "echo '$(rm -rf /)' \"`x`\""


def test_a_fresh_claim_marks_the_first_subtask_running_in_the_same_write(queue, client, table):
    from pyanamo.stats import RequestStats

    put_items(client, table, [item("a", "echo 1", "echo 2")])
    stats = RequestStats()
    stats.install(client)
    got, _ = queue.claim()
    assert [s.status for s in got.subtasks] == [SubtaskStatus.RUNNING, SubtaskStatus.TODO]
    calls = stats.snapshot()["calls"]  # queries: shards probed until the one item's was found
    assert calls["UpdateItem"] == 1 and set(calls) == {"Query", "UpdateItem"}


def test_a_reclaimed_item_keeps_its_done_first_subtask(client, table):
    put_items(client, table, [item("a", "echo 1", "echo 2")])
    first = TaskQueue(client, table, owner="first", lease_seconds=0.2)
    _, lease = first.claim()
    first.record(lease, result("Task_0"), next_running="Task_1")
    time.sleep(0.3)  # the first worker died
    second = TaskQueue(client, table, owner="second", lease_seconds=30)
    got, _ = second.claim()
    assert got.instance_id == "second"
    assert [s.status for s in got.subtasks] == [SubtaskStatus.DONE, SubtaskStatus.RUNNING]


def test_a_lost_race_costs_one_request_where_the_endpoint_returns_the_old_item(client, table, engine):
    """DynamoDB and moto return the item a failed conditional write found
    (ReturnValuesOnConditionCheckFailure); dynalite does not, so there the claim reads it with
    one consistent GetItem."""
    from pyanamo.stats import RequestStats

    put_items(client, table, [item("a")])
    TaskQueue(client, table, owner="winner", lease_seconds=30).claim()
    loser = TaskQueue(client, table, owner="loser", lease_seconds=30)
    stats = RequestStats()
    stats.install(client)
    assert loser._try_claim(Candidate("a")) is None
    expected = {"UpdateItem": 1} if engine == "moto" else {"UpdateItem": 1, "GetItem": 1}
    assert stats.snapshot()["calls"] == expected


def test_the_local_endpoint_lets_exactly_one_conditional_write_win(client, table):
    """PyAnamo's claims rely on DynamoDB's atomic conditional writes. moto's own server does
    not guarantee it under concurrent requests; `pyanamo local` (which the tests run) does."""
    rounds, racers = 40, 8
    for n in range(rounds):
        put_items(client, table, [item(f"race{n}")])
    clients = [dynamodb_client(Endpoint()) for _ in range(racers)]
    for n in range(rounds):
        wins, barrier = [], threading.Barrier(racers)

        def racer(r: int, n: int = n, barrier: threading.Barrier = barrier, wins: list = wins) -> None:
            own = clients[r]
            barrier.wait()
            try:
                own.update_item(TableName=table, Key={"itemID": {"S": f"race{n}"}},
                                UpdateExpression="SET #o = :me", ConditionExpression="attribute_not_exists(#o)",
                                ExpressionAttributeNames={"#o": "Owner"},
                                ExpressionAttributeValues={":me": {"S": str(r)}})
                wins.append(r)
            except own.exceptions.ConditionalCheckFailedException:
                pass

        threads = [threading.Thread(target=racer, args=(r,)) for r in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1, f"round {n}: {len(wins)} conditional writes won"


def test_the_local_endpoint_applies_a_refused_update_not_at_all(client, table):
    """moto writes the SET actions before the one that crosses the size limit, then refuses the
    update; DynamoDB (and `pyanamo local`) leave the item as it was."""
    put_items(client, table, [item("big")])
    pad = "p" * 380_000
    client.update_item(TableName=table, Key={"itemID": {"S": "big"}}, UpdateExpression="SET #p = :p",
                       ExpressionAttributeNames={"#p": "Padding"}, ExpressionAttributeValues={":p": {"S": pad}})
    before = client.get_item(TableName=table, Key={"itemID": {"S": "big"}})["Item"]
    with pytest.raises(client.exceptions.ClientError, match="ValidationException"):
        client.update_item(TableName=table, Key={"itemID": {"S": "big"}}, UpdateExpression="SET #a = :a, #b = :b",
                           ExpressionAttributeNames={"#a": "A", "#b": "B"},
                           ExpressionAttributeValues={":a": {"S": "a" * 20_000}, ":b": {"S": "b" * 20_000}})
    assert client.get_item(TableName=table, Key={"itemID": {"S": "big"}})["Item"] == before


def test_a_claim_tries_a_bounded_number_of_candidates(client, table, monkeypatch):
    from pyanamo import queue as queue_module

    put_items(client, table, [item(f"i{n}") for n in range(3)])
    q = TaskQueue(client, table, owner="x", lease_seconds=30)
    tried = []
    monkeypatch.setattr(q, "_try_claim", lambda candidate: tried.append(candidate) and None)
    assert q.claim() is None
    assert len(tried) == queue_module.CLAIM_TRIES


def test_reclaims_count_abandoned_claims_and_fail_the_item_at_the_limit(client, table):
    put_items(client, table, [item("a")])
    for n in range(3):
        q = TaskQueue(client, table, owner=f"w{n}", lease_seconds=0.2, max_claims=3)
        assert q.claim() is not None  # then "dies"
        time.sleep(0.3)
    last = TaskQueue(client, table, owner="w3", lease_seconds=30, max_claims=3)
    assert last.claim() is None and last.failed_on_claim == 1
    failed = last.get("a")
    assert failed.state is ItemState.FAILED
    assert failed.last_error.startswith("abandoned by 3 workers (last: w2)")


def test_a_released_item_is_not_counted_as_abandoned(client, table):
    put_items(client, table, [item("a")])
    q = TaskQueue(client, table, owner="w", lease_seconds=30, max_claims=1)
    _, lease = q.claim()
    q.release(lease, ["Task_0"])
    assert q.claim() is not None  # a todo claim: the release was not an abandonment


def test_reset_restarts_the_crash_count_and_a_revocation_is_not_counted(client, table):
    put_items(client, table, [item("a")])
    dead = TaskQueue(client, table, owner="dead", lease_seconds=0.2, max_claims=2)
    dead.claim()
    time.sleep(0.3)
    holder = TaskQueue(client, table, owner="holder", lease_seconds=0.5, max_claims=2)
    got, _ = holder.claim()  # abandoned: 1
    assert holder.revoke(got, [], clear_attempts=False)
    time.sleep(0.6)
    again = TaskQueue(client, table, owner="after", lease_seconds=30, max_claims=2)
    assert again.claim() is not None  # 1 - 1 (revoked) + 1 = 1 abandoned: under the limit
    row = client.get_item(TableName=table, Key={"itemID": {"S": "a"}})["Item"]
    assert row["Abandoned_Claims"]["N"] == "1"


def test_put_new_never_overwrites_and_exactly_one_of_racing_imports_wins(client, table):
    q = TaskQueue(client, table)
    fresh = item("a", "echo new")
    wins = []
    barrier = threading.Barrier(6)

    def importer() -> None:
        own = TaskQueue(dynamodb_client(Endpoint()), table)
        barrier.wait()
        wins.append(own.put_new(fresh))

    threads = [threading.Thread(target=importer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 5 + [True]
    _, lease = q.claim()
    assert q.put_new(item("a", "echo other")) is False
    assert q.replace_unless_held(item("a", "echo other")) is None  # held: left alone
    assert q.get("a").subtasks[0].script == "echo new"
