"""The CDK app, synthesized for real and checked with assertions, cdk-nag and cfn-lint."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Annotations, Match, Template

from infra.settings import Settings, context_keys
from pyanamo import schema

from helpers import REPO

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

VARIANT_CONTEXT = {
    "table": "HaplotypeCaller", "spot": "true", "fleet_size": "20",
    "instance_types": "c6i.2xlarge,c5.2xlarge", "vpc_id": "vpc-0123456789abcdef0",
    "subnet_ids": "subnet-0aaaaaaaaaaaaaaa1,subnet-0bbbbbbbbbbbbbbb2", "retain": "false",
    "items": "2", "nests": "4", "lease": "600", "timeout": "7200", "scaler": "false",
    "machine_image": "ami-0123456789abcdef0", "setup": str(REPO / "examples" / "variant-calling" / "setup.sh"),
    "input_buckets": "my-bams/cohort1,my-references", "output_bucket": "lab-results/haplotypes", "ssm": "true",
}


class Synth:
    def __init__(self, context: dict[str, Any], outdir: Path) -> None:
        import app

        self.app = app.build_app(context, outdir=str(outdir))
        self.stack = self.app.node.children[0]
        self.template = Template.from_stack(self.stack)
        self.json = self.template.to_json()
        self.outdir = outdir
        self.app.synth()

    def resources(self, kind: str) -> dict[str, Any]:
        return self.template.find_resources(kind)

    def one(self, kind: str) -> dict[str, Any]:
        found = list(self.resources(kind).values())
        assert len(found) == 1, f"{len(found)} {kind}"
        return found[0]


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> Synth:
    return Synth({}, tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="module")
def variant(tmp_path_factory) -> Synth:
    return Synth(VARIANT_CONTEXT, tmp_path_factory.mktemp("variant"))


@pytest.fixture(params=["default", "variant"])
def synth(request) -> Synth:
    return request.getfixturevalue(request.param)


def statements(synth: Synth) -> list[dict[str, Any]]:
    found = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        found += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def render(value: Any) -> str:
    """A Fn::Join / Ref / GetAtt value as text, tokens shown as <Name>."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "Fn::Join" in value:
            sep, parts = value["Fn::Join"]
            return sep.join(render(p) for p in parts)
        if "Ref" in value:
            return f"<{value['Ref']}>"
        if "Fn::GetAtt" in value:
            return f"<{'.'.join(value['Fn::GetAtt'])}>"
        if "Fn::Base64" in value:
            return render(value["Fn::Base64"])
        if "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
            return re.sub(r"\$\{([^}]+)\}", r"<\1>", value["Fn::Sub"])
    return json.dumps(value)


# -- the table ----------------------------------------------------------------------------

def test_table_keys_and_indexes_equal_the_runtime_definition(synth: Synth):
    table = synth.one("AWS::DynamoDB::Table")["Properties"]
    expected = schema.create_table_request("x")
    assert table["KeySchema"] == expected["KeySchema"]
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(expected["AttributeDefinitions"], key=str)

    def normal(indexes):
        return sorted(
            (i["IndexName"], json.dumps(i["KeySchema"]), i["Projection"]["ProjectionType"],
             tuple(sorted(i["Projection"].get("NonKeyAttributes", []))))
            for i in indexes)

    assert normal(table["GlobalSecondaryIndexes"]) == normal(expected["GlobalSecondaryIndexes"])
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"]["SSEEnabled"] is True


def test_cdk_destroy_keeps_the_run_unless_retain_is_false(default: Synth, variant: Synth):
    table = default.one("AWS::DynamoDB::Table")
    assert table["Properties"]["TableName"] == Settings().table
    assert table["DeletionPolicy"] == "Retain"
    assert {b["DeletionPolicy"] for b in default.resources("AWS::S3::Bucket").values()} == {"Retain"}
    table = variant.one("AWS::DynamoDB::Table")
    assert table["Properties"]["TableName"] == "HaplotypeCaller"
    assert table["DeletionPolicy"] == "Delete"


def test_the_stack_name_follows_the_table_unless_given(default: Synth, variant: Synth, tmp_path: Path):
    assert default.stack.stack_name == "PyAnamo" and variant.stack.stack_name == "HaplotypeCaller"
    assert Synth({"table": "2024_trio.calls"}, tmp_path).stack.stack_name == "PyAnamo-2024-trio-calls"


# -- the fleet ----------------------------------------------------------------------------

def test_launch_template_requires_imdsv2_encrypts_and_opens_nothing(synth: Synth):
    data = synth.one("AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert "KeyName" not in data
    (device,) = data["BlockDeviceMappings"]
    assert device["Ebs"]["Encrypted"] is True and device["Ebs"]["VolumeType"] == "gp3"
    group = synth.one("AWS::EC2::SecurityGroup")["Properties"]
    assert "SecurityGroupIngress" not in group
    assert not synth.resources("AWS::EC2::SecurityGroupIngress")


def test_ami_is_the_latest_amazon_linux_2023_from_ssm(default: Synth, tmp_path: Path):
    parameters = default.json["Parameters"]
    ami = [p for p in parameters.values() if p["Type"].startswith("AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>")]
    assert [p["Default"] for p in ami] == ["/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"]
    arm = Synth({"instance_types": "c7g.xlarge,m7g.xlarge"}, tmp_path)
    assert any(p.get("Default", "").endswith("al2023-ami-kernel-6.1-arm64") for p in arm.json["Parameters"].values())


def test_user_data_installs_and_starts_the_worker_with_the_settings(default: Synth, variant: Synth):
    text = render(default.one("AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]["UserData"])
    assert text.startswith("#!/bin/bash\n")
    table_ref = default.json["Outputs"]["TableName"]["Value"]["Ref"]
    assert f"export PYANAMO_TABLE='<{table_ref}>'" in text
    assert "export PYANAMO_ASSET='s3://cdk-hnb659fds-assets-<AWS::AccountId>-<AWS::Region>/" in text
    assert ("export PYANAMO_WORKER_ARGS='--lease 300 --items 1 --nests 1 --max-attempts 2 --quiet "
            "--log-bucket <Logs") in text
    results = next(k for k in default.resources("AWS::S3::Bucket") if k.startswith("Results"))
    role = next(k for k in default.resources("AWS::IAM::Role") if k.startswith("WorkersJobRole"))
    assert f"--outputs s3://<{results}>/results --run-as pyanamo-task --job-role <{role}.Arn>'" in text
    assert "export PYANAMO_SETUP=" not in text  # no set-up script unless one is given
    assert (REPO / "infra" / "bootstrap.sh").read_text().split("\n", 1)[1] in text
    assert "systemctl enable --now pyanamo-worker.service" in text
    text = render(variant.one("AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]["UserData"])
    assert "--lease 600 --items 2 --nests 4 --max-attempts 2 --quiet --timeout 7200 --log-bucket" in text


def test_group_has_no_desired_capacity_and_protects_working_instances(synth: Synth):
    """A redeploy never resizes a running fleet (the scaler and `fleet scale` own its size), and
    no Auto Scaling action ends an instance while it works: each leaves by itself."""
    group = synth.one("AWS::AutoScaling::AutoScalingGroup")["Properties"]
    assert "DesiredCapacity" not in group
    assert group["NewInstancesProtectedFromScaleIn"] is True


def test_removed_desired_capacity_is_a_one_line_error(tmp_path: Path):
    proc = _run_app(tmp_path, {"desired_capacity": "2"})
    assert proc.returncode == 2 and "context desired_capacity: removed;" in proc.stderr
    assert "pyanamo fleet scale" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_group_takes_size_types_and_spot_from_context(default: Synth, variant: Synth):
    group = default.one("AWS::AutoScaling::AutoScalingGroup")["Properties"]
    assert (group["MinSize"], group["MaxSize"]) == ("0", "10")
    distribution = group["MixedInstancesPolicy"]["InstancesDistribution"]
    assert distribution["OnDemandPercentageAboveBaseCapacity"] == 100
    group = variant.one("AWS::AutoScaling::AutoScalingGroup")["Properties"]
    assert (group["MinSize"], group["MaxSize"]) == ("0", "20")
    assert group["CapacityRebalance"] is True
    distribution = group["MixedInstancesPolicy"]["InstancesDistribution"]
    assert distribution["OnDemandPercentageAboveBaseCapacity"] == 0
    assert distribution["SpotAllocationStrategy"] == "capacity-optimized"
    overrides = group["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    assert [o["InstanceType"] for o in overrides] == ["c6i.2xlarge", "c5.2xlarge"]
    assert group["VPCZoneIdentifier"] == ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"]


def test_new_vpc_has_public_subnets_and_no_nat(default: Synth, variant: Synth):
    assert len(default.resources("AWS::EC2::VPC")) == 1
    assert not default.resources("AWS::EC2::NatGateway")
    assert all(s["Properties"]["MapPublicIpOnLaunch"] for s in default.resources("AWS::EC2::Subnet").values())
    assert default.one("AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]["NetworkInterfaces"][0][
        "AssociatePublicIpAddress"] is True
    assert not variant.resources("AWS::EC2::VPC") and not variant.resources("AWS::EC2::Subnet")


# -- least privilege ----------------------------------------------------------------------

def test_iam_names_the_table_and_its_indexes_never_star(synth: Synth):
    table_id = next(iter(synth.resources("AWS::DynamoDB::Table")))
    for statement in statements(synth):
        actions = as_list(statement["Action"])
        resources = [render(r) for r in as_list(statement["Resource"])]
        if any(a.startswith("dynamodb:") for a in actions):
            for resource in resources:
                assert resource == f"<{table_id}.Arn>" or resource in {
                    f"<{table_id}.Arn>/index/{i.name}" for i in schema.INDEXES}, resource
        if "*" in resources:  # actions with no resource-level permissions, and only these
            assert actions in (["autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances"],
                               ["pricing:GetProducts", "ec2:DescribeSpotPriceHistory"]), statement
    worker_actions = {a for s in statements(synth) for a in as_list(s["Action"])}
    assert {"dynamodb:UpdateItem", "dynamodb:Query", "dynamodb:PutItem",
            "autoscaling:TerminateInstanceInAutoScalingGroup", "s3:PutObject", "s3:GetObject"} <= worker_actions
    assert not any(a in worker_actions for a in ("dynamodb:*", "dynamodb:DeleteTable", "dynamodb:Scan", "s3:*"))


def test_the_fleet_may_look_up_its_price_and_nothing_more_on_ec2_or_pricing(default: Synth):
    profile = default.one("AWS::IAM::InstanceProfile")["Properties"]["Roles"]
    fleet_role = {render(r) for r in profile}
    price_actions = []
    for policy in default.resources("AWS::IAM::Policy").values():
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = [a for a in as_list(statement["Action"]) if a.startswith(("pricing:", "ec2:"))
                       and a != "ec2:DescribeInstances"]  # the scaler's, to know when instances launched
            if actions:
                assert {render(r) for r in policy["Properties"]["Roles"]} == fleet_role
                price_actions += actions
    assert sorted(price_actions) == ["ec2:DescribeSpotPriceHistory", "pricing:GetProducts"]


def test_group_arn_has_the_real_arn_shape(default: Synth):
    arns = {render(r) for s in statements(default) for r in as_list(s["Resource"])
            if "autoscaling" in render(r)}
    group = next(iter(default.resources("AWS::AutoScaling::AutoScalingGroup")))
    assert arns == {f"arn:<AWS::Partition>:autoscaling:<AWS::Region>:<AWS::AccountId>:autoScalingGroup:*:"
                    f"autoScalingGroupName/<{group}>"}


def test_log_bucket_is_private_encrypted_expiring_and_denies_plain_http(synth: Synth):
    (bucket,) = [b["Properties"] for k, b in synth.resources("AWS::S3::Bucket").items() if k.startswith("Logs")]
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"][
        "SSEAlgorithm"] == "AES256"
    assert bucket["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"] == 90
    for policy in synth.resources("AWS::S3::BucketPolicy").values():
        assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
                   for s in policy["Properties"]["PolicyDocument"]["Statement"])


# -- software, data and results on the fleet ----------------------------------------------

def user_data(synth: Synth) -> str:
    return render(synth.one("AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]["UserData"])


def test_the_image_and_the_setup_script_reach_the_launch_template(variant: Synth, tmp_path: Path):
    data = variant.one("AWS::EC2::LaunchTemplate")["Properties"]["LaunchTemplateData"]
    assert data["ImageId"] == "ami-0123456789abcdef0"
    text = user_data(variant)
    assert "export PYANAMO_SETUP='s3://cdk-hnb659fds-assets-<AWS::AccountId>-<AWS::Region>/" in text
    assert "export PYANAMO_SETUP_TIMEOUT=3600" in text
    setup_key = re.search(r"PYANAMO_SETUP='s3://[^/]+/([^']+)'", text).group(1)
    reads = [render(r) for s in statements(variant) if s["Action"] == "s3:GetObject" for r in as_list(s["Resource"])]
    assert any(r.endswith(f"/{setup_key}") for r in reads)  # the instances may read their set-up script
    ssm = Synth({"machine_image": "/my-lab/images/bwa-gatk"}, tmp_path)
    parameters = [p["Default"] for p in ssm.json["Parameters"].values() if "Image::Id" in p["Type"]]
    assert parameters == ["/my-lab/images/bwa-gatk"]


def test_the_instances_install_offline_from_the_pinned_wheels_in_their_asset(default: Synth):
    """No package index is needed at boot, and every boot gets the versions the tests ran."""
    assert "--no-index" in user_data(default) and '--find-links "$asset/wheels"' in user_data(default)
    asset_key = re.search(r"PYANAMO_ASSET='s3://[^/]+/([^']+)'", user_data(default)).group(1)
    assets = json.loads((default.outdir / f"{default.stack.stack_name}.assets.json").read_text())["files"]
    (folder,) = [a["source"]["path"] for a in assets.values()
                 if any(d["objectKey"] == asset_key for d in a["destinations"].values())]
    wheels = sorted(p.name for p in (default.outdir / folder / "wheels").glob("*.whl"))
    lock = [line.split("==") for line in (REPO / "runtime" / "fleet-lock.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert len(wheels) == len(lock)
    for name, pinned in lock:
        assert any(w.lower().startswith(f"{name.lower().replace('-', '_')}-{pinned}-") for w in wheels), name
    assert (default.outdir / folder / "pyanamo" / "worker.py").exists()


def test_a_missing_setup_script_or_a_bad_image_is_a_one_line_error(tmp_path: Path):
    proc = _run_app(tmp_path, {"setup": "nowhere/setup.sh"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "pyanamo: error: context setup='nowhere/setup.sh': no such file"
    proc = _run_app(tmp_path, {"machine_image": "ubuntu"})
    assert proc.returncode == 2 and "an AMI ID (ami-...) or an SSM parameter name" in proc.stderr


def policies_of(synth: Synth, role_prefix: str) -> list[dict[str, Any]]:
    role = next(k for k in synth.resources("AWS::IAM::Role") if k.startswith(role_prefix))
    return [s for p in synth.resources("AWS::IAM::Policy").values() if {"Ref": role} in p["Properties"]["Roles"]
            for s in p["Properties"]["PolicyDocument"]["Statement"]]


def test_user_code_holds_the_job_role_only_never_the_instance_role(variant: Synth):
    """Sub-tasks run as pyanamo-task (no metadata service) with the job role's credentials: read the
    input buckets, nothing else. The instance role may assume it, and reads no input."""
    job = policies_of(variant, "WorkersJobRole")
    assert {a for s in job for a in as_list(s["Action"])} == {"s3:GetObject", "s3:ListBucket"}
    fleet = policies_of(variant, "WorkersRole")
    assert not any("my-bams" in render(r) for s in fleet for r in as_list(s["Resource"]))
    (assume,) = [s for s in fleet if s["Action"] == "sts:AssumeRole"]
    assert render(assume["Resource"]).startswith("<WorkersJobRole")
    role = next(r for k, r in variant.resources("AWS::IAM::Role").items() if k.startswith("WorkersJobRole"))
    assert role["Properties"]["MaxSessionDuration"] == 12 * 3600
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert render(trust["Principal"]["AWS"]).startswith("<WorkersRole")
    text = user_data(variant)
    assert "deny_imds() {" in text and 'deny_imds "$task_user"' in text and "User=root" in text


def test_input_and_output_grants_name_exactly_the_buckets_given(variant: Synth):
    s3_statements = [s for s in statements(variant) if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    granted = {(tuple(as_list(s["Action"])), render(r), json.dumps(s.get("Condition")))
               for s in s3_statements for r in as_list(s["Resource"])}
    p = "arn:<AWS::Partition>:s3:::"
    assert {
        (("s3:GetObject",), f"{p}my-bams/cohort1/*", "null"),
        (("s3:ListBucket",), f"{p}my-bams", json.dumps({"StringLike": {"s3:prefix": ["cohort1/*", "cohort1"]}})),
        (("s3:GetObject",), f"{p}my-references/*", "null"),
        (("s3:ListBucket",), f"{p}my-references", "null"),
        (("s3:PutObject", "s3:PutObjectTagging", "s3:DeleteObjectTagging", "s3:GetObject", "s3:DeleteObject"),
         f"{p}lab-results/haplotypes/*", "null"),
    } <= granted
    buckets = {r.removeprefix(p).split("/")[0] for _, r, _ in granted if r.startswith(p)}
    assets = "cdk-hnb659fds-assets-<AWS::AccountId>-<AWS::Region>"  # the runtime and set-up script
    assert buckets == {"my-bams", "my-references", "lab-results", assets}  # no other, no wildcard bucket
    assert "--outputs s3://lab-results/haplotypes" in user_data(variant)


def test_the_results_bucket_expires_uncommitted_attempts_and_is_kept(default: Synth):
    (bucket,) = [b for k, b in default.resources("AWS::S3::Bucket").items() if k.startswith("Results")]
    rules = {r["Id"]: r for r in bucket["Properties"]["LifecycleConfiguration"]["Rules"]}
    assert rules["ExpireUncommittedAttempts"]["TagFilters"] == [{"Key": "pyanamo-commit", "Value": "pending"}]
    assert rules["ExpireUncommittedAttempts"]["ExpirationInDays"] == 7
    assert rules["AbortIncompleteUploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert bucket["DeletionPolicy"] == "Retain"
    assert default.json["Outputs"]["ResultsLocation"]


def test_session_manager_only_when_asked_for(default: Synth, variant: Synth):
    def managed(synth: Synth) -> list[str]:
        role = next(r for r in synth.resources("AWS::IAM::Role").values()
                    if "ec2.amazonaws.com" in json.dumps(r["Properties"]["AssumeRolePolicyDocument"]))
        return [render(a) for a in role["Properties"].get("ManagedPolicyArns", [])]

    assert managed(default) == []
    assert managed(variant) == ["arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore"]


def test_the_worker_may_put_only_its_own_worker_records(synth: Synth):
    (put,) = [s for s in statements(synth) if "dynamodb:PutItem" in as_list(s["Action"])]
    assert as_list(put["Action"]) == ["dynamodb:PutItem"]
    assert put["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["pyanamo-worker#*"]}}


# -- the backlog scaler and outputs -------------------------------------------------------

def test_backlog_scaler_runs_every_minute_with_its_settings(default: Synth, variant: Synth):
    (function,) = [f["Properties"] for f in default.resources("AWS::Lambda::Function").values()
                   if f["Properties"]["Handler"] == "pyanamo.scaler.handler"]
    assert function["Runtime"] == "python3.14"
    assert function["Environment"]["Variables"]["ITEMS_PER_INSTANCE"] == "1"
    # when it ends an instance: 3 leases of silence; setup_timeout + 20 min to boot; 72 h at most
    assert {k: function["Environment"]["Variables"][k] for k in ("LEASE_SECONDS", "BOOT_GRACE_SECONDS",
                                                                   "MAX_INSTANCE_HOURS")} == {
        "LEASE_SECONDS": "300", "BOOT_GRACE_SECONDS": "4800", "MAX_INSTANCE_HOURS": "72"}
    rule = default.one("AWS::Events::Rule")["Properties"]
    assert rule["ScheduleExpression"] == "rate(1 minute)"
    assert not variant.resources("AWS::Events::Rule")


def test_outputs_name_the_table_group_and_bucket(synth: Synth):
    from pyanamo import fleet

    assert set(synth.json["Outputs"]) >= {fleet.OUTPUT_TABLE, fleet.OUTPUT_GROUP, fleet.OUTPUT_LOG_BUCKET}


# -- checks -------------------------------------------------------------------------------

def test_cdk_nag_reports_no_unsuppressed_errors_or_warnings(synth: Synth):
    annotations = Annotations.from_stack(synth.stack)
    errors = annotations.find_error("*", Match.any_value())
    warnings = annotations.find_warning("*", Match.any_value())
    assert [str(e.entry.data)[:200] for e in errors] == []
    assert [str(w.entry.data)[:200] for w in warnings] == []


def test_every_nag_suppression_has_a_reason(synth: Synth):
    found = 0
    for resource in synth.json["Resources"].values():
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            found += 1
            assert len(rule["reason"]) >= 30, rule
    assert found >= 4


def test_cfn_lint_finds_no_errors(synth: Synth):
    template = synth.outdir / f"{synth.stack.stack_name}.template.json"
    proc = subprocess.run([sys.executable, "-m", "cfnlint", str(template)], capture_output=True, text=True)
    assert proc.returncode & 2 == 0, proc.stdout  # 2: errors; 4: warnings only
    assert " E" not in proc.stdout and not proc.stdout.startswith("E")


# -- the app as the CDK CLI runs it -------------------------------------------------------

def test_cdk_json_lists_every_setting_with_its_default():
    context = json.loads((REPO / "cdk.json").read_text())["context"]
    defaults = {k: (",".join(v) if isinstance(v, tuple) else v) for k, v in context_keys().items()}
    assert context == defaults
    assert json.loads((REPO / "cdk.json").read_text())["app"] == "python3 app.py"


def _run_app(tmp_path: Path, context: dict[str, Any] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CDK_OUTDIR": str(tmp_path)}
    if context is not None:
        env["CDK_CONTEXT_JSON"] = json.dumps(context)
    return subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_python_app_synthesizes_offline(tmp_path: Path):
    proc = _run_app(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "PyAnamo.template.json").exists()


def test_bad_context_is_a_one_line_error(tmp_path: Path):
    proc = _run_app(tmp_path, {"fleet_size": "lots"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("pyanamo: error: context fleet_size='lots': "
                                   "invalid literal for int() with base 10: 'lots'")
    proc = _run_app(tmp_path, {"instance_types": "c7g.large,c6i.large"})
    assert "mixes Graviton (arm64) and x86_64" in proc.stderr and proc.returncode == 2


CDK_CLI = REPO / "node_modules" / ".bin" / "cdk"


@pytest.mark.skipif(not CDK_CLI.exists() and shutil.which("cdk") is None,
                    reason="the CDK CLI is not installed (make test installs it from package.json)")
def test_cdk_synth_with_the_cli(tmp_path: Path):
    cdk = str(CDK_CLI) if CDK_CLI.exists() else "cdk"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "CDK_DISABLE_VERSION_CHECK": "1", "CDK_DISABLE_CLI_TELEMETRY": "true"}
    proc = subprocess.run([cdk, "synth", "--quiet", "--no-notices", "--output", str(tmp_path), "-c", "spot=true",
                           "-c", "table=FromTheCli"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    template = json.loads((tmp_path / "FromTheCli.template.json").read_text())  # the stack follows the table
    tables = [r for r in template["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table"]
    assert [t["Properties"]["TableName"] for t in tables] == ["FromTheCli"]
