"""The worker fleet seen from the CLI: stack outputs, group size, and an instance leaving it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .accounting import parse_time
from .errors import BOTO_ERRORS, PyAnamoError, UsageError, error_code
from .identity import Imds
from .model import iso
from .worker_record import WORKER_RECORD_PREFIX

# Stack output keys: the CDK stack writes them, the CLI reads them.
OUTPUT_TABLE = "TableName"
OUTPUT_GROUP = "GroupName"
OUTPUT_LOG_BUCKET = "LogBucketName"
OUTPUT_RESULTS = "ResultsLocation"  # s3://bucket/prefix of the committed outputs


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


def being_replaced(imds: Imds) -> str | None:
    """Why this instance goes anyway (then leaving would lower the fleet twice), or None."""
    if imds.get("spot/instance-action"):
        return "a Spot interruption notice"
    if (imds.get("autoscaling/target-lifecycle-state") or "").startswith("Terminat"):
        return "Auto Scaling is terminating it"
    return None


def leave(autoscaling: Any, worker_exit: int | None, imds: Imds | None = None) -> str:
    """Take this instance out of its group, lowering the desired capacity: after any end of its
    worker (drained, failed, crashed, killed), so that no instance idles on, billed. Only an
    instance that goes anyway (a Spot notice, Auto Scaling terminating it) stays."""
    imds = imds or Imds()
    why = being_replaced(imds)
    if why:
        return f"the worker ended (exit {worker_exit}); the instance goes anyway ({why}), so it stays in its group"
    instance_id = imds.get("instance-id")
    if not instance_id:
        raise PyAnamoError("not on an EC2 instance (no instance ID from the metadata service)")
    autoscaling.terminate_instance_in_auto_scaling_group(
        InstanceId=instance_id, ShouldDecrementDesiredCapacity=True
    )
    return f"instance {instance_id} left its Auto Scaling group (desired capacity lowered)"


BOOT_FAILED = "boot_failed"  # Record_Type of the record a failed boot leaves in the table


def boot_failed(queue: Any, s3: Any, autoscaling: Any, log: Path, log_bucket: str | None,
                imds: Imds | None = None) -> list[str]:
    """A boot that failed (the bootstrap or the user's setup): its log to the log bucket, a
    ``boot_failed`` record in the table (``status`` shows it), then the instance leaves. Each
    step is tried even if an earlier one failed; returns what was done, one line each."""
    imds = imds or Imds()
    instance_id = imds.get("instance-id") or "unknown-instance"
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    last = next((line.strip() for line in reversed(lines) if line.strip()), "no log")[:300]
    done: list[str] = []
    now = time.time()
    location = ""
    if log_bucket and log.is_file():
        bucket, _, prefix = log_bucket.partition("/")
        key = "/".join(p for p in (prefix.strip("/"), "boot-failures", f"{instance_id}-{int(now)}.log") if p)
        try:
            s3.upload_file(str(log), bucket, key)
            location = f"s3://{bucket}/{key}"
            done.append(f"log: {location}")
        except Exception as exc:  # noqa: BLE001 - the next steps matter more
            done.append(f"log not uploaded: {exc}")
    record = {"Record_Type": BOOT_FAILED, "InstanceID": instance_id, "Worker_ID": f"{instance_id}:boot",
              "Started": iso(now), "Last_Seen": iso(now), "Ended": iso(now), "Exit_Reason": BOOT_FAILED,
              "Last_Line": last, "Log_Location": location}
    try:
        queue.put_worker_record(f"{WORKER_RECORD_PREFIX}{instance_id}:boot#{int(now * 1000)}", record)
        done.append(f"recorded: boot failed on {instance_id}: {last}")
    except Exception as exc:  # noqa: BLE001
        done.append(f"not recorded: {exc}")
    done.append(leave(autoscaling, None, imds))
    return done


FAILED_BOOT_LIMIT = 3  # failed boots in a row that stop the scaler from raising the fleet
FAILED_BOOT_WINDOW = 3600.0  # seconds: older failures do not count (the scaler tries again)


def is_boot_failure(record: Mapping[str, Any]) -> bool:
    return record.get("Record_Type") == BOOT_FAILED or ":boot#" in str(record.get("itemID", ""))


def boot_breaker(records: Iterable[Mapping[str, Any]], now: float, limit: int = FAILED_BOOT_LIMIT,
                 window: float = FAILED_BOOT_WINDOW) -> str | None:
    """Why the fleet must not grow (``limit`` boots failed in a row, the newest within ``window``
    seconds, and no worker started since), or None. The scaler and `status` both ask."""
    ordered = sorted(records, key=lambda r: str(r.get("Started", "")), reverse=True)
    failed = []
    for record in ordered:
        if not is_boot_failure(record):
            break
        failed.append(record)
    if len(failed) < limit:
        return None
    newest = parse_time(failed[0].get("Started"))
    if newest is None or now - newest > window:
        return None
    return (f"{len(failed)} boots failed in a row (last: {failed[0].get('InstanceID', '?')}: "
            f"{failed[0].get('Last_Line', '')}); fix the image or setup and redeploy, then "
            f"`pyanamo fleet scale STACK N`")
