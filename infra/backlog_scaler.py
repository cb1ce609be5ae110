"""The backlog scaler: a one-minute schedule runs `pyanamo.scaler.handler` in a Lambda."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from pyanamo.scaler import Reaping

from .nag import GROUP_ARN, suppress
from .runtime_asset import ASSET_EXCLUDE


class BacklogScaler(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        runtime_path: Path,
        table_name: str,
        table_arn: str,
        state_index_arn: str,
        group_name: str,
        group_arn: str,
        items_per_instance: int,
        reaping: Reaping,
    ) -> None:
        super().__init__(scope, id)
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=lambda_.Runtime.PYTHON_3_14,
            handler="pyanamo.scaler.handler",
            code=lambda_.Code.from_asset(str(runtime_path), exclude=ASSET_EXCLUDE),
            timeout=Duration.seconds(60),
            memory_size=256,
            description="PyAnamo: raise the fleet to the todo backlog",
            environment={
                "TABLE_NAME": table_name,
                "GROUP_NAME": group_name,
                "ITEMS_PER_INSTANCE": str(items_per_instance),
                "LEASE_SECONDS": f"{reaping.lease:g}",
                "BOOT_GRACE_SECONDS": f"{reaping.boot_grace:g}",
                "MAX_INSTANCE_HOURS": f"{reaping.max_instance_hours:g}",
            },
            log_group=logs.LogGroup(
                self, "Logs", retention=logs.RetentionDays.ONE_MONTH, removal_policy=RemovalPolicy.DESTROY
            ),
        )
        # The backlog and the worker records: Query on the state index, the records' rows by key;
        # waiting items and the items they wait for read, and released (pyanamo.dependencies).
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["dynamodb:Query"], resources=[state_index_arn]))
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:UpdateItem"], resources=[table_arn]))
        # Raise the fleet; end an instance that outlived its purpose (pyanamo.scaler.reap); keep
        # AZRebalance suspended (it would end busy instances to even out the zones).
        self.function.add_to_role_policy(iam.PolicyStatement(
            actions=["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup",
                     "autoscaling:SuspendProcesses"],
            resources=[group_arn]))
        self.describe_statement = iam.PolicyStatement(
            actions=["autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances"], resources=["*"])
        self.function.add_to_role_policy(self.describe_statement)
        suppress(self, "AwsSolutions-IAM4", "AWSLambdaBasicExecutionRole only lets the function write its own logs.",
                 ["Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"])
        suppress(self, "AwsSolutions-IAM5",
                 "DescribeAutoScalingGroups and DescribeInstances have no resource-level permissions (AWS "
                 "offers only '*'); SetDesiredCapacity and TerminateInstanceInAutoScalingGroup name the group, "
                 "whose ARN has an AWS-assigned UUID.",
                 ["Resource::*", GROUP_ARN])
        self.schedule = events.Rule(
            self,
            "Schedule",
            schedule=events.Schedule.rate(Duration.minutes(1)),
            targets=[targets.LambdaFunction(self.function)],
        )
