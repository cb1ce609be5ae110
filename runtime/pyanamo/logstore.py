"""Where full sub-task logs go: a local folder, and an S3 bucket when one is given."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from boto3.exceptions import Boto3Error

from .errors import BOTO_ERRORS
from .events import emit
from .runner import safe_name


class LogStore:
    def __init__(
        self,
        log_dir: Path,
        table: str,
        bucket: str | None = None,
        s3_client: Callable[[], Any] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.table = table
        self.bucket, _, prefix = (bucket or "").partition("/")
        self.prefix = prefix.strip("/")
        self._s3_client = s3_client
        self._s3: Any = None

    def private(self) -> None:
        """Create the log folder as the operator's alone (0700): sub-tasks' output may be private.
        An existing folder is left as it is; each execution's own folder is 0700 all the same."""
        try:
            self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            pass  # reported when the first sub-task cannot write its log (a local failure)

    def folder(self, item_id: str, key: str, execution: str) -> Path:
        """One execution's folder (``outputs.attempt_id``: the attempt and its lease): a reclaimed
        attempt runs again under a new lease and never overwrites the first execution's logs."""
        return self.log_dir / safe_name(self.table) / safe_name(item_id) / key / f"attempt-{execution}"

    def publish(self, folder: Path) -> str:
        """Upload the folder's logs when a bucket is set; return where the full log is."""
        if not self.bucket:
            return str(folder)
        relative = folder.relative_to(self.log_dir).as_posix()
        base = f"{self.prefix}/{relative}" if self.prefix else relative
        try:
            if self._s3 is None:
                self._s3 = self._s3_client() if self._s3_client else _default_s3()
            for name in ("stdout", "stderr"):
                self._s3.upload_file(str(folder / name), self.bucket, f"{base}/{name}")
        except (*BOTO_ERRORS, Boto3Error, OSError) as exc:  # the local copy stays: an upload must not fail the task
            emit("log_upload_failed", folder=str(folder), error=str(exc))
            return str(folder)
        return f"s3://{self.bucket}/{base}/"


def _default_s3() -> Any:
    import boto3

    return boto3.client("s3")
