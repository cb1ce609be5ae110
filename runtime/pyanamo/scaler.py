"""The backlog scaler: a scheduled Lambda handler that sizes the fleet to the todo backlog.

It only ever raises the group's desired capacity, to ceil(todo / items_per_instance) capped at
the maximum; instances take themselves out of the group when the queue is drained.
"""

from __future__ import annotations

import math
import os
from typing import Any

import boto3

from .fleet import describe_group
from .schema import STATE_INDEX, Attr, ItemState, shard_keys


def count_todo(client: Any, table: str, enough: int | None = None) -> int:
    """Todo items, counted on the state index (Select COUNT; stops once ``enough`` is reached)."""
    total = 0
    paginator = client.get_paginator("query")
    for shard in shard_keys(ItemState.TODO):
        for page in paginator.paginate(
            TableName=table,
            IndexName=STATE_INDEX.name,
            KeyConditionExpression="#s = :s",
            ExpressionAttributeNames={"#s": Attr.STATE_SHARD},
            ExpressionAttributeValues={":s": {"S": shard}},
            Select="COUNT",
        ):
            total += page["Count"]
            if enough is not None and total >= enough:
                return total
    return total


def desired_capacity(todo: int, items_per_instance: int, current: int, maximum: int) -> int:
    wanted = min(maximum, math.ceil(todo / max(1, items_per_instance)))
    return max(current, wanted)


def scale(dynamodb: Any, autoscaling: Any, table: str, group: str, items_per_instance: int) -> dict[str, Any]:
    described = describe_group(autoscaling, group)
    current, maximum = described["DesiredCapacity"], described["MaxSize"]
    todo = count_todo(dynamodb, table, enough=maximum * max(1, items_per_instance))
    desired = desired_capacity(todo, items_per_instance, current, maximum)
    if desired > current:
        autoscaling.set_desired_capacity(
            AutoScalingGroupName=group, DesiredCapacity=desired, HonorCooldown=False
        )
    return {"todo": todo, "previous": current, "desired": desired, "maximum": maximum}


def handler(event: dict, context: Any) -> dict[str, Any]:
    """Lambda entry point; settings come from the function's environment."""
    result = scale(
        boto3.client("dynamodb"),
        boto3.client("autoscaling"),
        table=os.environ["TABLE_NAME"],
        group=os.environ["GROUP_NAME"],
        items_per_instance=int(os.environ.get("ITEMS_PER_INSTANCE", "1")),
    )
    print(result)
    return result
