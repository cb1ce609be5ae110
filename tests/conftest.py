"""Shared fixtures: real DynamoDB-compatible servers over HTTP (dynalite and moto), fresh tables,
and worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyanamo.aws import Endpoint, aws_client, dynamodb_client
from pyanamo.queue import TaskQueue
from pyanamo.schema import create_table_request

from helpers import Recorder, Workers, wait_active

ENGINES = ("dynalite", "moto")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true",
                     help="run the fault-injection scenarios at full size (slow)")
    parser.addoption("--engines", default=os.environ.get("PYANAMO_TEST_ENGINES", ",".join(ENGINES)),
                     help="the DynamoDB implementations the DynamoDB-facing tests run against, comma-separated "
                          "(default: $PYANAMO_TEST_ENGINES, else dynalite,moto)")
    parser.addoption("--full-matrix", action="store_true", default=bool(os.environ.get("PYANAMO_FULL_MATRIX")),
                     help="run every DynamoDB-facing test on every engine; by default the fault scenarios and "
                          "the slower end-to-end tests run on the first engine only ($PYANAMO_FULL_MATRIX=1)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that talks to DynamoDB runs once per engine: each catches what the other hides
    (moto: requests on threads, index queries that read every item; dynalite: no old item on a
    failed conditional write, DynamoDB's table-name rules). ``moto_only`` tests (CloudFormation
    deployments, whose tables live in moto) run on moto alone."""
    if "aws_env" not in metafunc.fixturenames:
        return
    engines = [e.strip() for e in metafunc.config.getoption("--engines").split(",") if e.strip()]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise pytest.UsageError(f"--engines: unknown {', '.join(sorted(unknown))} (choose from {', '.join(ENGINES)})")
    if "store" in metafunc.fixturenames:  # the contract tests: each engine, and the fake once
        combos = [(e, "dynamodb") for e in engines] + [(engines[0], "memory")]
        metafunc.parametrize(("engine", "store"), combos, scope="session",
                             ids=[e if store == "dynamodb" else "memory" for e, store in combos])
        return
    if metafunc.definition.get_closest_marker("moto_only"):
        engines = ["moto"]
    elif not metafunc.config.getoption("--full-matrix") and (
            metafunc.definition.get_closest_marker("one_engine") or not _on_every_engine(metafunc)):
        engines = engines[:1]
    metafunc.parametrize("engine", engines, scope="session")


# Where the two engines differ is the queue's requests: these run on every engine in every run.
# The rest (fault scenarios, the other end-to-end tests) repeat the same requests at length; they
# run on the first engine, and on all of them with --full-matrix (CI's time limit: see README).
EVERY_ENGINE = ("tests/integration/", "tests/e2e/test_workers.py")


def _on_every_engine(metafunc: pytest.Metafunc) -> bool:
    path = Path(str(metafunc.definition.path)).resolve().relative_to(Path(__file__).resolve().parents[1]).as_posix()
    return path.startswith(EVERY_ENGINE)


@pytest.fixture(scope="session")
def soak(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--soak"))


def _local_endpoint(*args: str) -> Iterator[str]:
    """`pyanamo local` in its own process on 127.0.0.1 (as users run it): its URL."""
    process = subprocess.Popen([sys.executable, "-m", "pyanamo", "local", "--port", "0", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline().strip()
    detail = process.stdout.readline().strip()
    if not line.startswith("export AWS_ENDPOINT_URL_DYNAMODB="):
        process.kill()
        raise RuntimeError(f"pyanamo local {' '.join(args)} did not start: {line!r} {process.stderr.read()!r}")
    engine = args[args.index("--engine") + 1]
    if f"({engine}," not in detail:  # a fallback would hide the engine under test
        process.kill()
        raise RuntimeError(f"pyanamo local did not serve {engine}: {detail!r}")
    yield line.split("=", 1)[1]
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:  # a busy machine: the tests are done, do not fail on teardown
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's server, as `pyanamo local --engine moto` runs it (one request at a time, so
    conditional writes are atomic as in DynamoDB): S3, EC2, Auto Scaling, CloudFormation, and
    DynamoDB for the moto runs."""
    yield from _local_endpoint("--engine", "moto")


@pytest.fixture(scope="session")
def dynalite_url() -> Iterator[str]:
    """dynalite, as `pyanamo local` runs it by default (in memory here)."""
    yield from _local_endpoint("--engine", "dynalite", "--in-memory")


@pytest.fixture(scope="session")
def dynamodb_url(engine: str, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{engine}_url"))


@pytest.fixture(scope="session")
def aws_env(moto_url: str, dynamodb_url: str) -> dict[str, str]:
    """The environment for CLI and worker processes: DynamoDB on the engine under test, every
    other service on moto."""
    return {
        "AWS_ENDPOINT_URL": moto_url,  # S3, EC2, Auto Scaling, CloudFormation, ...
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_url,
        "AWS_ENDPOINT_URL_S3": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Keep every test away from real AWS: no profile, no metadata service."""
    for name in list(os.environ):
        if name.startswith("AWS_") or (name.startswith("PYANAMO_") and name != "PYANAMO_FAULTS_REPORT"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: never real AWS
    if "aws_env" in request.fixturenames:
        for name, value in request.getfixturevalue("aws_env").items():
            monkeypatch.setenv(name, value)


@pytest.fixture
def client(aws_env: dict[str, str]):
    return dynamodb_client(Endpoint())


@pytest.fixture
def table(client) -> str:
    """A fresh table, once it is ACTIVE (as on DynamoDB, dynalite refuses writes to a table that is
    still CREATING, even with its creation delay set to 0)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    client.create_table(**create_table_request(name))
    wait_active(client, name)
    return name


@pytest.fixture
def queue(client, table: str) -> TaskQueue:
    return TaskQueue(client, table, owner="test-owner", lease_seconds=30)


@pytest.fixture
def workers(aws_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(aws_env, tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder(tmp_path)
    monkeypatch.setenv("RECORD_FILE", str(rec.file))
    return rec


@pytest.fixture
def autoscaling(aws_env):
    return aws_client("autoscaling", Endpoint())


@pytest.fixture
def make_group(aws_env, autoscaling):
    ec2 = aws_client("ec2", Endpoint())
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]

    def make(maximum: int, desired: int = 0) -> str:
        name = f"g-{uuid.uuid4().hex[:8]}"
        ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={
            "ImageId": "ami-03c3da4cfa8e8943a", "InstanceType": "t3.micro"})
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": name},
            MinSize=0, MaxSize=maximum, DesiredCapacity=desired, VPCZoneIdentifier=subnet)
        return name

    return make


@pytest.fixture
def s3(aws_env):
    """S3 on moto's server."""
    return aws_client("s3", Endpoint())


@pytest.fixture
def results_bucket(s3) -> str:
    """A fresh bucket for outputs."""
    name = f"results-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name
