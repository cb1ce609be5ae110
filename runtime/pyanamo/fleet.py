"""The worker fleet seen from the CLI: stack outputs, group size, and an instance leaving it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import BOTO_ERRORS, PyAnamoError, UsageError, error_code
from .identity import Imds
from .runner import SIGNAL_EXIT_BASE

# Stack output keys: the CDK stack writes them, the CLI reads them.
OUTPUT_TABLE = "TableName"
OUTPUT_GROUP = "GroupName"
OUTPUT_LOG_BUCKET = "LogBucketName"


@dataclass(frozen=True)
class FleetStack:
    name: str
    table: str
    group: str
    log_bucket: str | None


def read_stack(cloudformation: Any, stack: str) -> FleetStack:
    try:
        found = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except BOTO_ERRORS as exc:
        if error_code(exc) == "ValidationError":  # CloudFormation's answer for a stack that does not exist
            raise UsageError(f"no stack {stack!r} (deploy it with: cdk deploy)") from None
        raise
    outputs = {o["OutputKey"]: o["OutputValue"] for o in found[0].get("Outputs", [])}
    missing = [k for k in (OUTPUT_TABLE, OUTPUT_GROUP) if k not in outputs]
    if missing:
        raise PyAnamoError(f"stack {stack!r} has no output {', '.join(missing)}: is it a PyAnamo stack?")
    return FleetStack(stack, outputs[OUTPUT_TABLE], outputs[OUTPUT_GROUP], outputs.get(OUTPUT_LOG_BUCKET))


def describe_group(autoscaling: Any, group: str) -> dict[str, Any]:
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
    if not groups:
        raise PyAnamoError(f"the stack's Auto Scaling group {group!r} does not exist")
    return groups[0]


def scale(autoscaling: Any, group: str, desired: int) -> dict[str, Any]:
    described = describe_group(autoscaling, group)
    if not 0 <= desired <= described["MaxSize"]:
        raise UsageError(f"the fleet size must be between 0 and {described['MaxSize']} (the group's maximum)")
    autoscaling.set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=desired, HonorCooldown=False)
    return describe_group(autoscaling, group)


def leave(autoscaling: Any, worker_exit: int | None, imds: Imds | None = None) -> str:
    """Take this instance out of its group, lowering the desired capacity, unless the worker
    was stopped by a signal (shutdown, scale-in or Spot interruption: the instance goes anyway)."""
    if worker_exit is not None and worker_exit >= SIGNAL_EXIT_BASE:
        return f"the worker was stopped (exit {worker_exit}); the instance stays in its group"
    instance_id = (imds or Imds()).get("instance-id")
    if not instance_id:
        raise PyAnamoError("not on an EC2 instance (no instance ID from the metadata service)")
    autoscaling.terminate_instance_in_auto_scaling_group(
        InstanceId=instance_id, ShouldDecrementDesiredCapacity=True
    )
    return f"instance {instance_id} left its Auto Scaling group (desired capacity lowered)"
