"""The backlog scaler: a scheduled Lambda handler that sizes the fleet to the backlog.

The backlog is the todo items plus the locked items whose lease ran out (their worker died and
nobody is left to reclaim them: without counting these, a fleet that lost every instance would
stay at zero with the work stuck). It only ever raises the group's desired capacity, to
ceil(backlog / items_per_instance) capped at the maximum; instances take themselves out of the
group when the queue is drained.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import boto3

from .fleet import describe_group
from .schema import STATE_INDEX, Attr, ItemState, expiry_rank, shard_keys


def count_backlog(client: Any, table: str, enough: int | None = None, now: float | None = None) -> int:
    """Todo items and locked items with an expired lease, counted on the state index (Select
    COUNT; stops once ``enough`` is reached)."""
    total = 0
    paginator = client.get_paginator("query")
    expired_before = expiry_rank(time.time() if now is None else now)
    shards: list[tuple[str, str | None]] = [(s, None) for s in shard_keys(ItemState.TODO)]
    shards += [(s, expired_before) for s in shard_keys(ItemState.LOCKED)]
    for shard, before in shards:
        condition = "#s = :s" if before is None else "#s = :s AND #r < :r"
        names = {"#s": Attr.STATE_SHARD, **({"#r": Attr.STATE_RANK} if before else {})}
        values = {":s": {"S": shard}, **({":r": {"S": before}} if before else {})}
        for page in paginator.paginate(
            TableName=table,
            IndexName=STATE_INDEX.name,
            KeyConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            Select="COUNT",
        ):
            total += page["Count"]
            if enough is not None and total >= enough:
                return total
    return total


def desired_capacity(backlog: int, items_per_instance: int, current: int, maximum: int) -> int:
    wanted = min(maximum, math.ceil(backlog / max(1, items_per_instance)))
    return max(current, wanted)


def scale(dynamodb: Any, autoscaling: Any, table: str, group: str, items_per_instance: int) -> dict[str, Any]:
    described = describe_group(autoscaling, group)
    current, maximum = described["DesiredCapacity"], described["MaxSize"]
    backlog = count_backlog(dynamodb, table, enough=maximum * max(1, items_per_instance))
    desired = desired_capacity(backlog, items_per_instance, current, maximum)
    if desired > current:
        autoscaling.set_desired_capacity(
            AutoScalingGroupName=group, DesiredCapacity=desired, HonorCooldown=False
        )
    return {"backlog": backlog, "previous": current, "desired": desired, "maximum": maximum}


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
