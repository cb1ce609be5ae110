"""Least privilege, proven: the stack deployed on a moto server of its own, whose IAM is then
enforced; a real worker (log bucket, worker record, outputs, price lookup), `fleet leave` and the
backlog scaler run with exactly the permissions the deployed roles hold, and every AWS call they
made is checked against the deployed policies, resources and conditions included.

moto enforces actions only (it authorizes DynamoDB against the resource '*', and an Allow whose
condition keys it cannot fill counts as a Deny), so the identities moto checks hold each role's
statements with Resource '*' and no Condition; the scoping is judged by ``iam_eval`` against the
policies as deployed, from every call recorded (``tests/hooks``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from conftest import _local_endpoint
from iam_eval import allowed, glob_match, requests_of

from pyanamo.model import Item, Subtask

from helpers import ACCOUNT, REGION, REPO, StubImds, put_items, upload_assets, wait_active, wait_for_stack

HOOKS = REPO / "tests" / "hooks"
PROBE = REPO / "tests" / "hooks" / "probe_access.py"  # a sub-task that tries what user code might


def client(url: str, service: str, keys: tuple[str, str] = ("admin", "admin")) -> Any:
    return boto3.client(service, endpoint_url=url, region_name=REGION, aws_access_key_id=keys[0],
                        aws_secret_access_key=keys[1])


def enforce(url: str, on: bool) -> None:
    """moto's switch: from the next request on, every request is authorized (or none is)."""
    request = urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0" if on else b"inf", method="POST",
                                     headers={"Content-Type": "text/plain"})  # a form body reads as empty
    urllib.request.urlopen(request, timeout=10).read()  # noqa: S310 - the test's own local server


class Deployed:
    """The stack on the private moto server: its outputs, roles' policies and physical names."""

    def __init__(self, url: str, tmp: Path) -> None:
        import app

        self.url = url
        ec2 = client(url, "ec2")
        vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
        subnets = [s["SubnetId"] for s in ec2.describe_subnets(
            Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]][:2]
        self.name = f"IamTest{uuid.uuid4().hex[:8]}"
        self.table = f"{self.name}-tasks"
        context = {"stack_name": self.name, "table": self.table, "vpc_id": vpc, "subnet_ids": ",".join(subnets),
                   "fleet_size": "2", "bootstrap_version_rule": "false", "input_buckets": "iam-inputs/cohort1"}
        assembly = tmp / "cdk.out"
        app.build_app(context, outdir=str(assembly)).synth()
        self.template = json.loads((assembly / f"{self.name}.template.json").read_text())
        upload_assets(client(url, "s3"), assembly, self.name)
        cloudformation = client(url, "cloudformation")
        cloudformation.create_stack(StackName=self.name, TemplateBody=json.dumps(self.template),
                                    Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"])
        stack = wait_for_stack(cloudformation, self.name)
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        resources = [r for page in cloudformation.get_paginator("list_stack_resources").paginate(StackName=self.name)
                     for r in page["StackResourceSummaries"]]
        self.physical = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources}
        iam = client(url, "iam")
        self.statements: dict[str, list[dict[str, Any]]] = {"fleet": [], "scaler": [], "job": []}
        self.roles: dict[str, str] = {}
        for logical, role in self.physical.items():
            if self.template["Resources"].get(logical, {}).get("Type") != "AWS::IAM::Role":
                continue
            who = ("fleet" if logical.startswith("WorkersRole") else "job" if logical.startswith("WorkersJobRole")
                   else "scaler" if logical.startswith("Scaler") else None)
            if who is None:
                continue
            self.roles[who] = role
            for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
                document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
                document = json.loads(document) if isinstance(document, str) else document
                self.statements[who] += document["Statement"]
        assert all(self.statements.values()), (self.statements, self.physical)
        self.job_role_arn = iam.get_role(RoleName=self.roles["job"])["Role"]["Arn"]
        self.group = self.outputs["GroupName"]
        self.log_location = f"{self.outputs['LogBucketName']}/logs"
        self.results = self.outputs["ResultsLocation"]

    def user(self, name: str, statements: list[dict[str, Any]]) -> tuple[str, str]:
        """An IAM user holding ``statements`` as moto can enforce them (Resource '*', no Condition)."""
        iam = client(self.url, "iam")
        iam.create_user(UserName=name)
        widened = [{"Effect": s["Effect"], "Action": s["Action"], "Resource": "*"} for s in statements]
        iam.put_user_policy(UserName=name, PolicyName="role", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": widened}))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def job_role_for(self, user: str) -> None:
        """The job role as moto can enforce it: its statements with Resource '*', and trusting
        ``user`` (moto's identities here are users; on AWS the instance role assumes it)."""
        iam = client(self.url, "iam")
        arn = iam.get_user(UserName=user)["User"]["Arn"]
        iam.update_assume_role_policy(RoleName=self.roles["job"], PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": arn}, "Action": "sts:AssumeRole"}]}))
        for name in iam.list_role_policies(RoleName=self.roles["job"])["PolicyNames"]:
            iam.delete_role_policy(RoleName=self.roles["job"], PolicyName=name)
        widened = [{"Effect": s["Effect"], "Action": s["Action"], "Resource": "*"} for s in self.statements["job"]]
        iam.put_role_policy(RoleName=self.roles["job"], PolicyName="job", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": widened}))


@pytest.fixture(scope="module")
def moto_iam() -> Any:
    """A moto server for this module alone: its IAM is switched on and off here."""
    yield from _local_endpoint("--engine", "moto", "--open")  # IAM's keys sign, not pyanamo local's secret


@pytest.fixture(scope="module")
def deployed(moto_iam: str, tmp_path_factory) -> Deployed:
    return Deployed(moto_iam, tmp_path_factory.mktemp("iam"))


def environment(url: str, keys: tuple[str, str], calls: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYANAMO_"))}
    env.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID=keys[0], AWS_SECRET_ACCESS_KEY=keys[1],
               AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION, AWS_MAX_ATTEMPTS="2",
               PYANAMO_CALLS_FILE=str(calls), PYTHONPATH=f"{HOOKS}{os.pathsep}{env.get('PYTHONPATH', '')}",
               PYANAMO_LOCAL_SECRET_FILE=str(calls.parent / "no-local-secret"),  # IAM's keys, not pyanamo local's
               **extra)
    return env


def recorded(calls: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def run_fleet_worker(deployed: Deployed, keys: tuple[str, str], instance_id: str, item_id: str,
                     tmp: Path) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess, Path]:
    """`pyanamo worker` with the fleet's own arguments (from the launch template's user-data)
    on an "instance" (stub metadata service), then `pyanamo fleet leave`, both with ``keys``."""
    calls = tmp / "calls.jsonl"
    metadata = {"instance-type": "c6i.large", "instance-life-cycle": "spot",
                "placement/availability-zone": "us-east-1a"}
    args = ["--lease", "10", "--items", "1", "--max-attempts", "1", "--log-bucket", deployed.log_location,
            "--outputs", deployed.results, "--job-role", deployed.job_role_arn,
            "--log-dir", str(tmp / "logs"), "--workdir", str(tmp)]
    with StubImds(instance_id, metadata) as imds:
        env = environment(deployed.url, keys, calls, AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
        worker = subprocess.run([sys.executable, "-m", "pyanamo", "worker", deployed.table, *args], env=env,
                                capture_output=True, text=True, timeout=180)
        leave = subprocess.run([sys.executable, "-m", "pyanamo", "fleet", "leave", "--worker-exit",
                                str(worker.returncode)], env=env, capture_output=True, text=True, timeout=60)
    return worker, leave, calls


def group_instance(deployed: Deployed, count: int) -> list[str]:
    autoscaling = client(deployed.url, "autoscaling")
    autoscaling.set_desired_capacity(AutoScalingGroupName=deployed.group, DesiredCapacity=count)
    group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[deployed.group])["AutoScalingGroups"][0]
    return [i["InstanceId"] for i in group["Instances"]]


def check_scoping(deployed: Deployed, role: str, calls: list[dict[str, Any]], instances: list[str]) -> int:
    group_arn = (f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:"
                 f"0f0f0f0f-1111-2222-3333-444455556666:autoScalingGroupName/{deployed.group}")
    group_arn_of = {deployed.group: group_arn, **{i: group_arn for i in instances}}
    checked = 0
    for call in calls:
        for action, resource, context in requests_of(call, account=ACCOUNT, region=REGION, group_arn_of=group_arn_of):
            assert allowed(deployed.statements[role], action, resource, context), (role, action, resource, context)
            checked += 1
    return checked


def test_the_fleet_and_the_scaler_run_with_exactly_their_deployed_permissions(deployed: Deployed, tmp_path: Path):
    admin = client(deployed.url, "iam")
    admin.list_users()  # the admin's requests are made before IAM is switched on
    fleet_keys = deployed.user("fleet", deployed.statements["fleet"])
    scaler_keys = deployed.user("scaler", deployed.statements["scaler"])
    dynamodb = client(deployed.url, "dynamodb")
    wait_active(dynamodb, deployed.table)
    deployed.job_role_for("fleet")
    s3 = client(deployed.url, "s3")
    s3.create_bucket(Bucket="iam-inputs")
    s3.put_object(Bucket="iam-inputs", Key="cohort1/S1.fq", Body=b"@r1\nACGT\n+\nIIII\n")
    job_calls = tmp_path / "job-calls.jsonl"
    put_items(dynamodb, deployed.table, [Item("S1", "S1", (
        Subtask("Task_0", 'echo aligned > "$PYANAMO_OUTDIR/S1.bam"'),
        Subtask("Task_1", 'cat "$PYANAMO_ITEM_OUTPUTS/Task_0/S1.bam" > "$PYANAMO_OUTDIR/S1.vcf"'),
        Subtask("Task_2", f'PYANAMO_CALLS_FILE={job_calls} {sys.executable} {PROBE} {deployed.table} '
                          '> "$PYANAMO_OUTDIR/access.txt"')), dependents=frozenset({"joint"})),
        # a workflow's next step: the worker that ends S1 releases it, then runs it
        Item("joint", "J", (Subtask("Task_0", "true"),), after=("S1",), waiting_on=frozenset({"S1"}))])
    instances = group_instance(deployed, 1)
    enforce(deployed.url, on=True)
    try:
        worker, leave, fleet_calls = run_fleet_worker(deployed, fleet_keys, instances[0], "S1", tmp_path)
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):  # enforcement is on
            client(deployed.url, "dynamodb", fleet_keys).scan(TableName=deployed.table)
    finally:
        enforce(deployed.url, on=False)
    # later steps waiting for S1, which is done, with no edge on S1: as if the release was lost with
    # its worker; the scaler, finding nothing else to run, releases them and raises the fleet for them
    put_items(dynamodb, deployed.table, [Item(f"later{n}", "L", (Subtask("Task_0", "true"),), after=("S1",),
                                              waiting_on=frozenset({"S1"})) for n in range(2)])
    enforce(deployed.url, on=True)
    try:  # the scaler, once there are worker records to read and a backlog to raise the fleet for
        scaler_calls = tmp_path / "scaler-calls.jsonl"
        scaled = subprocess.run(
            [sys.executable, "-c", "from pyanamo import scaler; print(scaler.handler({}, None))"],
            env=environment(deployed.url, scaler_keys, scaler_calls, TABLE_NAME=deployed.table,
                            GROUP_NAME=deployed.group, ITEMS_PER_INSTANCE="1"),
            capture_output=True, text=True, timeout=60)
    finally:
        enforce(deployed.url, on=False)
    assert scaled.returncode == 0 and "'desired': 2" in scaled.stdout, scaled.stdout + scaled.stderr[-2000:]
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert "AccessDenied" not in worker.stderr and "permission_denied" not in worker.stderr, worker.stderr[-3000:]
    assert leave.returncode == 0 and f"instance {instances[0]} left" in leave.stdout, leave.stderr
    item = dynamodb.get_item(TableName=deployed.table, Key={"itemID": {"S": "S1"}})["Item"]
    assert item["lockID"]["S"] == "done"
    states = {i: dynamodb.get_item(TableName=deployed.table, Key={"itemID": {"S": i}})["Item"]["lockID"]["S"]
              for i in ("joint", "later0", "later1")}
    assert states == {"joint": "done", "later0": "todo", "later1": "todo"} and "'released': 2" in scaled.stdout
    assert item["TaskScript"]["M"]["Task_1"]["M"]["Outputs"]["M"]["Count"]["N"] == "1"
    # The user's code: the job role's credentials, not the worker's; it reads its inputs and
    # cannot touch the table (moto enforces the action); it cannot read other prefixes (the
    # deployed policy's resource, judged by the evaluator).
    location = item["TaskScript"]["M"]["Task_2"]["M"]["Outputs"]["M"]["Location"]["S"]
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    access = s3.get_object(Bucket=bucket, Key=f"{prefix}access.txt")["Body"].read().decode().split()
    assert access == ["identity", "assumed-role", "read", "ok", "table", "AccessDenied"], access
    probes = recorded(job_calls)
    read = [c for c in probes if c["operation"] == "GetObject"]
    assert check_scoping(deployed, "job", read, instances) == 1
    elsewhere = {**read[0], "params": {**read[0]["params"], "Key": "cohort2/S9.fq"}}
    (request,) = requests_of(elsewhere, account=ACCOUNT, region=REGION, group_arn_of={})
    assert not allowed(deployed.statements["job"], *request)
    assert not any(allowed(deployed.statements["job"], f"dynamodb:{op}", "*") for op in ("PutItem", "UpdateItem"))
    records = dynamodb.scan(TableName=deployed.table, FilterExpression="begins_with(itemID, :w)",
                            ExpressionAttributeValues={":w": {"S": "pyanamo-worker#"}})["Items"]
    assert len(records) == 1 and records[0]["Exit_Reason"]["S"] == "drained"

    calls = recorded(fleet_calls)
    operations = {f"{c['service']}:{c['operation']}" for c in calls}
    assert {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query", "s3:PutObject", "s3:DeleteObjectTagging",
            "autoscaling:TerminateInstanceInAutoScalingGroup", "ec2:DescribeSpotPriceHistory"} <= operations
    assert check_scoping(deployed, "fleet", calls, instances) >= len(calls)
    calls = recorded(scaler_calls)
    assert {"dynamodb:Query", "dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:UpdateItem",
            "autoscaling:DescribeAutoScalingGroups",
            "autoscaling:SetDesiredCapacity", "autoscaling:SuspendProcesses", "ec2:DescribeInstances"} <= {
        f"{c['service']}:{c['operation']}" for c in calls}
    assert check_scoping(deployed, "scaler", calls, instances) >= len(calls)


def test_a_missing_statement_is_a_clear_failure_naming_the_action(deployed: Deployed, tmp_path: Path):
    without_put = [s for s in deployed.statements["fleet"] if "dynamodb:PutItem" not in json.dumps(s["Action"])]
    assert len(without_put) == len(deployed.statements["fleet"]) - 1
    keys = deployed.user("fleet-without-putitem", without_put)
    deployed.job_role_for("fleet-without-putitem")
    dynamodb = client(deployed.url, "dynamodb")
    put_items(dynamodb, deployed.table, [Item("S2", "S2", (Subtask("Task_0", "true"),))])
    instances = group_instance(deployed, 1)
    enforce(deployed.url, on=True)
    try:
        worker, _, _ = run_fleet_worker(deployed, keys, instances[0], "S2", tmp_path)
    finally:
        enforce(deployed.url, on=False)
    assert worker.returncode == 0, worker.stderr[-3000:]
    warnings = [json.loads(line) for line in worker.stderr.splitlines() if '"permission_denied"' in line]
    assert len(warnings) == 1 and warnings[0]["action"] == "dynamodb:PutItem", worker.stderr[-3000:]
    status = subprocess.run([sys.executable, "-m", "pyanamo", "status", deployed.table, "--json"],
                            env=environment(deployed.url, ("admin", "admin"), tmp_path / "status-calls.jsonl"),
                            capture_output=True, text=True, timeout=60)
    assert "AccessDenied on dynamodb:PutItem" in json.loads(status.stdout)["warnings"][0]


@pytest.mark.parametrize("action, resource, context, expected", [
    ("dynamodb:GetItem", "arn:aws:dynamodb:r:1:table/T", {}, True),
    ("dynamodb:getitem", "arn:aws:dynamodb:r:1:table/T", {}, True),  # actions match case-insensitively
    ("dynamodb:GetItem", "arn:aws:dynamodb:r:1:table/Other", {}, False),
    ("dynamodb:Scan", "arn:aws:dynamodb:r:1:table/T", {}, False),
    ("dynamodb:PutItem", "arn:aws:dynamodb:r:1:table/T", {"dynamodb:LeadingKeys": ["pyanamo-worker#h:1#2"]}, True),
    ("dynamodb:PutItem", "arn:aws:dynamodb:r:1:table/T", {"dynamodb:LeadingKeys": ["S1"]}, False),
    ("s3:GetObject", "arn:aws:s3:::in/cohort1/a.bam", {}, True),
    ("s3:GetObject", "arn:aws:s3:::in/cohort2/a.bam", {}, False),
    ("s3:ListBucket", "arn:aws:s3:::in", {"s3:prefix": ["cohort1/"]}, True),
    ("s3:ListBucket", "arn:aws:s3:::in", {"s3:prefix": ["cohort2/"]}, False),
    ("s3:DeleteObject", "arn:aws:s3:::in/cohort1/a.bam", {}, False),  # the explicit Deny wins
])
def test_the_evaluator_on_known_cases(action, resource, context, expected):
    statements = [
        {"Effect": "Allow", "Action": ["dynamodb:GetItem"], "Resource": "arn:aws:dynamodb:r:1:table/T"},
        {"Effect": "Allow", "Action": "dynamodb:PutItem", "Resource": "arn:aws:dynamodb:r:1:table/T",
         "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["pyanamo-worker#*"]}}},
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:DeleteObject"], "Resource": "arn:aws:s3:::in/cohort1/*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::in",
         "Condition": {"StringLike": {"s3:prefix": ["cohort1/*", "cohort1"]}}},
        {"Effect": "Deny", "Action": "s3:Delete*", "Resource": "*"},
    ]
    assert allowed(statements, action, resource, context) is expected
    assert glob_match("a*c?", "abbbcd") and not glob_match("a*c?", "abbbc")
