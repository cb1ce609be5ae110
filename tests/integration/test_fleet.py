"""The backlog scaler and `fleet leave` against moto's DynamoDB and Auto Scaling over HTTP."""

from __future__ import annotations

import time

import pytest

from pyanamo import fleet, scaler, status
from pyanamo.aws import Endpoint, aws_client
from pyanamo.identity import Imds
from pyanamo.local_secret import read_secret
from pyanamo.model import Item, Subtask, iso
from pyanamo.queue import TaskQueue

from helpers import StubImds, put_items


def todo_items(client, table: str, count: int) -> None:
    put_items(client, table, [Item(f"i{n}", "t", (Subtask("Task_0", "true"),)) for n in range(count)])


def desired(autoscaling, group: str) -> int:
    return fleet.describe_group(autoscaling, group)["DesiredCapacity"]


@pytest.mark.parametrize("todo, per_instance, current, maximum, expected", [
    (0, 10, 0, 8, 0), (45, 10, 0, 8, 5), (45, 10, 7, 8, 7), (500, 10, 2, 8, 8), (1, 4, 0, 8, 1)])
def test_desired_capacity_rule(todo, per_instance, current, maximum, expected):
    assert scaler.desired_capacity(todo, per_instance, current, maximum) == expected


def test_no_todo_leaves_the_group_alone(client, table, autoscaling, make_group):
    group = make_group(maximum=8)
    result = scaler.scale(client, autoscaling, table, group, items_per_instance=10)
    assert result == {"backlog": 0, "previous": 0, "desired": 0, "maximum": 8, "released": 0, "blocked": 0}
    assert desired(autoscaling, group) == 0


def test_45_todo_with_10_per_instance_raises_to_5(client, table, autoscaling, make_group):
    group = make_group(maximum=8)
    todo_items(client, table, 45)
    assert scaler.scale(client, autoscaling, table, group, items_per_instance=10)["backlog"] == 45
    assert desired(autoscaling, group) == 5


def test_never_above_the_maximum(client, table, autoscaling, make_group):
    group = make_group(maximum=3)
    todo_items(client, table, 45)
    result = scaler.scale(client, autoscaling, table, group, items_per_instance=10)
    assert desired(autoscaling, group) == 3 and result["backlog"] >= 30  # counting stops at enough


def test_locked_items_whose_worker_died_count_as_backlog(client, table, autoscaling, make_group):
    """A fleet that lost every instance must come back for the items they held."""
    group = make_group(maximum=8)
    todo_items(client, table, 3)
    TaskQueue(client, table, owner="live", lease_seconds=600).claim()
    dead = TaskQueue(client, table, owner="dead", lease_seconds=0.2)
    dead.claim()
    time.sleep(0.3)
    assert scaler.scale(client, autoscaling, table, group, items_per_instance=1)["backlog"] == 2
    assert desired(autoscaling, group) == 2


def test_the_scaler_keeps_az_rebalancing_suspended(client, table, autoscaling, make_group):
    """After instances leave, AZRebalance would end busy instances to even out the zones."""
    group = make_group(maximum=4)
    scaler.scale(client, autoscaling, table, group, items_per_instance=1)
    suspended = fleet.describe_group(autoscaling, group)["SuspendedProcesses"]
    assert [p["ProcessName"] for p in suspended] == ["AZRebalance"]
    assert not scaler.suspend_az_rebalance(autoscaling, fleet.describe_group(autoscaling, group))


def test_never_lowers(client, table, autoscaling, make_group):
    group = make_group(maximum=8, desired=6)
    todo_items(client, table, 12)
    scaler.scale(client, autoscaling, table, group, items_per_instance=10)
    assert desired(autoscaling, group) == 6


def test_handler_reads_its_settings_from_the_environment(client, table, autoscaling, make_group, monkeypatch):
    group = make_group(maximum=8)
    todo_items(client, table, 7)
    monkeypatch.setenv("TABLE_NAME", table)
    monkeypatch.setenv("GROUP_NAME", group)
    monkeypatch.setenv("ITEMS_PER_INSTANCE", "2")
    # the Lambda signs with its role's keys: here, the ones `pyanamo local` serves (its secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", read_secret())
    assert scaler.handler({}, None)["desired"] == 4
    assert desired(autoscaling, group) == 4


def test_leave_after_any_end_of_the_worker_even_a_crash(autoscaling, make_group, monkeypatch):
    """An OOM-killed or crashed worker must not leave an idle, billed instance behind."""
    group = make_group(maximum=2, desired=1)
    (instance_id,) = [i["InstanceId"] for i in fleet.describe_group(autoscaling, group)["Instances"]]
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    with StubImds(instance_id) as imds:
        message = fleet.leave(autoscaling, worker_exit=137, imds=Imds(imds.url))
    assert message == f"instance {instance_id} left its Auto Scaling group (desired capacity lowered)"
    assert desired(autoscaling, group) == 0


def test_leave_stays_when_the_instance_goes_anyway(autoscaling, monkeypatch):
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED")
    with StubImds("i-0spot") as imds:
        imds.interrupt()
        assert "goes anyway (a Spot interruption notice)" in fleet.leave(autoscaling, 143, Imds(imds.url))
    with StubImds("i-0scalein", {"autoscaling/target-lifecycle-state": "Terminated"}) as imds:
        assert "Auto Scaling is terminating it" in fleet.leave(autoscaling, 143, Imds(imds.url))


def test_leave_off_ec2_is_a_clear_error(autoscaling):
    with pytest.raises(fleet.PyAnamoError, match="not on an EC2 instance"):
        fleet.leave(autoscaling, worker_exit=0)


# -- instances that outlived their purpose, and boots that keep failing ---------------------

def worker_record(instance: str, started: float, **times: float) -> dict:
    record = {"Record_Type": "worker", "InstanceID": instance, "Worker_ID": f"{instance}:1", "Started": iso(started)}
    record.update({name: iso(value) for name, value in times.items()})
    return record


def boot_failure(instance: str, started: float) -> dict:
    return {"Record_Type": fleet.BOOT_FAILED, "InstanceID": instance, "Started": iso(started),
            "Last_Line": "conda: command not found"}


def test_reap_ends_hung_boots_silent_workers_and_instances_that_did_not_leave(
        client, table, autoscaling, make_group):
    group = make_group(maximum=4, desired=4)
    busy, silent, hung, stayed = [i["InstanceId"] for i in fleet.describe_group(autoscaling, group)["Instances"]]
    now = time.time() + 2 * 3600  # two hours after they were launched
    queue = TaskQueue(client, table)
    for n, record in enumerate([
            worker_record(busy, now - 3000, Last_Seen=now - 30),
            worker_record(silent, now - 3000, Last_Seen=now - 3600),
            worker_record(stayed, now - 3000, Last_Seen=now - 1800, Ended=now - 1800)]):
        queue.put_worker_record(f"pyanamo-worker#{n}", record)
    rules = scaler.Reaping(lease=60, boot_grace=3600, max_instance_hours=72)
    ec2 = aws_client("ec2", Endpoint())
    ended = scaler.reap(autoscaling, ec2, group, list(queue.worker_records()), rules, now=now)
    assert sorted(ended) == sorted([silent, hung, stayed])
    assert "silent for 60 min (3 leases)" in ended[silent]
    assert "no worker started 120 min after launch" in ended[hung]
    assert "ended 30 min ago (?) and the instance did not leave" in ended[stayed]
    after = fleet.describe_group(autoscaling, group)
    assert after["DesiredCapacity"] == 1 and [i["InstanceId"] for i in after["Instances"]] == [busy]
    capped = scaler.reap(autoscaling, ec2, group, [], scaler.Reaping(max_instance_hours=1), now=now)
    assert list(capped) == [busy] and "past max_instance_hours (1)" in capped[busy]


def test_the_scaler_stops_raising_after_boots_fail_in_a_row(client, table, autoscaling, make_group):
    group = make_group(maximum=8)
    todo_items(client, table, 5)
    now = time.time()
    failures = [boot_failure(f"i-{n}", now - 600 + n) for n in range(3)]
    result = scaler.scale(client, autoscaling, table, group, items_per_instance=1, records=failures, now=now)
    assert result["desired"] == 0 and "3 boots failed in a row (last: i-2: conda: command not found)" in \
        result["breaker"]
    assert desired(autoscaling, group) == 0
    queue = TaskQueue(client, table)
    for n, record in enumerate(failures):
        queue.put_worker_record(f"pyanamo-worker#i-{n}:boot#{n}", record)
    assert "3 boots failed in a row" in status.gather(queue).scaler_paused
    recovered = [*failures, worker_record("i-9", now - 60)]  # a later boot started its worker
    assert "breaker" not in scaler.scale(client, autoscaling, table, group, 1, records=recovered, now=now)
    assert desired(autoscaling, group) == 5
    assert fleet.boot_breaker(failures, now + fleet.FAILED_BOOT_WINDOW + 601) is None  # old failures: try again
    assert fleet.boot_breaker(failures[:2], now) is None
