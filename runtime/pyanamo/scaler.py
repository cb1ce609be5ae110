"""The backlog scaler: a scheduled Lambda handler that sizes the fleet to the backlog, and ends
the instances that no longer do anything.

The backlog is the todo items plus the locked items whose lease ran out (their worker died and
nobody is left to reclaim them: without counting these, a fleet that lost every instance would
stay at zero with the work stuck). It only ever raises the group's desired capacity, to
ceil(backlog / items_per_instance) capped at the maximum; instances take themselves out of the
group when the queue is drained. It does not raise it after ``FAILED_BOOT_LIMIT`` boots failed in
a row (``fleet.boot_breaker``): a broken image or setup script would otherwise launch instance
after instance.

Instances normally leave by themselves; ``reap`` ends those that cannot (``Reaping``): a boot that
hangs, a worker that went silent or ended without its instance leaving, and any instance past
``max_instance_hours``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import boto3

from .accounting import parse_time
from .dependencies import Settled, reconcile
from .fleet import boot_breaker, describe_group, is_boot_failure
from .gateway import TableGateway
from .schema import CLAIMABLE_STATES, STATE_INDEX, Attr, ItemState, expiry_rank, shard_keys


def count_backlog(client: Any, table: str, enough: int | None = None, now: float | None = None) -> int:
    """Todo items and locked items with an expired lease, counted on the state index (Select
    COUNT; stops once ``enough`` is reached)."""
    total = 0
    paginator = client.get_paginator("query")
    expired_before = expiry_rank(time.time() if now is None else now)
    # a claimable locked item is one whose lease has expired: its rank on the index is its expiry
    shards = [(s, expired_before if state is ItemState.LOCKED else None)
              for state in CLAIMABLE_STATES for s in shard_keys(state)]
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


@dataclass(frozen=True)
class Reaping:
    """When an instance of the group has outlived its purpose (seconds)."""

    lease: float = 300.0
    silent_leases: int = 3  # a worker not heard of for this many leases is gone (its record is touched every lease/3)
    boot_grace: float = 3600.0 + 1200.0  # launch to the worker's first record: setup_timeout + the bootstrap's own
    leave_grace: float = 600.0  # a worker that ended: its instance should have left within this
    max_instance_hours: float = 72.0

    @classmethod
    def from_environment(cls) -> Reaping:
        return cls(lease=float(os.environ.get("LEASE_SECONDS", 300)),
                   boot_grace=float(os.environ.get("BOOT_GRACE_SECONDS", 4800)),
                   max_instance_hours=float(os.environ.get("MAX_INSTANCE_HOURS", 72)))

    def why(self, launched: float, records: list[Mapping[str, Any]], now: float) -> str | None:
        """Why an instance launched at ``launched`` with these worker records must go, or None."""
        age = now - launched
        if age > self.max_instance_hours * 3600:
            return f"in service {age / 3600:.1f} h, past max_instance_hours ({self.max_instance_hours:g})"
        workers = [r for r in records if not is_boot_failure(r)]
        if not workers:
            return (f"no worker started {age / 60:.0f} min after launch (boot grace {self.boot_grace / 60:.0f} min)"
                    if age > self.boot_grace else None)
        newest = max(workers, key=lambda r: str(r.get("Started", "")))
        ended = parse_time(newest.get("Ended"))
        if ended is not None:
            return (f"its worker ended {(now - ended) / 60:.0f} min ago ({newest.get('Exit_Reason', '?')}) and the "
                    "instance did not leave" if now - ended > self.leave_grace else None)
        seen = parse_time(newest.get("Last_Seen")) or parse_time(newest.get("Started")) or launched
        silent = now - seen
        return (f"its worker has been silent for {silent / 60:.0f} min ({self.silent_leases} leases)"
                if silent > self.silent_leases * self.lease else None)


def reap(autoscaling: Any, ec2: Any, group: str, records: Iterable[Mapping[str, Any]], rules: Reaping,
         now: float | None = None) -> dict[str, str]:
    """End the group's in-service instances that ``rules`` says must go (lowering the desired
    capacity: nothing replaces them); returns instance -> why."""
    now = time.time() if now is None else now
    instances = [i["InstanceId"] for i in describe_group(autoscaling, group).get("Instances", [])
                 if i.get("LifecycleState") == "InService"]
    if not instances:
        return {}
    launched = {}
    for reservation in ec2.describe_instances(InstanceIds=instances).get("Reservations", []):
        for instance in reservation.get("Instances", []):
            launched[instance["InstanceId"]] = instance["LaunchTime"].timestamp()
    by_instance: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_instance.setdefault(str(record.get("InstanceID")), []).append(record)
    ended: dict[str, str] = {}
    for instance in instances:
        if instance not in launched:
            continue
        why = rules.why(launched[instance], by_instance.get(instance, []), now)
        if why:
            autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=instance,
                                                                 ShouldDecrementDesiredCapacity=True)
            ended[instance] = why
    return ended


def suspend_az_rebalance(autoscaling: Any, described: Mapping[str, Any]) -> bool:
    """Suspend AZRebalance (CloudFormation has no property for it): after instances leave, Auto
    Scaling would otherwise end busy instances to even out the zones. True if it was running."""
    if any(p.get("ProcessName") == "AZRebalance" for p in described.get("SuspendedProcesses", [])):
        return False
    autoscaling.suspend_processes(AutoScalingGroupName=described["AutoScalingGroupName"],
                                  ScalingProcesses=["AZRebalance"])
    return True


def scale(dynamodb: Any, autoscaling: Any, table: str, group: str, items_per_instance: int,
          records: Sequence[Mapping[str, Any]] = (), now: float | None = None) -> dict[str, Any]:
    """Raise the fleet to the backlog, unless boots keep failing (``records``: the table's worker
    records, for the breaker)."""
    described = describe_group(autoscaling, group)
    suspend_az_rebalance(autoscaling, described)
    current, maximum = described["DesiredCapacity"], described["MaxSize"]
    backlog = count_backlog(dynamodb, table, enough=maximum * max(1, items_per_instance))
    settled = Settled()
    gateway = TableGateway(dynamodb, table)
    if backlog == 0 and gateway.any_in_state(ItemState.WAITING):
        # Nothing to run but items that wait: a release lost with its worker (it died between
        # its `done` write and the release) is made here, so a fleet at zero starts for them.
        settled = reconcile(gateway)
        if settled.released:
            backlog = count_backlog(dynamodb, table, enough=maximum * max(1, items_per_instance))
    desired = desired_capacity(backlog, items_per_instance, current, maximum)
    result: dict[str, Any] = {"backlog": backlog, "previous": current, "desired": desired, "maximum": maximum,
                              "released": len(settled.released), "blocked": len(settled.blocked)}
    breaker = boot_breaker(records, time.time() if now is None else now)
    if breaker and desired > current:
        result.update(desired=current, breaker=breaker)
    elif desired > current:
        autoscaling.set_desired_capacity(
            AutoScalingGroupName=group, DesiredCapacity=desired, HonorCooldown=False
        )
    return result


def handler(event: dict, context: Any) -> dict[str, Any]:
    """Lambda entry point; settings come from the function's environment."""
    dynamodb, autoscaling = boto3.client("dynamodb"), boto3.client("autoscaling")
    table, group = os.environ["TABLE_NAME"], os.environ["GROUP_NAME"]
    records = list(TableGateway(dynamodb, table).worker_records())
    result = scale(dynamodb, autoscaling, table=table, group=group,
                   items_per_instance=int(os.environ.get("ITEMS_PER_INSTANCE", "1")), records=records)
    result["ended"] = reap(autoscaling, boto3.client("ec2"), group, records, Reaping.from_environment())
    print(result)
    return result
