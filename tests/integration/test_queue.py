"""The claim protocol and fencing against a real DynamoDB-compatible server over HTTP."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from pyanamo.aws import Endpoint, dynamodb_client
from pyanamo.gateway import SubtaskResult
from pyanamo.model import Item, Subtask
from pyanamo.queue import Candidate, TaskQueue
from pyanamo.runs import RunRecord
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
    return SubtaskResult(key, status, 1, 0, {"stdout": "", "stderr": ""}, RunRecord(exit_code=0))


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




def test_live_leases_are_not_reclaimed_and_renewal_keeps_them(client, table):
    """Renewed every 1.5 s, a 4 s lease outlives its first term; left alone, it runs out. The
    2.5 s between a renewal and the end of its term is the slack for a request's latency on a
    loaded machine (with a 1 s lease renewed every 0.4 s, a slow claim request found it expired)."""
    put_items(client, table, [item("a")])
    holder = TaskQueue(client, table, owner="holder", lease_seconds=4.0)
    other = TaskQueue(client, table, owner="other", lease_seconds=30)
    _, lease = holder.claim()
    first = lease.expiry
    for _ in range(3):
        time.sleep(1.5)
        lease = holder.renew(lease)
        assert other.claim() is None
    assert lease.expiry > first + 4
    time.sleep(4.5)
    assert other.claim() is not None




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
