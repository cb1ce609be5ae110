"""The fleet's bootstrap script, run for real in a folder standing in for an instance."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from infra.runtime_asset import bundle_runtime
from pyanamo.aws import Endpoint, aws_client
from pyanamo.fleet import describe_group
from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState

from helpers import REPO, StubImds, cli, write_task_file

pytestmark = pytest.mark.moto_only  # the stack deploys to moto's CloudFormation, its table into moto


def runtime_zip(path: Path) -> Path:
    """The runtime as the CDK asset bundles it (the package and its pinned wheels), zipped."""
    folder = bundle_runtime(path.with_suffix(""))
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(folder).as_posix())
    return path


def run_bootstrap(aws_env, instance_id: str, table: str, home: Path, tmp_path: Path,
                  **settings: str) -> subprocess.CompletedProcess:
    """infra/bootstrap.sh as an instance runs it (in the foreground), with a stub metadata service."""
    with StubImds(instance_id) as imds:
        env = {
            **os.environ,
            **aws_env,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url,
            "PYANAMO_TABLE": table,
            "PYANAMO_ASSET": str(runtime_zip(tmp_path / "runtime.zip")),
            "PYANAMO_HOME": str(home),
            "PYANAMO_PYTHON": "python3",
            "PYANAMO_MODE": "foreground",
            "PYANAMO_WORKER_ARGS": "--lease 10 --quiet",
            # no package index can be reached from this "instance": the asset's wheels must do
            "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
            **settings,
        }
        env.pop("AWS_EC2_METADATA_DISABLED")  # this "instance" has a metadata service
        return subprocess.run(["bash", str(REPO / "infra" / "bootstrap.sh")], env=env,
                              capture_output=True, text=True, timeout=600)


def test_a_failing_setup_is_a_failed_boot_logged_recorded_and_left(
        aws_env, client, table, autoscaling, make_group, tmp_path: Path):
    group = make_group(maximum=2, desired=1)
    (instance_id,) = [i["InstanceId"] for i in describe_group(autoscaling, group)["Instances"]]
    s3 = aws_client("s3", Endpoint())
    s3.create_bucket(Bucket="boot-logs")
    setup = tmp_path / "setup.sh"
    setup.write_text("echo installing the tools\necho 'conda: command not found' >&2\nexit 127\n")
    home = tmp_path / "instance" / "opt" / "pyanamo"
    proc = run_bootstrap(aws_env, instance_id, table, home, tmp_path, PYANAMO_SETUP=str(setup),
                         PYANAMO_LOG_BUCKET="boot-logs/logs")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "boot failed" in proc.stdout and f"instance {instance_id} left its Auto Scaling group" in proc.stdout
    (log,) = [o["Key"] for o in s3.list_objects_v2(Bucket="boot-logs")["Contents"]]
    assert log.startswith(f"logs/boot-failures/{instance_id}-")
    assert b"conda: command not found" in s3.get_object(Bucket="boot-logs", Key=log)["Body"].read()
    status = cli("status", table, "--json", env=aws_env)
    report = json.loads(status.stdout)
    assert report["boot_failures"] == 1 and report["last_boot_failure"].startswith(f"{instance_id}: ")
    after = describe_group(autoscaling, group)
    assert after["DesiredCapacity"] == 0 and after["Instances"] == []
    assert not (home / "run-worker.sh").exists()  # the worker was never started


def test_bootstrap_installs_the_worker_drains_the_table_and_leaves_the_group(
        aws_env, client, table, autoscaling, make_group, tmp_path: Path):
    group = make_group(maximum=2, desired=1)
    (instance_id,) = [i["InstanceId"] for i in describe_group(autoscaling, group)["Instances"]]
    rows = [f"s{n}|S|echo \"$PYANAMO_ITEM_ID on $(hostname)\" > $PYANAMO_ITEM_ID.out" for n in range(3)]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    home = tmp_path / "instance" / "opt" / "pyanamo"

    proc = run_bootstrap(aws_env, instance_id, table, home, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"instance {instance_id} left its Auto Scaling group" in proc.stdout

    assert (home / "venv" / "bin" / "pyanamo").exists()
    queue = TaskQueue(client, table)
    for n in range(3):
        item = queue.get(f"s{n}")
        assert item.state is ItemState.DONE and item.instance_id == instance_id
        assert (home / "work" / f"s{n}.out").exists()
        assert item.log_summary["Task_0"]["Log_Location"].startswith(str(home / "logs"))
    after = describe_group(autoscaling, group)
    assert after["DesiredCapacity"] == 0 and after["Instances"] == []
