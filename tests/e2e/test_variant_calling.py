"""A real workload end to end: bwa, samtools and bcftools (Debian's packages) align and call 4
samples × 3 chromosomes under three workers, one of them SIGKILLed mid-run. What is committed is
byte for byte what the same commands give run serially by bash, and every manifest names one
attempt: the one that held the lease."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pyanamo.aws import Endpoint, aws_client
from pyanamo.model import Item
from pyanamo.outputs import STAGING, Manifest
from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState
from pyanamo.taskfile import parse_task_file

from helpers import REPO, cli, wait_for

EXAMPLE = REPO / "examples" / "variant-calling"
TOOLS = ("bwa", "samtools", "bcftools")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs {', '.join(TOOLS)} (make test installs them from Debian's packages where it can)")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vc-data")
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(folder)], check=True)
    return folder


@pytest.fixture(scope="module")
def items() -> list[Item]:
    with parse_task_file(EXAMPLE / "tasks.tsv", "\t", ",") as parsed:
        return list(parsed)


@pytest.fixture(scope="module")
def serial(data: Path, items: list[Item], tmp_path_factory) -> dict[tuple[str, str], dict[str, bytes]]:
    """Every sub-task run once, in order, by bash, as the README describes the variables."""
    root = tmp_path_factory.mktemp("serial")
    produced: dict[tuple[str, str], dict[str, bytes]] = {}
    for item in items:
        for subtask in item.subtasks:
            outdir = root / item.item_id / subtask.key
            outdir.mkdir(parents=True)
            env = {**os.environ, "VC_DATA": str(data), "PYANAMO_OUTDIR": str(outdir),
                   "PYANAMO_ITEM_OUTPUTS": str(root / item.item_id)}
            subprocess.run(["bash", "-c", subtask.script], env=env, check=True, capture_output=True)
            produced[item.item_id, subtask.key] = {
                p.relative_to(outdir).as_posix(): p.read_bytes() for p in outdir.rglob("*") if p.is_file()}
    return produced


def import_and_run(aws_env, table: str, workers, data: Path, outputs: str, kill_one: bool,
                   then: tuple[str, ...] = ()) -> None:
    """Import the samples (and ``then``: another task file's import arguments), run three workers."""
    proc = cli("import", table, str(EXAMPLE / "tasks.tsv"), "--delimiter", "tab", "--nested-delimiter", ",",
               env=aws_env)
    assert proc.returncode == 0, proc.stderr
    if then:
        proc = cli("import", table, *then, env=aws_env)
        assert proc.returncode == 0 and "3 items wait for other items" in proc.stdout, proc.stdout + proc.stderr
    started = [workers.start(table, "--lease", "5", "--outputs", outputs, env={"VC_DATA": str(data)})
               for _ in range(3)]
    if kill_one:  # SIGKILL a worker while it runs a sub-task: its item is reclaimed by another
        victim = started[0]
        wait_for(lambda: b'"subtask_started"' in victim.log_path.read_bytes(), timeout=60,
                 message="the first worker started a sub-task")
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        workers.processes.remove(victim)
    codes = workers.wait_all(timeout=240)
    assert codes == [0] * len(codes), [p.log_path.read_text()[-2000:] for p in workers.processes]


def committed(client, table: str, items: list[Item]) -> dict[tuple[str, str], Manifest]:
    queue = TaskQueue(client, table)
    manifests = {}
    for item in items:
        stored = queue.get(item.item_id)
        assert stored.state is ItemState.DONE, (stored.item_id, stored.last_error)
        for subtask in stored.subtasks:
            manifests[item.item_id, subtask.key] = Manifest.from_map(subtask.outputs)
    return manifests


def test_variant_calling_under_a_killed_worker_commits_exactly_the_serial_results(
        aws_env, client, table, workers, data, items, serial, tmp_path: Path):
    store = tmp_path / "results"
    import_and_run(aws_env, table, workers, data, str(store), kill_one=True)
    manifests = committed(client, table, items)
    assert set(manifests) == set(serial)
    for key, manifest in manifests.items():
        folder = Path(manifest.location)
        assert STAGING not in folder.parts  # a committed attempt, renamed into place
        assert {f.path: (folder / f.path).read_bytes() for f in manifest.files} == serial[key], key
        # exactly one attempt of this sub-task is committed: the one the manifest names
        attempts = [p.name for p in (store / table / key[0] / key[1]).iterdir()]
        assert attempts == [manifest.attempt], (key, attempts)
    vcf = serial["S1", "Task_1"]["S1.chr1.vcf"].decode()
    assert sum(1 for line in vcf.splitlines() if not line.startswith("#")) >= 10  # real calls


def test_the_fleet_path_commits_to_s3_and_downloads_what_it_committed(
        aws_env, client, table, workers, data, items, serial, tmp_path: Path):
    s3 = aws_client("s3", Endpoint())
    s3.create_bucket(Bucket="vc-results")
    import_and_run(aws_env, table, workers, data, "s3://vc-results/runs", kill_one=False)
    manifests = committed(client, table, items)
    named = {f"{m.location.removeprefix('s3://vc-results/')}{f.path}" for m in manifests.values() for f in m.files}
    stored = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="vc-results")
              for o in page.get("Contents", [])}
    assert stored == named  # nothing uncommitted left, nothing named missing
    proc = cli("outputs", table, "--download", str(tmp_path / "got"), env=aws_env)
    assert proc.returncode == 0, proc.stderr
    for (item_id, key), files in serial.items():
        for path, content in files.items():
            assert (tmp_path / "got" / item_id / key / path).read_bytes() == content, (item_id, key, path)


def test_the_joint_step_runs_after_every_sample_on_their_committed_calls(
        aws_env, client, table, workers, data, serial, tmp_path: Path):
    """The README's workflow: one joint-calling item per chromosome waits for every sample
    (``After``), starts only when all four are done, and merges their committed calls, found in
    ``$PYANAMO_INPUTS``, into one multi-sample VCF (bcftools merge)."""
    import_and_run(aws_env, table, workers, data, str(tmp_path / "results"), kill_one=False,
                   then=(str(EXAMPLE / "joint.tsv"), "--delimiter", "tab"))
    queue = TaskQueue(client, table)
    samples_done = max(queue.get(f"S{n}").done_date for n in range(1, 5))
    for chromosome in ("chr1", "chr2", "chr3"):
        joint = queue.get(f"joint-{chromosome}")
        assert joint.state is ItemState.DONE, joint.last_error
        assert joint.lock_date > samples_done  # claimed only after the last sample ended
        vcf = Path(Manifest.from_map(joint.subtasks[0].outputs).location) / f"joint.{chromosome}.vcf"
        header = next(line for line in vcf.read_text().splitlines() if line.startswith("#CHROM"))
        assert header.split("\t")[9:] == ["S1", "S2", "S3", "S4"]
        merged = {tuple(line.split("\t")[:2]) for line in vcf.read_text().splitlines() if not line.startswith("#")}
        called = {tuple(line.split("\t")[:2]) for (item, _), files in serial.items() for name, body in files.items()
                  if name.endswith(f".{chromosome}.vcf") for line in body.decode().splitlines()
                  if not line.startswith("#")}
        assert merged == called and called, chromosome  # every site a sample called, once
