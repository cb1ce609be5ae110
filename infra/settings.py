"""Deployment settings, read from CDK context (`cdk.json` defaults, `-c key=value` overrides)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ARM_FAMILY = re.compile(r"^[a-z]+\d+[a-z]*g[a-z]*\.", re.IGNORECASE)  # c7g, m6gd, t4g, c6gn


class SettingsError(ValueError):
    """A context value that makes no sense; reported as one line by app.py."""


# Settings that were removed, and what to do instead (a one-line error, never silently ignored).
REMOVED = {
    "desired_capacity": "the fleet's size is no longer in the template, so a redeploy never resets a running "
                        "fleet: the backlog scaler raises it, or run `pyanamo fleet scale STACK N` after deploying",
}
AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Settings:
    stack_name: str | None = None  # default: from the table's name, so a new table is a new stack
    table: str = "PyAnamo"
    retain: bool = True  # keep the table and the results bucket when the stack is destroyed
    fleet_size: int = 10  # the group's maximum (the scaler and `fleet scale` set its size)
    instance_types: tuple[str, ...] = ("c6i.large",)
    spot: bool = False
    volume_size: int = 30  # GiB, root volume
    vpc_id: str | None = None
    subnet_ids: tuple[str, ...] = ()
    public_ip: bool | None = None  # default: yes in the new VPC, no in an existing one
    lease: int = 300
    items: int = 1
    nests: int = 1
    max_attempts: int = 2
    timeout: int | None = None
    log_expiry_days: int = 90
    empty_log_bucket_on_destroy: bool = True
    scaler: bool = True
    items_per_instance: int | None = None  # default: items
    bootstrap_version_rule: bool = True
    machine_image: str | None = None  # an AMI ID or an SSM parameter name; default: latest AL2023
    setup: str | None = None  # the user's shell script, run as root at boot before the worker
    setup_timeout: int = 3600  # seconds; a setup that runs longer is a failed boot
    input_buckets: tuple[str, ...] = ()  # bucket or bucket/prefix, read-only for the workers
    output_bucket: str | None = None  # bucket[/prefix] for committed outputs; default: one the stack creates
    uncommitted_expiry_days: int = 7  # staged outputs never committed are deleted after this
    ssm: bool = False  # attach AmazonSSMManagedInstanceCore (Session Manager onto the instances)
    max_instance_hours: int = 72  # the scaler ends any instance in service longer than this

    @property
    def name_of_stack(self) -> str:
        """The stack's name: ``stack_name``, else the table's name (CloudFormation's characters)."""
        if self.stack_name:
            return self.stack_name
        name = re.sub(r"[^A-Za-z0-9-]", "-", self.table)
        return name if name[:1].isalpha() else f"PyAnamo-{name}"

    @property
    def arm64(self) -> bool:
        kinds = {bool(ARM_FAMILY.match(t)) for t in self.instance_types}
        if len(kinds) > 1:
            raise SettingsError("instance_types mixes Graviton (arm64) and x86_64 types")
        return kinds == {True}

    @property
    def scaler_items_per_instance(self) -> int:
        return self.items_per_instance or self.items

    @property
    def assign_public_ip(self) -> bool:
        return self.vpc_id is None if self.public_ip is None else self.public_ip

    def worker_args(self) -> list[str]:
        args = ["--lease", str(self.lease), "--items", str(self.items), "--nests", str(self.nests),
                "--max-attempts", str(self.max_attempts), "--quiet"]
        if self.timeout:
            args += ["--timeout", str(self.timeout)]
        return args


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "yes", "1", "on"}:
        return True
    if text in {"false", "no", "0", "off", ""}:
        return False
    raise ValueError(f"not true or false: {value!r}")


def _int(value: Any) -> int:
    number = int(str(value).strip())
    if number < 0:
        raise ValueError(f"negative: {value!r}")
    return number


def _list(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(str(v).strip() for v in items if str(v).strip())


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v in (None, "", "none", "null") else parse(v)


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "stack_name": _optional(str), "table": str, "retain": _bool, "fleet_size": _int,
    "instance_types": _list, "spot": _bool, "volume_size": _int,
    "vpc_id": _optional(str), "subnet_ids": _list, "public_ip": _optional(_bool), "lease": _int,
    "items": _int, "nests": _int, "max_attempts": _int, "timeout": _optional(_int),
    "log_expiry_days": _int, "empty_log_bucket_on_destroy": _bool, "scaler": _bool,
    "items_per_instance": _optional(_int), "bootstrap_version_rule": _bool,
    "machine_image": _optional(str), "setup": _optional(str), "setup_timeout": _int,
    "input_buckets": _list, "output_bucket": _optional(str), "uncommitted_expiry_days": _int, "ssm": _bool,
    "max_instance_hours": _int,
}


def from_context(get: Callable[[str], Any]) -> Settings:
    """Settings from a context lookup (``app.node.try_get_context``); unset keys keep defaults."""
    values: dict[str, Any] = {}
    for name, instead in REMOVED.items():
        if get(name) is not None:
            raise SettingsError(f"context {name}: removed; {instead}")
    for f in fields(Settings):
        raw = get(f.name)
        if raw is None:
            continue
        try:
            values[f.name] = _PARSERS[f.name](raw)
        except ValueError as exc:
            raise SettingsError(f"context {f.name}={raw!r}: {exc}") from None
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{3,255}", s.table):
        raise SettingsError(f"context table={s.table!r}: 3-255 letters, digits, '_', '-' or '.'")
    if s.fleet_size < 1:
        raise SettingsError("context fleet_size must be at least 1")
    if s.stack_name is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,127}", s.stack_name):
        raise SettingsError(f"context stack_name={s.stack_name!r}: a letter, then letters, digits or '-'")
    if s.machine_image and not (AMI_ID.match(s.machine_image) or s.machine_image.startswith("/")):
        raise SettingsError(f"context machine_image={s.machine_image!r}: an AMI ID (ami-...) or an SSM "
                            "parameter name (/...)")
    if s.setup and not Path(s.setup).is_file():
        raise SettingsError(f"context setup={s.setup!r}: no such file")
    for name, value in [("input_buckets", b) for b in s.input_buckets] + [("output_bucket", s.output_bucket)]:
        if value is not None and not BUCKET_NAME.match(value.removeprefix("s3://").split("/", 1)[0]):
            raise SettingsError(f"context {name}: {value!r} is not an S3 bucket name (bucket or bucket/prefix)")
    if min(s.setup_timeout, s.uncommitted_expiry_days, s.max_instance_hours) < 1:
        raise SettingsError("context setup_timeout, uncommitted_expiry_days and max_instance_hours must be at least 1")
    if not s.instance_types:
        raise SettingsError("context instance_types is empty")
    if min(s.lease, s.items, s.nests, s.max_attempts) < 1:
        raise SettingsError("context lease, items, nests and max_attempts must be at least 1")
    if s.subnet_ids and not s.vpc_id:
        raise SettingsError("context subnet_ids needs vpc_id")
    s.arm64  # noqa: B018 - raises on a mix of architectures


def context_keys() -> Mapping[str, Any]:
    """Every setting with its default (what cdk.json lists)."""
    defaults = Settings()
    return {f.name: getattr(defaults, f.name) for f in fields(Settings)}
