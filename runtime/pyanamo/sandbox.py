"""What a sub-task runs as on the fleet: another user, and a job role's credentials.

On an instance the worker holds the instance role (the table, the group, the logs). A sub-task
is the user's code and must hold none of it: with ``--run-as USER`` (the worker then runs as
root) it runs as that user, whom the bootstrap's firewall keeps away from the metadata service;
with ``--job-role ARN`` it gets that role's temporary credentials in its environment — on the
fleet, read access to the input buckets and nothing else.
"""

from __future__ import annotations

import os
import pwd
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import BOTO_ERRORS, UsageError
from .runner import LocalFailure

CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                        "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SHARED_CREDENTIALS_FILE",
                        "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                        "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")
JOB_SESSION_SECONDS = 12 * 3600  # the job role's longest session (its MaxSessionDuration)
REFRESH_BEFORE = 30 * 60  # a sub-task starts with credentials valid for at least this long


@dataclass(frozen=True)
class TaskUser:
    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def named(cls, name: str) -> TaskUser:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise UsageError(f"--run-as {name}: no such user") from None
        if os.geteuid() != 0:
            raise UsageError(f"--run-as {name}: the worker must run as root to run sub-tasks as another user")
        if entry.pw_uid == 0:
            raise UsageError(f"--run-as {name}: that is root; name an unprivileged user")
        return cls(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    def environment(self) -> dict[str, str]:
        return {"USER": self.name, "LOGNAME": self.name, "HOME": self.home}


class JobCredentials:
    """The job role's temporary credentials, assumed once and renewed before they run short."""

    def __init__(self, role_arn: str, sts: Callable[[], Any], session_name: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.role_arn = role_arn
        self._sts = sts
        self.session_name = "".join(c if c.isalnum() or c in "=,.@-_" else "-" for c in session_name)[:64]
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: dict[str, str] = {}
        self._expires = 0.0

    def environment(self) -> dict[str, str]:
        """AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; LocalFailure if the role
        cannot be assumed here (the item goes back; this machine is at fault, not the item)."""
        with self._lock:
            if self._clock() > self._expires - REFRESH_BEFORE:
                try:
                    answer = self._sts().assume_role(RoleArn=self.role_arn, RoleSessionName=self.session_name,
                                                     DurationSeconds=JOB_SESSION_SECONDS)
                except BOTO_ERRORS as exc:
                    raise LocalFailure(f"cannot assume the job role {self.role_arn}: {exc}") from None
                credentials = answer["Credentials"]
                self._cached = {"AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
                                "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
                                "AWS_SESSION_TOKEN": credentials["SessionToken"]}
                self._expires = credentials["Expiration"].timestamp()
            return dict(self._cached)


def subtask_environment(base: dict[str, str], user: TaskUser | None, job: JobCredentials | None) -> dict[str, str]:
    """The worker's environment as a sub-task gets it: with a job role, none of the worker's own
    credentials, only the role's."""
    env = dict(base)
    if job is not None:
        for name in CREDENTIAL_VARIABLES:
            env.pop(name, None)
        env.update(job.environment())
    if user is not None:
        env.update(user.environment())
    return env
