"""Outputs in S3 (moto's server over HTTP) with the fenced commit through the real queue: staged
objects are tagged for expiry, a lost lease's uploads are never committed, `pyanamo outputs`
lists and downloads what the manifests name."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pyanamo.cli import main
from pyanamo.outputs import PENDING_TAG, Manifest, S3OutputStore, attempt_path
from pyanamo.queue import TaskQueue
from pyanamo.schema import ItemState
from pyanamo.worker import Worker, WorkerConfig

from fakes import item
from helpers import put_items


def keys(s3, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def tags(s3, bucket: str, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


def test_staged_objects_carry_the_expiry_tag_until_committed(s3, results_bucket, tmp_path: Path):
    bucket = results_bucket
    folder = tmp_path / "out"
    (folder / "vcf").mkdir(parents=True)
    (folder / "vcf" / "S1.vcf").write_text("##fileformat=VCFv4.2\n")
    store = S3OutputStore(bucket, "runs", s3)
    manifest, stored = store.stage(folder, attempt_path("T", "S1", "Task_0", "1-abc"), "1-abc", None)
    key = "runs/T/S1/Task_0/1-abc/vcf/S1.vcf"
    assert manifest.location == f"s3://{bucket}/runs/T/S1/Task_0/1-abc/" and keys(s3, bucket) == [key]
    assert tags(s3, bucket, key) == {PENDING_TAG[0]: PENDING_TAG[1]}
    store.commit(manifest)
    assert tags(s3, bucket, key) == {}
    assert stored["Files"] == [{"Path": "vcf/S1.vcf", "Size": 21,
                                "SHA256": hashlib.sha256(b"##fileformat=VCFv4.2\n").hexdigest()}]
    store.discard(manifest)
    assert keys(s3, bucket) == []


def test_a_lost_lease_mid_upload_never_commits_and_the_holder_commits_once(
        aws_env, client, table, s3, results_bucket, tmp_path: Path, capsys):
    """Worker A uploads, then loses its lease before its result write (another owner took the
    item): its write is refused, its objects are deleted, and the item's manifest later names
    one attempt only, complete and matching its sha256."""
    bucket = results_bucket
    put_items(client, table, [item("S1", 'printf "%s\\n" "$PYANAMO_ATTEMPT" > "$PYANAMO_OUTDIR/calls.vcf"')])
    queue = TaskQueue(client, table, owner="a", lease_seconds=3)
    admin = TaskQueue(client, table)
    uploads: list[str] = []

    class LosesTheLeaseOnce(S3OutputStore):
        def stage(self, folder, path, attempt, max_bytes):
            staged = super().stage(folder, path, attempt, max_bytes)
            uploads.append(staged[0].location)
            if len(uploads) == 1:  # while it uploaded, the lease went to someone else
                assert admin.revoke(admin.get("S1"), [], clear_attempts=False)
            return staged

    work = tmp_path / "work"
    work.mkdir()
    worker = Worker(queue, WorkerConfig(table=table, lease=3, max_attempts=3, workdir=work,
                                        log_dir=tmp_path / "logs", outputs=f"s3://{bucket}/runs"))
    worker.workspace.outputs = LosesTheLeaseOnce(bucket, "runs", s3)
    assert worker.run() == 0
    done = admin.get("S1")
    assert done.state is ItemState.DONE and len(uploads) == 2
    manifest = Manifest.from_map(done.subtasks[0].outputs)
    assert manifest.location == uploads[1]  # the attempt that held the lease, and only it
    assert keys(s3, bucket) == [f"runs/{table}/S1/Task_0/{manifest.attempt}/calls.vcf"]

    assert main(["outputs", table, "--download", str(tmp_path / "got")]) == 0
    got = (tmp_path / "got" / "S1" / "Task_0" / "calls.vcf").read_bytes()
    assert hashlib.sha256(got).hexdigest() == manifest.files[0].sha256
    assert "1 files of 1 sub-tasks" in capsys.readouterr().out
    assert main(["outputs", table, "S1", "--json"]) == 0
    assert f'"attempt": "{manifest.attempt}"' in capsys.readouterr().out


def test_outputs_of_an_unknown_item_is_a_one_line_error(aws_env, table, capsys):
    assert main(["outputs", table, "nope"]) == 2
    assert capsys.readouterr().err.strip() == f"pyanamo: error: no item 'nope' in table {table}"
