"""The task table, built from the runtime's single table definition."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from constructs import Construct

from pyanamo import schema
from pyanamo.worker_record import WORKER_RECORD_PREFIX

# What a worker does to the table: claim and write items (UpdateItem), read them, query indexes.
WORKER_TABLE_ACTIONS = ["dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:Query", "dynamodb:DescribeTable"]


class TaskTable(Construct):
    def __init__(self, scope: Construct, id: str, *, table_name: str, retain: bool) -> None:
        super().__init__(scope, id)
        self.table = dynamodb.Table(
            self,
            "Table",
            table_name=table_name,
            partition_key=dynamodb.Attribute(name=schema.PARTITION_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
        )
        for index in schema.INDEXES:
            self.table.add_global_secondary_index(
                index_name=index.name,
                partition_key=dynamodb.Attribute(name=index.partition_key, type=dynamodb.AttributeType.STRING),
                sort_key=dynamodb.Attribute(name=index.sort_key, type=dynamodb.AttributeType.STRING),
                projection_type=(
                    dynamodb.ProjectionType.INCLUDE if index.projection else dynamodb.ProjectionType.KEYS_ONLY
                ),
                non_key_attributes=list(index.projection) or None,
            )

    def grant_worker(self, role: iam.IRole) -> None:
        """What a worker needs: read and update items, query every index (each named)."""
        role.add_to_principal_policy(iam.PolicyStatement(actions=WORKER_TABLE_ACTIONS,
                                                         resources=[self.table.table_arn]))
        role.add_to_principal_policy(iam.PolicyStatement(actions=["dynamodb:Query"], resources=self.index_arns()))
        # The worker's own record (pyanamo.worker_record) is a PutItem: only rows whose key is a
        # worker record's, never an item.
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["dynamodb:PutItem"], resources=[self.table.table_arn],
            conditions={"ForAllValues:StringLike": {"dynamodb:LeadingKeys": [f"{WORKER_RECORD_PREFIX}*"]}}))

    def index_arns(self) -> list[str]:
        """The ARN of each index by name: IAM statements name them, never `index/*`."""
        return [f"{self.table.table_arn}/index/{index.name}" for index in schema.INDEXES]

    def index_arn(self, index: schema.Index) -> str:
        return f"{self.table.table_arn}/index/{index.name}"
