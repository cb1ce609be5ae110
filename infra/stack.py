"""The PyAnamo stack: wires the constructs, grants least privilege, states its outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, Stack
from aws_cdk import aws_iam as iam
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import Construct

from pyanamo import fleet, schema

from .backlog_scaler import BacklogScaler
from .log_bucket import LogBucket
from .settings import Settings
from .task_table import TaskTable
from .worker_fleet import WorkerFleet

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"

# What a worker does to the table: claim and write items (UpdateItem), read them, query indexes.
# The group's ARN has a UUID in the middle that AWS assigns at creation: the one wildcard.
GROUP_ARN = {"regex": "/^Resource::arn:<AWS::Partition>:autoscaling:<AWS::Region>:<AWS::AccountId>:"
                      "autoScalingGroup:\\*:autoScalingGroupName/<WorkersGroup[A-Za-z0-9]+>$/"}
GROUP_ARN_REASON = "The group is named; the '*' stands for the UUID AWS puts in its ARN at creation."

WORKER_TABLE_ACTIONS = ["dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query", "dynamodb:DescribeTable"]


class PyAnamoStack(Stack):
    def __init__(self, scope: Construct, id: str, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(scope, id, **kwargs)
        tasks = TaskTable(self, "Tasks", table_name=settings.table, retain=settings.retain)
        logs = LogBucket(self, "Logs", expiry_days=settings.log_expiry_days, retain=settings.retain,
                         empty_on_destroy=settings.empty_log_bucket_on_destroy)
        workers = WorkerFleet(
            self, "Workers", settings=settings, runtime_path=RUNTIME,
            table_name=tasks.table.table_name, log_bucket=f"{logs.bucket.bucket_name}/{logs.prefix}",
        )

        role = workers.role
        role.add_to_policy(iam.PolicyStatement(
            actions=WORKER_TABLE_ACTIONS, resources=[tasks.table.table_arn]))
        role.add_to_policy(iam.PolicyStatement(actions=["dynamodb:Query"], resources=tasks.index_arns()))
        role.add_to_policy(iam.PolicyStatement(
            actions=["s3:GetObject"],
            resources=[workers.runtime.bucket.arn_for_objects(workers.runtime.s3_object_key)]))
        role.add_to_policy(iam.PolicyStatement(actions=["s3:PutObject"], resources=[logs.objects_arn()]))
        # Its own policy: the launch template waits for the role's default policy, and this one
        # names the group, which waits for the launch template.
        iam.Policy(self, "LeaveGroup", roles=[role], statements=[iam.PolicyStatement(
            actions=["autoscaling:TerminateInstanceInAutoScalingGroup"], resources=[workers.group_arn()])])

        scaler = None
        if settings.scaler:
            scaler = BacklogScaler(
                self, "Scaler", runtime_path=RUNTIME, table_name=tasks.table.table_name,
                state_index_arn=tasks.index_arn(schema.STATE_INDEX),
                group_name=workers.group.auto_scaling_group_name, group_arn=workers.group_arn(),
                items_per_instance=settings.scaler_items_per_instance,
            )

        CfnOutput(self, fleet.OUTPUT_TABLE, value=tasks.table.table_name)
        CfnOutput(self, fleet.OUTPUT_GROUP, value=workers.group.auto_scaling_group_name)
        CfnOutput(self, fleet.OUTPUT_LOG_BUCKET, value=logs.bucket.bucket_name)

        self._suppress(workers, logs, scaler, new_vpc=settings.vpc_id is None)

    def _suppress(self, workers: WorkerFleet, logs: LogBucket, scaler: BacklogScaler | None, new_vpc: bool) -> None:
        """cdk-nag findings that are by design, each with its reason."""
        NagSuppressions.add_resource_suppressions(workers.role, [
            NagPackSuppression(id="AwsSolutions-IAM4", reason=(
                "AmazonSSMManagedInstanceCore is AWS's documented policy for Session Manager, "
                "the only way onto the instances (no SSH, no inbound rule)."),
                applies_to=["Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore"]),
            NagPackSuppression(id="AwsSolutions-IAM5", reason=(
                "Log object keys are per item and sub-task, so the worker may write any key under the "
                "log prefix."),
                applies_to=[
                    {"regex": "/^Resource::<LogsBucket.*\\.Arn>/logs/\\*$/"},
                ]),
        ], apply_to_children=True)
        NagSuppressions.add_resource_suppressions(self.node.find_child("LeaveGroup"), [
            NagPackSuppression(id="AwsSolutions-IAM5", reason=GROUP_ARN_REASON, applies_to=[GROUP_ARN]),
        ], apply_to_children=True)
        NagSuppressions.add_resource_suppressions(workers.group, [
            NagPackSuppression(id="AwsSolutions-AS3", reason=(
                "Instances leave the group by design whenever the queue is drained; `pyanamo fleet "
                "status` and `pyanamo status` are how a run is watched, not scaling notifications.")),
            NagPackSuppression(id="CdkNagValidationFailure", reason=(
                "EC26 cannot follow the mixed-instances policy to the launch template; its root "
                "volume is encrypted (tests/infra asserts Encrypted on the launch template)."),
                applies_to=["AwsSolutions-EC26"]),
        ], apply_to_children=True)
        NagSuppressions.add_resource_suppressions(logs.bucket, [
            NagPackSuppression(id="AwsSolutions-S1", reason=(
                "This bucket holds task logs; access logging it would need another bucket for logs of logs.")),
        ], apply_to_children=True)
        if new_vpc:
            NagSuppressions.add_resource_suppressions(workers.vpc, [
                NagPackSuppression(id="AwsSolutions-VPC7", reason=(
                    "Workers accept no inbound traffic; flow logs cost per GB of batch-job traffic and are "
                    "left to the user (or bring your own VPC with -c vpc_id).")),
            ], apply_to_children=True)
        if scaler:
            NagSuppressions.add_resource_suppressions(scaler, [
                NagPackSuppression(id="AwsSolutions-IAM4", reason=(
                    "AWSLambdaBasicExecutionRole only lets the function write its own logs."),
                    applies_to=["Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]),
                NagPackSuppression(id="AwsSolutions-IAM5", reason=(
                    "DescribeAutoScalingGroups has no resource-level permissions (AWS offers only '*'); "
                    "SetDesiredCapacity names the group, whose ARN has an AWS-assigned UUID."),
                    applies_to=["Resource::*", GROUP_ARN]),
            ], apply_to_children=True)
