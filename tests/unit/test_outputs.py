"""Sub-task outputs through the worker against the in-memory queue, with a local folder as the
store: only the attempt whose fenced write succeeded is committed."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from pyanamo.errors import UsageError
from pyanamo.gateway import LeaseLost, SubtaskResult
from pyanamo.outputs import (
    STAGING,
    LocalOutputStore,
    Manifest,
    OutputError,
    attempt_path,
    scan,
)
from pyanamo.runs import RunRecord
from pyanamo.sandbox import TaskUser
from pyanamo.schema import SUBTASK_MANIFEST_BYTES, ItemState, SubtaskStatus
from pyanamo.worker import Worker, WorkerConfig

from fakes import InMemoryQueue, item, put


def worker(queue: InMemoryQueue, workdir: Path, **config) -> Worker:
    settings = {"lease": 10.0, "max_attempts": 1, "retry_delay": 0.05, **config}
    return Worker(queue, WorkerConfig(table="memory", workdir=workdir, log_dir=workdir / "logs", **settings))


def run_worker(queue: InMemoryQueue, tmp_path: Path, **config) -> int:
    return worker(queue, tmp_path / "work", outputs=str(tmp_path / "store"), **config).run()


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_done_attempt_commits_its_outputs_in_the_same_write_as_its_result(tmp_path: Path):
    (tmp_path / "work").mkdir()
    queue = InMemoryQueue(owner="w")
    put(queue, item("S1", 'echo aligned > "$PYANAMO_OUTDIR/S1.bam"',
                    'mkdir "$PYANAMO_OUTDIR/vcf" && '
                    'cat "$PYANAMO_ITEM_OUTPUTS/Task_0/S1.bam" > "$PYANAMO_OUTDIR/vcf/S1.vcf"'))
    assert run_worker(queue, tmp_path) == 0
    done = queue.get("S1")
    assert done.state is ItemState.DONE
    first, second = (Manifest.from_map(s.outputs) for s in done.subtasks)
    assert [f.path for f in first.files] == ["S1.bam"]
    assert first.files[0].sha256 == hashlib.sha256(b"aligned\n").hexdigest()
    assert (Path(second.location) / "vcf" / "S1.vcf").read_text() == "aligned\n"  # the later one saw it
    assert Path(first.location) == tmp_path / "store" / attempt_path("memory", "S1", "Task_0", first.attempt)
    assert not any((tmp_path / "store" / STAGING).rglob("*.bam"))  # renamed into place, nothing left staged
    assert done.log_summary["Task_0"]["Output_Bytes"] == len("aligned\n")
    assert not (tmp_path / "work" / ".pyanamo" / "S1").exists()  # the item's scratch is gone


def test_a_failed_attempt_is_not_stored_and_a_retry_gets_a_fresh_folder(tmp_path: Path):
    (tmp_path / "work").mkdir()
    queue = InMemoryQueue(owner="w")
    flag = tmp_path / "flag"
    script = (f'ls "$PYANAMO_OUTDIR" > "{tmp_path}/seen-$PYANAMO_ATTEMPT"; echo x > "$PYANAMO_OUTDIR/out.txt"; '
              f'test -e {flag} || {{ touch {flag}; exit 4; }}')
    put(queue, item("flaky", script))
    assert run_worker(queue, tmp_path, max_attempts=2) == 0
    manifest = Manifest.from_map(queue.get("flaky").subtasks[0].outputs)
    assert manifest.attempt.startswith("2-") and [f.path for f in manifest.files] == ["out.txt"]
    assert (tmp_path / "seen-2").read_text() == ""  # the failed attempt's file was not carried over
    assert files_under(tmp_path / "store") == [f"memory/flaky/Task_0/{manifest.attempt}/out.txt"]


def test_a_refused_result_write_discards_the_staged_outputs(tmp_path: Path):
    (tmp_path / "work").mkdir()

    class LosesTheLease(InMemoryQueue):
        def record(self, lease, result, **kwargs):
            raise LeaseLost(lease.item_id)

    queue = LosesTheLease(owner="w")
    put(queue, item("lost", 'echo mine > "$PYANAMO_OUTDIR/result.txt"'))
    worker(queue, tmp_path / "work", outputs=str(tmp_path / "store"), linger=0).run()
    assert queue.get("lost").subtasks[0].outputs is None
    assert files_under(tmp_path / "store") == []  # staged, then discarded: nothing is left


def test_outputs_over_the_size_limit_fail_the_attempt_with_the_reason(tmp_path: Path):
    (tmp_path / "work").mkdir()
    queue = InMemoryQueue(owner="w")
    put(queue, item("big", 'head -c 2000 /dev/zero > "$PYANAMO_OUTDIR/big.bin"'))
    assert run_worker(queue, tmp_path, max_output_size=1000) == 3
    big = queue.get("big")
    assert big.state is ItemState.FAILED and big.subtasks[0].status is SubtaskStatus.FAILED
    assert "outputs exceed the limit of 1.0 KB per attempt" in big.last_error
    assert big.subtasks[0].outputs is None and files_under(tmp_path / "store") == []


def test_a_link_in_the_output_folder_fails_the_attempt(tmp_path: Path):
    (tmp_path / "work").mkdir()
    queue = InMemoryQueue(owner="w")
    put(queue, item("link", 'ln -s /etc/passwd "$PYANAMO_OUTDIR/passwd"'))
    assert run_worker(queue, tmp_path) == 3
    assert "is not a regular file" in queue.get("link").last_error


def test_a_new_owner_fetches_committed_outputs_of_earlier_subtasks(tmp_path: Path):
    """After a reclaim the next sub-task runs on another machine: what the earlier one committed
    is downloaded into $PYANAMO_ITEM_OUTPUTS before it starts."""
    store = LocalOutputStore(tmp_path / "store")
    produced = tmp_path / "elsewhere"
    produced.mkdir()
    (produced / "S2.bam").write_text("from the first machine\n")
    manifest, stored = store.stage(produced, attempt_path("memory", "S2", "Task_0", "1-aaaa"), "1-aaaa", None)
    store.commit(manifest)
    (tmp_path / "work").mkdir()
    queue = InMemoryQueue(owner="w")
    put(queue, item("S2", "true", 'cp "$PYANAMO_ITEM_OUTPUTS/Task_0/S2.bam" "$PYANAMO_OUTDIR/copy.bam"'))
    _, lease = queue.claim()
    queue.record(lease, SubtaskResult("Task_0", SubtaskStatus.DONE, 1, 0, {"stdout": "", "stderr": ""}, RunRecord(),
                                      outputs=stored))
    queue.release(lease, [])
    assert run_worker(queue, tmp_path) == 0
    copy = Manifest.from_map(queue.get("S2").subtasks[1].outputs)
    assert (Path(copy.location) / "copy.bam").read_text() == "from the first machine\n"


def staged(tmp_path: Path, files: dict[str, str]) -> tuple[LocalOutputStore, Manifest, dict]:
    """``files`` (name -> text) staged, uncommitted, in a local store under ``tmp_path``."""
    store = LocalOutputStore(tmp_path / "store")
    folder = tmp_path / "out"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    manifest, stored = store.stage(folder, "T/I/Task_0/1-x", "1-x", None)
    return store, manifest, stored


def test_a_commit_interrupted_after_the_write_is_finished_by_the_reader(tmp_path: Path):
    store, manifest, _ = staged(tmp_path, {"a.txt": "a"})
    assert not Path(manifest.location).exists()  # staged only: the worker died before committing
    assert store.fetch(manifest, tmp_path / "dest") == 1
    assert (tmp_path / "dest" / "a.txt").read_text() == "a" and (Path(manifest.location) / "a.txt").exists()
    assert store.fetch(manifest, tmp_path / "dest") == 0  # resumed: nothing to copy again


def test_many_files_keep_their_list_outside_the_item(tmp_path: Path):
    # more than a sub-task's share of the item (SUBTASK_MANIFEST_BYTES) takes
    store, manifest, stored = staged(tmp_path, {f"chunk{n:03}.txt": str(n) for n in range(20)})
    assert "Files" not in stored and stored["Count"] == 20
    assert len(json.dumps(stored)) <= SUBTASK_MANIFEST_BYTES
    store.commit(manifest)
    assert Manifest.from_map(stored).files == manifest.files
    stored["Files_SHA256"] = "0" * 64
    with pytest.raises(OutputError, match="does not match the sha256"):
        Manifest.from_map(stored)


def test_a_download_refuses_a_file_that_does_not_match_its_manifest(tmp_path: Path):
    store, manifest, _ = staged(tmp_path, {"a.txt": "right"})
    store.commit(manifest)
    (Path(manifest.location) / "a.txt").write_text("wrong")
    with pytest.raises(OutputError, match="sha256 does not match"):
        store.fetch(manifest, tmp_path / "dest")
    assert not (tmp_path / "dest" / "a.txt").exists()


def test_scan_lists_nested_files_in_order(tmp_path: Path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("z")
    (tmp_path / "a.txt").write_text("a")
    assert [f.path for _, f in scan(tmp_path)] == ["a.txt", "b/z.txt"]


@pytest.mark.skipif(os.geteuid() != 0 or not hasattr(os, "setgroups"), reason="running as another user needs root")
def test_run_as_runs_the_subtask_as_that_user_and_it_still_commits(tmp_path: Path):
    """As on the fleet: the worker is root, the sub-task an unprivileged user who owns its
    output folder and nothing of the worker's."""
    tmp_path = Path(tempfile.mkdtemp(prefix="pyanamo-run-as-"))  # pytest's own folders are root's alone
    tmp_path.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)
    queue = InMemoryQueue(owner="w")
    put(queue, item("who", 'id -u > "$PYANAMO_OUTDIR/uid"; echo "$USER" >> "$PYANAMO_OUTDIR/uid"; '
                           'touch /root/.pyanamo-escape 2> /dev/null; echo $? >> "$PYANAMO_OUTDIR/uid"'))
    try:
        assert worker(queue, work, outputs=str(tmp_path / "store"), run_as="nobody").run() == 0, \
            queue.get("who").last_error
    finally:
        shutil.rmtree(tmp_path / "work", ignore_errors=True)
    manifest = Manifest.from_map(queue.get("who").subtasks[0].outputs)
    uid, user, refused = (Path(manifest.location) / "uid").read_text().split()
    assert (int(uid), user) == (pwd.getpwnam("nobody").pw_uid, "nobody") and refused != "0"
    shutil.rmtree(tmp_path)


def test_run_as_an_unknown_user_or_without_root_is_a_usage_error(tmp_path: Path):
    with pytest.raises(UsageError, match="no such user"):
        TaskUser.named("no-such-user-here")
