"""The synthesized stack deployed on moto's server, read back through the service APIs, deleted.

Deployment as the CDK CLI does it: assets zipped and uploaded to the bootstrap bucket, then the
template created as a CloudFormation stack (boto3 `create_stack` on moto's server).
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import pytest

from pyanamo import schema
from pyanamo.aws import Endpoint, aws_client

from helpers import cli, upload_assets, wait_for_stack

pytestmark = pytest.mark.moto_only  # the stack deploys to moto's CloudFormation, its table into moto

@pytest.fixture
def services(aws_env):
    endpoint = Endpoint()
    return {name: aws_client(name, endpoint) for name in
            ("cloudformation", "s3", "ec2", "autoscaling", "dynamodb", "lambda", "events", "iam")}


def test_stack_deploys_on_moto_reads_back_and_deletes(aws_env, services, tmp_path: Path):
    import app

    ec2, cloudformation = services["ec2"], services["cloudformation"]
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    in_vpc = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    subnets = [s["SubnetId"] for s in in_vpc][:2]
    name = f"PyAnamoTest{uuid.uuid4().hex[:8]}"
    table = f"{name}-tasks"
    context = {
        "stack_name": name, "table": table, "vpc_id": vpc, "subnet_ids": ",".join(subnets),
        "fleet_size": "4", "spot": "true", "instance_types": "c6i.large,c5.large",
        # moto cannot run the Lambda-backed custom resource that empties the bucket, nor check
        # the bootstrap version parameter: both off here, both on by default.
        "empty_log_bucket_on_destroy": "false", "bootstrap_version_rule": "false",
    }
    assembly = tmp_path / "cdk.out"
    app.build_app(context, outdir=str(assembly)).synth()
    upload_assets(services["s3"], assembly, name)

    cloudformation.create_stack(
        StackName=name, TemplateBody=(assembly / f"{name}.template.json").read_text(),
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"])
    stack = wait_for_stack(cloudformation, name)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["TableName"] == table

    # The table and its indexes, as the runtime defines them.
    described = services["dynamodb"].describe_table(TableName=table)["Table"]
    assert {g["IndexName"] for g in described["GlobalSecondaryIndexes"]} == {i.name for i in schema.INDEXES}
    assert described["KeySchema"] == [{"AttributeName": schema.PARTITION_KEY, "KeyType": "HASH"}]

    # The group and its launch template: IMDSv2 and the bootstrap in the user-data.
    group = services["autoscaling"].describe_auto_scaling_groups(
        AutoScalingGroupNames=[outputs["GroupName"]])["AutoScalingGroups"][0]
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 4, 0)
    spec = group["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"]
    data = ec2.describe_launch_template_versions(LaunchTemplateId=spec["LaunchTemplateId"])[
        "LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    user_data = base64.b64decode(data["UserData"]).decode()
    assert f"export PYANAMO_TABLE='{table}'" in user_data
    assert f"--log-bucket {outputs['LogBucketName']}/logs" in user_data
    assert "systemctl enable --now pyanamo-worker.service" in user_data
    assert f"--outputs {outputs['ResultsLocation']}" in user_data

    # The results bucket exists (moto's CloudFormation does not apply a bucket's
    # LifecycleConfiguration: GetBucketLifecycleConfiguration answers NoSuchLifecycleConfiguration;
    # tests/infra checks the rule in the template).
    results_bucket = outputs["ResultsLocation"].removeprefix("s3://").split("/")[0]
    assert services["s3"].head_bucket(Bucket=results_bucket)

    # The fleet CLI reads the stack's outputs, as a user would.
    status = cli("fleet", "status", name, env={**aws_env, "COLUMNS": "200"})
    assert status.returncode == 0, status.stderr
    assert f"fleet {outputs['GroupName']} (table {table}): desired 0, min 0, max 4" in status.stdout
    scaled = cli("fleet", "scale", name, "2", env=aws_env)
    assert scaled.returncode == 0 and "desired capacity 2 (max 4)" in scaled.stdout
    assert len(services["autoscaling"].describe_auto_scaling_groups(
        AutoScalingGroupNames=[outputs["GroupName"]])["AutoScalingGroups"][0]["Instances"]) == 2
    too_many = cli("fleet", "scale", name, "9", env=aws_env)
    assert too_many.returncode == 2 and "between 0 and 4" in too_many.stderr

    # The backlog scaler and its schedule.
    functions = [f for f in services["lambda"].list_functions()["Functions"]
                 if f["Handler"] == "pyanamo.scaler.handler"]
    assert [f["Environment"]["Variables"]["TABLE_NAME"] for f in functions] == [table]
    rules = services["events"].list_rules()["Rules"]
    assert any(r.get("ScheduleExpression") == "rate(1 minute)" for r in rules)
    assert services["s3"].head_bucket(Bucket=outputs["LogBucketName"])

    # Delete: the group and launch template go with the stack; the run (table, results) is kept.
    services["autoscaling"].set_desired_capacity(AutoScalingGroupName=outputs["GroupName"], DesiredCapacity=0)
    cloudformation.delete_stack(StackName=name)
    assert wait_for_stack(cloudformation, stack["StackId"])["StackStatus"] == "DELETE_COMPLETE"
    assert table in services["dynamodb"].list_tables()["TableNames"]
    assert services["s3"].head_bucket(Bucket=results_bucket)
    assert not services["autoscaling"].describe_auto_scaling_groups(
        AutoScalingGroupNames=[outputs["GroupName"]])["AutoScalingGroups"]
    remaining = {t["LaunchTemplateId"] for t in ec2.describe_launch_templates()["LaunchTemplates"]}
    assert spec["LaunchTemplateId"] not in remaining
