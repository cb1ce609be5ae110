"""An item's folders on the worker's disk, and the fenced life of a sub-task's outputs there.

Under ``WORKDIR/.pyanamo/<item>``: ``attempts/<key>/<attempt>`` (``$PYANAMO_OUTDIR``, fresh and
empty for each attempt), ``outputs/<key>`` (``$PYANAMO_ITEM_OUTPUTS``: what earlier sub-tasks of
the item committed, for the later ones) and ``inputs/<item>/<key>`` (``$PYANAMO_INPUTS``: what the
items it waited for committed). A done attempt's outputs are *staged* in the output store, the
manifest goes into the sub-task's fenced result write, and only after that write succeeded are
they *committed* (a refused write discards them): only the lease's holder ever commits.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .errors import BOTO_ERRORS
from .events import emit
from .gateway import SubtaskResult
from .model import Item, Subtask
from .outputs import Manifest, OutputError, OutputStore, attempt_path, store_of_location
from .runner import LocalFailure, safe_name
from .sandbox import TaskUser
from .schema import SubtaskStatus

FETCH_ERRORS = (OutputError, OSError, *BOTO_ERRORS, KeyError, ValueError)


class Workspace:
    """The items' folders under ``root`` and the outputs staged from them; thread-safe per item
    (each item is worked on by one slot at a time)."""

    def __init__(self, root: Path, table: str, outputs: OutputStore, *, task_user: TaskUser | None = None,
                 max_output_size: int | None = None) -> None:
        self.root = root
        self.table = table
        self.outputs = outputs
        self.task_user = task_user  # the sub-tasks' user, who must write their folders
        self.max_output_size = max_output_size
        self._staged: dict[tuple[str, str], tuple[Manifest, Path]] = {}

    def folder(self, item: Item) -> Path:
        return self.root / safe_name(item.item_id)

    def item_outputs(self, item: Item) -> Path:
        return self.folder(item) / "outputs"

    def inputs(self, item: Item) -> Path:
        return self.folder(item) / "inputs"

    def environment(self, item: Item, outdir: Path) -> dict[str, str]:
        """The folders as the sub-task sees them."""
        return {"PYANAMO_OUTDIR": str(outdir), "PYANAMO_ITEM_OUTPUTS": str(self.item_outputs(item)),
                **({"PYANAMO_INPUTS": str(self.inputs(item))} if item.after else {})}

    def clean(self, item: Item) -> None:
        shutil.rmtree(self.folder(item), ignore_errors=True)

    def prepare(self, item: Item, get: Callable[[str], Item | None]) -> None:
        """Before an item's first sub-task here: the outputs its earlier sub-tasks committed
        elsewhere (a reclaim), and those of the items it waited for (``get`` reads one)."""
        self._fetch_committed(item)
        self._fetch_inputs(item, get)

    def attempt_folder(self, item: Item, subtask: Subtask, attempt: str) -> Path:
        """A fresh, empty folder for one attempt's outputs (``$PYANAMO_OUTDIR``)."""
        folder = self.folder(item) / "attempts" / subtask.key / attempt
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.mkdir(parents=True)
            if self.task_user is not None:  # the sub-task's user writes it
                os.chown(folder, self.task_user.uid, self.task_user.gid)
        except OSError as exc:
            raise LocalFailure(f"cannot create an output folder in {self.root}: {exc.strerror}") from None
        return folder

    def stage(self, item: Item, result: SubtaskResult, outdir: Path) -> SubtaskResult:
        """A done attempt's outputs go to the store, uncommitted, and its manifest into the
        result (written by the worker's fenced record write); a failed attempt's folder is
        dropped. Outputs that cannot be stored fail the attempt with the reason."""
        if result.status is not SubtaskStatus.DONE or not any(outdir.iterdir()):  # failed, or wrote nothing
            shutil.rmtree(outdir, ignore_errors=True)
            return result
        path = attempt_path(self.table, item.item_id, result.key, outdir.name)
        emit("outputs_staging", item=item.item_id, subtask=result.key, attempt=outdir.name)
        try:
            manifest, stored = self.outputs.stage(outdir, path, outdir.name, self.max_output_size)
        except (OutputError, OSError) as exc:
            shutil.rmtree(outdir, ignore_errors=True)
            emit("outputs_failed", item=item.item_id, subtask=result.key, error=str(exc))
            return replace(result, status=SubtaskStatus.FAILED, error_line=f"{result.key}: {exc}"[:300])
        self._staged[(item.item_id, result.key)] = (manifest, outdir)
        record = replace(result.record, output_files=len(manifest.files), output_bytes=manifest.size)
        return replace(result, outputs=stored, record=record)

    def settle(self, item: Item, key: str, recorded: bool) -> None:
        """After the result write of sub-task ``key``: commit its staged outputs if the write
        succeeded (``recorded``), and keep them for the item's later sub-tasks; else discard them."""
        staged = self._staged.pop((item.item_id, key), None)
        if staged is None:
            return
        manifest, folder = staged
        if not recorded:
            self.outputs.discard(manifest)
            shutil.rmtree(folder, ignore_errors=True)
            emit("outputs_discarded", item=item.item_id, subtask=key, attempt=manifest.attempt)
            return
        try:
            self.outputs.commit(manifest)
        except Exception as exc:  # noqa: BLE001 - committed by the manifest; readers finish it
            emit("outputs_commit_deferred", item=item.item_id, subtask=key, error=str(exc))
        kept = self.item_outputs(item) / key  # $PYANAMO_ITEM_OUTPUTS for later sub-tasks
        shutil.rmtree(kept, ignore_errors=True)
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder, kept)

    def _fetch_committed(self, item: Item) -> None:
        """Earlier sub-tasks' committed outputs, where this worker did not run them (a reclaim):
        downloaded into ``$PYANAMO_ITEM_OUTPUTS/<key>`` before the next sub-task starts."""
        for subtask in item.subtasks:
            try:
                files = download_committed(subtask, self.item_outputs(item) / subtask.key)
            except FETCH_ERRORS as exc:
                emit("outputs_fetch_failed", item=item.item_id, subtask=subtask.key, error=str(exc))
            else:
                if files is not None:
                    emit("outputs_fetched", item=item.item_id, subtask=subtask.key, files=files)

    def _fetch_inputs(self, item: Item, get: Callable[[str], Item | None]) -> None:
        """The committed outputs of the items this one waited for (``After``): downloaded into
        ``$PYANAMO_INPUTS/<item>/<sub-task key>`` before its first sub-task starts (a joint step
        reads every sample's calls there)."""
        for upstream_id in item.after:
            upstream = get(upstream_id)
            if upstream is None:
                emit("inputs_missing", item=item.item_id, upstream=upstream_id)
                continue
            for subtask in upstream.subtasks:
                try:
                    download_committed(subtask, self.inputs(item) / safe_name(upstream_id) / subtask.key)
                except FETCH_ERRORS as exc:
                    emit("inputs_fetch_failed", item=item.item_id, upstream=upstream_id, subtask=subtask.key,
                         error=str(exc))
        if item.after and self.task_user is not None and self.inputs(item).exists():
            for path in [self.inputs(item), *self.inputs(item).rglob("*")]:
                os.chown(path, self.task_user.uid, self.task_user.gid)


def download_committed(subtask: Subtask, folder: Path) -> int | None:
    """A done sub-task's committed outputs, downloaded into ``folder`` unless it is there
    already: the number of files, or None when there was nothing to download."""
    if subtask.status is not SubtaskStatus.DONE or not subtask.outputs or folder.exists():
        return None
    manifest = Manifest.from_map(subtask.outputs)
    store_of_location(manifest.location).fetch(manifest, folder)
    return len(manifest.files)
