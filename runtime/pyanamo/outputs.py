"""Sub-task outputs with a fenced commit: exactly one attempt's outputs count.

Each attempt of a sub-task writes into a fresh, empty folder (``$PYANAMO_OUTDIR``). When it
ends with exit 0, the worker *stages* the folder in the store under a prefix of that attempt's
own (``TABLE/ITEM/SUBTASK/ATTEMPT``, ATTEMPT = attempt number + the lease token's start), then
writes the sub-task's result **and the manifest** (path, size, sha256 of every file) in the one
conditional write that the lease fences. Only then is the attempt *committed* in the store:

- in S3, staged objects carry the tag ``pyanamo-commit=pending``, which a lifecycle rule of the
  results bucket expires; committing removes the tag;
- in a local folder, the attempt is staged under ``.staging/`` and renamed into place.

A worker whose write was refused (it lost the lease) discards what it staged; whatever a
killed worker left staged is never named by a manifest and expires (S3) or stays under
``.staging/`` (local). A worker killed between its write and the commit leaves a manifest that
names staged data: readers (``pyanamo outputs``, the next owner of the item) finish the commit,
so the manifest is the one truth.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from boto3.exceptions import Boto3Error

from .errors import BOTO_ERRORS
from .runner import safe_name
from .schema import SUBTASK_MANIFEST_BYTES

PENDING_TAG = ("pyanamo-commit", "pending")  # the results bucket's lifecycle rule expires these
STAGING = ".staging"
MANIFEST_OBJECT = "_pyanamo_manifest.json"  # holds the file list of an attempt with many files


class OutputError(Exception):
    """The outputs of an attempt cannot be stored (too large, unreadable, the store refused)."""


@dataclass(frozen=True)
class OutputFile:
    path: str  # relative to the attempt's folder, '/'-separated
    size: int
    sha256: str

    def to_map(self) -> dict[str, Any]:
        return {"Path": self.path, "Size": self.size, "SHA256": self.sha256}

    @classmethod
    def from_map(cls, value: Mapping[str, Any]) -> OutputFile:
        return cls(str(value["Path"]), int(value["Size"]), str(value["SHA256"]))


@dataclass(frozen=True)
class Manifest:
    """What one committed attempt wrote: stored in ``TaskScript.<key>.Outputs``."""

    attempt: str
    location: str  # s3://bucket/prefix/TABLE/ITEM/SUBTASK/ATTEMPT/ or a local folder
    files: tuple[OutputFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_map(self, listing_sha256: str | None = None) -> dict[str, Any]:
        value: dict[str, Any] = {"Attempt": self.attempt, "Location": self.location,
                                 "Count": len(self.files), "Bytes": self.size}
        if listing_sha256 is None:
            value["Files"] = [f.to_map() for f in self.files]
        else:  # the list is the object MANIFEST_OBJECT under the attempt's location
            value["Files_Object"] = MANIFEST_OBJECT
            value["Files_SHA256"] = listing_sha256
        return value

    @classmethod
    def from_map(cls, value: Mapping[str, Any], store: OutputStore | None = None) -> Manifest:
        """From a stored map; a list kept as an object is read through ``store`` (checked)."""
        location = str(value["Location"])
        if "Files" in value:
            files = tuple(OutputFile.from_map(f) for f in value["Files"])
        else:
            raw = (store or store_of_location(location)).read_listing(location)
            if hashlib.sha256(raw).hexdigest() != value.get("Files_SHA256"):
                raise OutputError(f"{location}{MANIFEST_OBJECT}: does not match the sha256 in the item")
            files = tuple(OutputFile.from_map(f) for f in json.loads(raw))
        return cls(str(value["Attempt"]), location, files)


def attempt_id(attempt: int, lease_token: str) -> str:
    """Unique per attempt: two executions of attempt 2 (a reclaim) hold different leases."""
    return f"{attempt}-{lease_token[:12]}"


def attempt_path(table: str, item_id: str, subtask: str, attempt: str) -> str:
    return f"{safe_name(table)}/{safe_name(item_id)}/{subtask}/{attempt}"


def scan(folder: Path, max_bytes: int | None = None) -> list[tuple[Path, OutputFile]]:
    """Every regular file under ``folder`` with its size and sha256 (symbolic links are refused:
    they would point outside the attempt)."""
    found: list[tuple[Path, OutputFile]] = []
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = Path(root, name)
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink() or not path.is_file():
                raise OutputError(f"$PYANAMO_OUTDIR/{relative} is not a regular file (links are not stored)")
            size = path.stat().st_size
            total += size
            if max_bytes is not None and total > max_bytes:
                raise OutputError(f"outputs exceed the limit of {_human(max_bytes)} per attempt "
                                  f"(--max-output-size); nothing was stored")
            found.append((path, OutputFile(relative, size, _sha256(path))))
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:g} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return f"{size} B"


class OutputStore(Protocol):
    """Where committed outputs live; ``stage`` -> fenced write -> ``commit`` (or ``discard``)."""

    def stage(self, folder: Path, path: str, attempt: str, max_bytes: int | None) -> tuple[Manifest, dict[str, Any]]:
        """Store the folder's files as uncommitted; the manifest and its map for the item."""
        ...

    def commit(self, manifest: Manifest) -> None: ...

    def discard(self, manifest: Manifest) -> None: ...

    def fetch(self, manifest: Manifest, dest: Path) -> int:
        """Copy a committed attempt's files into ``dest`` (files already there with the right
        sha256 are kept: a download resumes), checking every sha256; returns bytes copied."""
        ...

    def read_listing(self, location: str) -> bytes: ...


def _listing(manifest: Manifest) -> bytes | None:
    """The file list as an object's body, when the manifest would take more of the item than a
    sub-task's share (``SUBTASK_MANIFEST_BYTES``); None when it fits in the item."""
    if len(json.dumps(manifest.to_map(), separators=(",", ":")).encode()) <= SUBTASK_MANIFEST_BYTES:
        return None
    return json.dumps([f.to_map() for f in manifest.files], separators=(",", ":")).encode()


def listed_apart(manifest: Manifest) -> bool:
    return _listing(manifest) is not None


class LocalOutputStore:
    """A folder as the store (``pyanamo worker --outputs DIR``, the default locally)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _staging(self, location: str) -> Path:
        return self.root / STAGING / Path(location).relative_to(self.root)

    def stage(self, folder: Path, path: str, attempt: str, max_bytes: int | None) -> tuple[Manifest, dict[str, Any]]:
        found = scan(folder, max_bytes)
        final = self.root / path
        staged = self.root / STAGING / path
        if staged.exists():
            shutil.rmtree(staged)
        for source, entry in found:
            target = staged / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)  # same file system: no copy of a large BAM
            except OSError:
                shutil.copy2(source, target)
        staged.mkdir(parents=True, exist_ok=True)
        files = [entry for _, entry in found]
        manifest = Manifest(attempt, str(final), tuple(files))
        listing = _listing(manifest)
        if listing is not None:
            (staged / MANIFEST_OBJECT).write_bytes(listing)
        return manifest, manifest.to_map(None if listing is None else hashlib.sha256(listing).hexdigest())

    def commit(self, manifest: Manifest) -> None:
        final = Path(manifest.location)
        staged = self._staging(manifest.location)
        if final.exists() or not staged.exists():
            return  # committed already (a reader finished it)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, final)

    def discard(self, manifest: Manifest) -> None:
        shutil.rmtree(self._staging(manifest.location), ignore_errors=True)

    def read_listing(self, location: str) -> bytes:
        for folder in (Path(location), self._staging(location)):
            if (folder / MANIFEST_OBJECT).exists():
                return (folder / MANIFEST_OBJECT).read_bytes()
        raise OutputError(f"{location}: the list of files is missing")

    def fetch(self, manifest: Manifest, dest: Path) -> int:
        self.commit(manifest)  # a worker killed after its fenced write: the manifest is the truth
        source = Path(manifest.location)
        copied = 0
        for entry in manifest.files:
            target = dest / entry.path
            if target.is_file() and target.stat().st_size == entry.size and _sha256(target) == entry.sha256:
                continue
            if not (source / entry.path).is_file():
                raise OutputError(f"{source / entry.path}: missing (the manifest names it)")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(source / entry.path, partial)
            _check_and_move(partial, target, entry)
            copied += entry.size
        return copied


class S3OutputStore:
    """An S3 bucket (and prefix) as the store: ``--outputs s3://bucket/prefix``. Uploads and
    downloads go through boto3's transfer manager (multipart and retries)."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            from .aws import Endpoint, aws_client

            self._client = aws_client("s3", Endpoint())
        return self._client

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def _split(self, location: str) -> str:
        bucket, _, key = location.removeprefix("s3://").partition("/")
        if bucket != self.bucket:
            raise OutputError(f"{location}: not in bucket {self.bucket}")
        return key

    def stage(self, folder: Path, path: str, attempt: str, max_bytes: int | None) -> tuple[Manifest, dict[str, Any]]:
        found = scan(folder, max_bytes)
        base = self._key(path)
        tagging = {"Tagging": f"{PENDING_TAG[0]}={PENDING_TAG[1]}"}
        files = [entry for _, entry in found]
        manifest = Manifest(attempt, f"s3://{self.bucket}/{base}/", tuple(files))
        try:
            for source, entry in found:
                self.client.upload_file(str(source), self.bucket, f"{base}/{entry.path}", ExtraArgs=tagging)
            listing = _listing(manifest)
            if listing is not None:
                self.client.put_object(Bucket=self.bucket, Key=f"{base}/{MANIFEST_OBJECT}", Body=listing,
                                       Tagging=tagging["Tagging"])
        except (*BOTO_ERRORS, Boto3Error, OSError) as exc:
            self.discard(manifest)
            raise OutputError(f"could not upload outputs to s3://{self.bucket}/{base}/: {exc}") from None
        return manifest, manifest.to_map(None if listing is None else hashlib.sha256(listing).hexdigest())

    def _keys(self, manifest: Manifest) -> Iterator[str]:
        base = self._split(manifest.location)
        for entry in manifest.files:
            yield f"{base}{entry.path}"
        if listed_apart(manifest):
            yield f"{base}{MANIFEST_OBJECT}"

    def commit(self, manifest: Manifest) -> None:
        for key in self._keys(manifest):
            self.client.delete_object_tagging(Bucket=self.bucket, Key=key)

    def discard(self, manifest: Manifest) -> None:
        keys = [{"Key": k} for k in self._keys(manifest)]
        for start in range(0, len(keys), 1000):
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start:start + 1000],
                                                                        "Quiet": True})
            except BOTO_ERRORS:  # the lifecycle rule expires what is left
                return

    def read_listing(self, location: str) -> bytes:
        key = f"{self._split(location)}{MANIFEST_OBJECT}"
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def fetch(self, manifest: Manifest, dest: Path) -> int:
        self.commit(manifest)  # idempotent: finishes the commit of a worker killed after its write
        base = self._split(manifest.location)
        copied = 0
        for entry in manifest.files:
            target = dest / entry.path
            if target.is_file() and target.stat().st_size == entry.size and _sha256(target) == entry.sha256:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            self.client.download_file(self.bucket, f"{base}{entry.path}", str(partial))
            _check_and_move(partial, target, entry)
            copied += entry.size
        return copied


def _check_and_move(partial: Path, target: Path, entry: OutputFile) -> None:
    if _sha256(partial) != entry.sha256:
        partial.unlink()
        raise OutputError(f"{target}: sha256 does not match the manifest")
    os.replace(partial, target)


def store_for(where: str, s3_client: Any = None) -> OutputStore:
    """``s3://bucket/prefix`` or a folder; a manifest's location works too (its bucket, or the
    local store's root, is found from it)."""
    if where.startswith("s3://"):
        bucket, _, prefix = where.removeprefix("s3://").partition("/")
        if not bucket:
            raise OutputError(f"{where}: no bucket named")
        return S3OutputStore(bucket, prefix, s3_client)
    return LocalOutputStore(Path(where))


def store_of_location(location: str, s3_client: Any = None) -> OutputStore:
    """The store that holds a committed attempt, from the manifest's location alone: a local
    attempt folder is four levels below its store's root (TABLE/ITEM/SUBTASK/ATTEMPT)."""
    if location.startswith("s3://"):
        return store_for(f"s3://{location.removeprefix('s3://').partition('/')[0]}", s3_client)
    return LocalOutputStore(Path(location).parents[3])


@dataclass(frozen=True)
class Committed:
    """One done sub-task's committed outputs, as `pyanamo outputs` lists them."""

    item_id: str
    subtask: str
    manifest: Manifest

    def to_json(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "subtask": self.subtask, "attempt": self.manifest.attempt,
                "location": self.manifest.location, "bytes": self.manifest.size,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.manifest.files]}


def committed_outputs(queue: Any, item_ids: Sequence[str] = ()) -> Iterator[Committed]:
    """The committed outputs of these items (all items if none are named), item by item in
    itemID order, sub-tasks in their order. An unknown item ID is a usage error, before any
    output is listed."""
    from .errors import UsageError
    from .model import from_dynamo
    from .schema import SUBTASK_OUTPUTS, Attr, ItemState, subtask_order

    wanted = [Attr.ITEM_ID, Attr.TASK_SCRIPT]
    if item_ids:
        rows = [from_dynamo(r) for r in queue.get_many(item_ids, wanted)]
        missing = sorted(set(item_ids) - {r.get(Attr.ITEM_ID) for r in rows})
        if missing:
            raise UsageError(f"no item {missing[0]!r} in table {queue.table}")
    else:
        rows = [from_dynamo(r) for state in ItemState for r in queue.rows_in_state(state, wanted)]
    for row in sorted(rows, key=lambda r: str(r.get(Attr.ITEM_ID))):
        scripts = row.get(Attr.TASK_SCRIPT)
        if not isinstance(scripts, Mapping):
            continue
        for key in sorted(scripts, key=subtask_order):
            value = scripts[key]
            stored = value.get(SUBTASK_OUTPUTS) if isinstance(value, Mapping) else None
            if isinstance(stored, Mapping):
                try:
                    manifest = Manifest.from_map(stored)
                except (KeyError, TypeError, ValueError) as exc:
                    raise OutputError(f"item {row[Attr.ITEM_ID]!r} {key}: malformed manifest ({exc})") from None
                yield Committed(str(row[Attr.ITEM_ID]), key, manifest)


def download(entries: Sequence[Committed], dest: Path) -> int:
    """Fetch every entry into ``dest/ITEM/SUB-TASK/``; returns the bytes copied (files already
    there and matching are skipped, so an interrupted download resumes)."""
    stores: dict[str, OutputStore] = {}
    copied = 0
    for entry in entries:
        location = entry.manifest.location
        root = location.removeprefix("s3://").partition("/")[0] if location.startswith("s3://") else location
        if root not in stores:
            stores[root] = store_of_location(location)
        store = stores[root]
        try:
            copied += store.fetch(entry.manifest, dest / safe_name(entry.item_id) / entry.subtask)
        except (*BOTO_ERRORS, Boto3Error, OSError) as exc:
            raise OutputError(f"{entry.item_id} {entry.subtask}: cannot download {location}: {exc}") from None
    return copied
