"""The backlog scaler and `fleet leave` against moto's DynamoDB and Auto Scaling over HTTP."""

from __future__ import annotations

import time

import pytest

from pyanamo import fleet, scaler
from pyanamo.identity import Imds
from pyanamo.model import Item, Subtask
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
    assert result == {"backlog": 0, "previous": 0, "desired": 0, "maximum": 8}
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
