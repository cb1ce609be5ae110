"""The PyAnamo stack: wires the constructs (each grants and justifies what it owns) and states
its outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from pyanamo import fleet, schema
from pyanamo.scaler import Reaping

from .backlog_scaler import BacklogScaler
from .log_bucket import LogBucket
from .results_bucket import ResultsBucket, grant_read_inputs
from .runtime_asset import RUNTIME
from .settings import Settings
from .task_table import TaskTable
from .worker_fleet import FleetProps, WorkerFleet

BOOTSTRAP_SECONDS = 1200  # the bootstrap's own time, before and after the user's setup, at most


def fleet_props(settings: Settings) -> FleetProps:
    return FleetProps(
        instance_types=settings.instance_types, arm64=settings.arm64, spot=settings.spot,
        fleet_size=settings.fleet_size,
        volume_size=settings.volume_size, assign_public_ip=settings.assign_public_ip,
        worker_args=tuple(settings.worker_args()), vpc_id=settings.vpc_id, subnet_ids=settings.subnet_ids,
        machine_image=settings.machine_image, setup=Path(settings.setup).resolve() if settings.setup else None,
        setup_timeout=settings.setup_timeout, ssm=settings.ssm,
    )


class PyAnamoStack(Stack):
    def __init__(self, scope: Construct, id: str, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(scope, id, **kwargs)
        tasks = TaskTable(self, "Tasks", table_name=settings.table, retain=settings.retain)
        logs = LogBucket(self, "Logs", expiry_days=settings.log_expiry_days, retain=settings.retain,
                         empty_on_destroy=settings.empty_log_bucket_on_destroy)
        results = ResultsBucket(self, "Results", existing=settings.output_bucket, retain=settings.retain,
                                uncommitted_expiry_days=settings.uncommitted_expiry_days)
        workers = WorkerFleet(self, "Workers", props=fleet_props(settings), runtime_path=RUNTIME,
                              table_name=tasks.table.table_name, log_bucket=logs.location,
                              outputs=results.location)
        tasks.grant_worker(workers.role)
        logs.grant_write_logs(workers.role)
        results.grant_commit(workers.role)
        grant_read_inputs(workers.job_role, settings.input_buckets)
        if settings.scaler:
            BacklogScaler(
                self, "Scaler", runtime_path=RUNTIME, table_name=tasks.table.table_name,
                table_arn=tasks.table.table_arn, state_index_arn=tasks.index_arn(schema.STATE_INDEX),
                group_name=workers.group.auto_scaling_group_name, group_arn=workers.group_arn(),
                items_per_instance=settings.scaler_items_per_instance,
                reaping=Reaping(lease=settings.lease, boot_grace=settings.setup_timeout + BOOTSTRAP_SECONDS,
                                max_instance_hours=settings.max_instance_hours),
            )
        CfnOutput(self, fleet.OUTPUT_TABLE, value=tasks.table.table_name)
        CfnOutput(self, fleet.OUTPUT_GROUP, value=workers.group.auto_scaling_group_name)
        CfnOutput(self, fleet.OUTPUT_LOG_BUCKET, value=logs.bucket.bucket_name)
        CfnOutput(self, fleet.OUTPUT_RESULTS, value=results.location)
