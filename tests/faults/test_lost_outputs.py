"""Scenario 19: outputs under lost leases and killed workers. Two attempts of one sub-task race
(a worker SIGKILLed while it uploads; a worker whose lease is taken while it uploads): the
committed outputs are exactly one attempt's, complete, matching their manifest's sha256, and no
object of another attempt is named by any manifest — what a killed attempt left is tagged for the
results bucket's expiry rule, what a refused one uploaded is deleted."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from pyanamo.outputs import PENDING_TAG, Manifest, S3OutputStore
from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState
from pyanamo.worker import Worker, WorkerConfig

from faultkit import Analysis, Figures, executions, measured
from helpers import cli, kill_tree, wait_for, write_task_file

SIZE_MB = 24  # three multipart parts at boto3's 8 MB threshold: an upload that takes a while


def objects(s3, bucket: str) -> set[str]:
    return {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}


def pending(s3, bucket: str, key: str) -> bool:
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
    return tags.get(PENDING_TAG[0]) == PENDING_TAG[1]


def committed_keys(manifest: Manifest, bucket: str) -> set[str]:
    base = manifest.location.removeprefix(f"s3://{bucket}/")
    return {f"{base}{f.path}" for f in manifest.files}


def check_complete(s3, bucket: str, manifest: Manifest) -> None:
    """Every file the manifest names is there, whole, with its sha256."""
    for f in manifest.files:
        body = s3.get_object(Bucket=bucket, Key=f"{manifest.location.removeprefix(f's3://{bucket}/')}{f.path}")
        assert hashlib.sha256(body["Body"].read()).hexdigest() == f.sha256, f.path


def test_a_worker_killed_while_uploading_never_has_its_outputs_named(
        aws_env, client, table, s3, results_bucket, workers, soak, tmp_path: Path):
    bucket = results_bucket
    count = 6 if soak else 3
    rows = [f"big{n}|S|head -c {SIZE_MB}M /dev/urandom > $PYANAMO_OUTDIR/reads.bam; echo $PYANAMO_ATTEMPT > "
            f"$PYANAMO_OUTDIR/attempt.txt" for n in range(count)]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    outputs = f"s3://{bucket}/runs"
    victim = workers.start(table, "--lease", "4", "--outputs", outputs, name="victim")
    wait_for(lambda: s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), timeout=120, interval=0.02,
             message="the victim's upload began")  # what it wrote, not a timer
    kill_tree(victim.pid)
    killed_at = {"victim": time.time()}
    victim.wait(timeout=30)
    workers.start(table, "--lease", "4", "--outputs", outputs, name="w1")
    workers.start(table, "--lease", "4", "--outputs", outputs, name="w2")
    codes = [p.wait(timeout=240) for p in workers.processes[1:]]
    assert codes == [0, 0], codes

    queue = TaskQueue(client, table)
    manifests = {}
    for n in range(count):
        item = queue.get(f"big{n}")
        assert item.state is ItemState.DONE
        manifests[item.item_id] = Manifest.from_map(item.subtasks[0].outputs)
    named = set().union(*(committed_keys(m, bucket) for m in manifests.values()))
    stored = objects(s3, bucket)
    assert named <= stored  # nothing named is missing
    for manifest in manifests.values():
        check_complete(s3, bucket, manifest)
        assert len({f.path for f in manifest.files}) == 2
    orphans = stored - named
    assert all(pending(s3, bucket, key) for key in orphans)  # the expiry rule takes them
    assert not any(pending(s3, bucket, key) for key in named)
    unfinished = len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    runs = executions(workers.processes)
    Figures("19a. a worker killed while uploading outputs", runs=1, items=count, subtasks=count,
            faults=f"SIGKILL of the worker while its {SIZE_MB} MB output was being uploaded (multipart)",
            **measured(queue, {f"big{n}": ItemState.DONE for n in range(count)}, Analysis(runs, killed_at)),
            recovery=f"attempts {len(runs)}, committed {len(manifests)} (one attempt each, every sha256 "
                     f"checked); {len(orphans)} objects of the killed attempt never named, left tagged "
                     f"{PENDING_TAG[0]}={PENDING_TAG[1]} for the results bucket's expiry rule, and {unfinished} "
                     f"unfinished multipart uploads (not objects: the bucket's rule aborts them after a day)").save()


def test_a_worker_that_loses_its_lease_while_uploading_deletes_its_uploads(
        aws_env, client, table, s3, results_bucket, tmp_path: Path):
    bucket = results_bucket
    rows = [f"lost{n}|S|head -c 1M /dev/urandom > $PYANAMO_OUTDIR/calls.bcf" for n in range(3)]
    assert cli("import", table, str(write_task_file(tmp_path / "t.txt", rows)), env=aws_env).returncode == 0
    admin = TaskQueue(client, table)
    uploaded: list[Manifest] = []

    class LeaseTakenDuringUpload(S3OutputStore):
        def stage(self, folder, path, attempt, max_bytes):
            staged = super().stage(folder, path, attempt, max_bytes)
            uploaded.append(staged[0])
            item_id = path.split("/")[1]
            if sum(m.location.split("/")[-4] == item_id for m in uploaded) == 1:  # first attempt of each
                assert admin.revoke(admin.get(item_id), [], clear_attempts=False)
            return staged

    work = tmp_path / "work"
    work.mkdir()
    worker = Worker(TaskQueue(client, table, owner="racer", lease_seconds=3),
                    WorkerConfig(table=table, lease=3, max_attempts=3, workdir=work, log_dir=tmp_path / "logs"))
    worker.workspace.outputs = LeaseTakenDuringUpload(bucket, "runs", s3)
    assert worker.run() == 0
    manifests = [Manifest.from_map(admin.get(f"lost{n}").subtasks[0].outputs) for n in range(3)]
    named = set().union(*(committed_keys(m, bucket) for m in manifests))
    assert objects(s3, bucket) == named  # the refused attempts' uploads are gone
    for manifest in manifests:
        check_complete(s3, bucket, manifest)
    refused = len(uploaded) - len(manifests)
    assert refused == 3
    Figures("19b. a lease lost while uploading outputs", runs=1, items=3, subtasks=3,
            faults="the item's lease revoked after each first upload, before the result write",
            lost=sum(admin.get(f"lost{n}").state is not ItemState.DONE for n in range(3)),
            overlaps="n/a (one worker, its runs in sequence)",
            duplicates=refused, why={"uploaded, then its result write was refused (lease lost)": refused},
            recovery=f"attempts {len(uploaded)}, committed {len(manifests)} (one each, sha256 checked); "
                     f"the {refused} refused attempts' objects deleted by their worker, 0 left").save()
