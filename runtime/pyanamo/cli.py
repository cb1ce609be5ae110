"""The `pyanamo` command line.

Exit codes: 0 success; 1 an error; 2 bad input or usage; 3 some items failed (`worker`: it
drained the queue but items it finished failed; `status`: the table holds failed items);
128 + N a worker stopped by signal N.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import getpass
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__, events
from .aws import Endpoint, aws_client, describe, dynamodb_client, endpoint_url, where
from .errors import BOTO_ERRORS, EXIT_FAILED_ITEMS, PyAnamoError, TableMissing, UsageError, error_code, translate
from .gateway import TableGateway
from .model import ON_FAILURE_CONTINUE, ON_FAILURE_STOP
from .queue import TaskQueue
from .schema import ItemState, create_table_request, table_name_problem
from .terminal import printable

if TYPE_CHECKING:
    from .taskfile import TaskFile


def _number(kind: type, ok: Callable[[Any], bool], rule: str, what: str = "a number") -> Callable[[str], Any]:
    """An argparse type: ``kind`` of the text, which must satisfy ``ok`` (``rule`` says how)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}: {text!r}")
        return value

    return parse


def _positive(kind: type) -> Callable[[str], Any]:
    return _number(kind, lambda v: v > 0, "must be greater than 0")


_not_negative = _number(float, lambda v: v >= 0, "must not be negative")
_SIZE_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def _duration(allow_zero: bool = False) -> Callable[[str], float]:
    """An argparse type: seconds, from ``90``, ``90s``, ``15m``, ``2h``, ``1.5h`` or ``1d``."""
    def parse(text: str) -> float:
        found = _DURATION.match(text)
        if found is None:
            raise argparse.ArgumentTypeError(f"not a duration (e.g. 90, 90s, 15m, 2h): {text!r}")
        value = float(found.group(1)) * _DURATION_UNITS[(found.group(2) or "").lower()]
        if value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if allow_zero else 'greater than 0'}: {text!r}")
        return value

    return parse


class _WatchAction(argparse.Action):
    """``--watch [DURATION]``: a word after it that is no duration is the table, as in
    ``status --watch mytable`` (argparse would otherwise take the table for the interval)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if not isinstance(values, str):  # given without a value: argparse passes the constant
            namespace.watch = values
            return
        try:
            namespace.watch = _duration()(values)
        except argparse.ArgumentTypeError as exc:
            if values[:1].isdigit():  # meant as a duration: say what is wrong with it
                parser.error(f"argument --watch: {exc}")
            if namespace.table is not None:
                parser.error(f"argument --watch: not a duration (e.g. 90, 90s, 15m, 2h): {values!r}")
            # the table positional is filled after this, empty: ``_resolve_table`` takes it from here
            namespace.watch, namespace.watch_table = self.const, values


def _size(text: str) -> int:
    """A size in bytes: ``5000000``, ``500M``, ``20G`` (decimal units, as S3 and df -H count)."""
    number, unit = text.strip().upper().rstrip("B"), ""
    if number and number[-1] in _SIZE_UNITS:
        number, unit = number[:-1], number[-1]
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size (e.g. 500M, 20G): {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return int(value)
_port = _number(int, lambda v: 0 <= v <= 65535, "must be between 0 and 65535", what="a port number")


class _DefaultsOnce(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless its help already says it (or there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with defaults shown in help, and a sub-command's own usage (with a "did you
    mean") for an option or a command it does not know."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsOnce)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        wrong = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if wrong:
            choices = re.findall(r"'([^']*)'", wrong.group(2))
            close = difflib.get_close_matches(wrong.group(1), choices, n=1)
            if close:
                message += f" (did you mean {close[0]}?)"
        super().error(message)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            owner = _innermost(self, parsed)
            known = [o for action in owner._actions for o in action.option_strings]
            hints = [difflib.get_close_matches(x.split("=")[0], known, n=1) for x in extras if x.startswith("-")]
            hint = next((f" (did you mean {h[0]}?)" for h in hints if h), "")
            owner.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed


def _innermost(parser: argparse.ArgumentParser, parsed: Any) -> argparse.ArgumentParser:
    """The sub-command parser that ``parsed`` went through (its usage fits the mistake)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(parsed, action.dest or "", None)
            if chosen in action.choices:
                return _innermost(action.choices[chosen], parsed)
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--endpoint-url", default=argparse.SUPPRESS, metavar="URL",
                        help="DynamoDB endpoint, http(s)://HOST[:PORT] (default: AWS_ENDPOINT_URL_DYNAMODB, "
                             "AWS_ENDPOINT_URL, or AWS itself)")
    common.add_argument("--region", default=argparse.SUPPRESS,
                        help="AWS region (default: AWS_REGION or AWS_DEFAULT_REGION)")

    parser = Parser(
        prog="pyanamo", parents=[common],
        description="Run batch workloads from a DynamoDB work queue.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")  # Parsers too

    def command(name: str, help: str, table: bool = True) -> argparse.ArgumentParser:
        p = commands.add_parser(name, parents=[common], help=help, description=help)
        if table:
            p.add_argument("table", nargs="?", default=None, metavar="TABLE",
                           help=f"the task table (default: ${TABLE_VARIABLE})")
        return p

    def selectors(p: argparse.ArgumentParser, verb: str) -> None:
        p.add_argument("item_ids", nargs="*", metavar="ITEM_ID", help=f"{verb} these items (even with a live lease)")
        p.add_argument("--state", choices=[s.value for s in ItemState], help=f"{verb} items in this state")
        p.add_argument("--task", dest="task_id", help=f"{verb} items of this taskID")
        p.add_argument("--instance", dest="instance_id",
                       help=f"{verb} items locked by this instance (with --rerun: finished by it)")
        p.add_argument("--expired", action="store_true", help=f"{verb} locked items whose lease has expired")
        p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")

    command("create-table", "create the task table (idempotent; waits until it is active)")
    command("tables", "list the tables on the endpoint (or in the AWS region)", table=False)
    p = command("drop-table", "delete a table and every item in it (asks first; --yes does not)")
    p.add_argument("--yes", action="store_true", help="do not ask (needed where there is no terminal to ask on)")

    _import_options(command("import", "import items from a task file"))

    _worker_options(command("worker", "claim and run items until the queue is drained"))

    p = command("status", "where a run stands (exit 3 if any item failed)")
    p.add_argument("--json", action="store_true", help="print JSON (with --watch: one object per line)")
    p.add_argument("--watch", action=_WatchAction, nargs="?", const=WATCH_SECONDS, default=None, metavar="DURATION",
                   help=f"refresh every DURATION (default {WATCH_SECONDS:g} s when given without one) until no "
                        "item is todo or locked, with the rate and the time to finish (not on a terminal: one "
                        "line per refresh; an empty table: says so and exits)")
    p.add_argument("--running", action="store_true", help="list the running items instead (as pyanamo ps)")

    p = command("ps", "the running items: where, which sub-task, since when")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("reset", "put items back to todo")
    selectors(p, "reset")
    p.add_argument("--subtasks", action="store_true", help="also set failed sub-tasks back to todo")
    p.add_argument("--rerun", action="store_true",
                   help="run finished (done, failed, cancelled) items again from the first sub-task, keeping "
                        "a record of the earlier run")

    p = command("cancel", "stop items for good: no one claims them; running ones are stopped via their lease")
    selectors(p, "cancel")

    p = command("report", "the run report: where every sub-task ran, how long, how much memory, what it cost")
    p.add_argument("--html", type=Path, default=None, metavar="FILE",
                   help="write a self-contained HTML report (timeline, distributions, failures, right-sizing)")
    p.add_argument("--trace", type=Path, default=None, metavar="FILE",
                   help="write one tab-separated row per sub-task run")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = command("outputs", "list the committed outputs of items, or download them (sha256 checked)")
    p.add_argument("item_ids", nargs="*", metavar="ITEM_ID", help="these items (default: every item)")
    p.add_argument("--download", type=Path, default=None, metavar="DIR",
                   help="copy them into DIR/ITEM/SUB-TASK/ (files already there with the right sha256 are kept)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("logs", "print the stored log tails of an item")
    p.add_argument("item_id", metavar="ITEM_ID", help="the item whose logs to print")
    p.add_argument("--subtask", default=None, metavar="KEY",
                   help="only this sub-task: its key (Task_0) or the TaskArgs argument that made it (chr2)")

    p = command("fleet", "the worker fleet of a deployed stack", table=False)
    fleet = p.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    f = fleet.add_parser("status", parents=[common], help="the group's size and instances")
    f.add_argument("stack", help="the deployed CloudFormation stack's name (cdk.json's stack_name)")
    f = fleet.add_parser("scale", parents=[common], help="set the group's desired capacity")
    f.add_argument("stack", help="the deployed CloudFormation stack's name (cdk.json's stack_name)")
    f.add_argument("size", type=_number(int, lambda v: v >= 0, "must not be negative"),
                   help="instances wanted (at most the group's maximum)")
    f = fleet.add_parser("leave", parents=[common],
                         help="take this instance out of its group (run on an instance when its worker exits)")
    f.add_argument("--worker-exit", type=int, default=None, metavar="CODE",
                   help="the worker's exit code (recorded in the message; the instance leaves whatever it is, "
                        "unless it goes anyway: a Spot notice, Auto Scaling terminating it)")
    f = fleet.add_parser("boot-failed", parents=[common],
                         help="on an instance whose boot failed: log to the log bucket, a record in the table, leave")
    f.add_argument("--log", type=Path, required=True, help="the bootstrap's log file")
    f.add_argument("--table", default=None, help=f"the task table (default: ${TABLE_VARIABLE})")
    f.add_argument("--log-bucket", default=None, help="S3 bucket[/prefix] for the log")

    p = command("repair", "find items whose index keys disagree with their state (dry run), and fix them")
    p.add_argument("--apply", action="store_true", help="fix them (each only if it is still as read)")

    _local_options(command("local", "run an embedded DynamoDB-compatible endpoint on 127.0.0.1", table=False))
    return parser


def _import_options(p: argparse.ArgumentParser) -> None:
    """``pyanamo import``: the task file and how it is read."""
    p.add_argument("file", type=Path, help="the task file; - reads standard input")
    p.add_argument("--delimiter", default="|",
                   help="column delimiter: '|', 'tab' or ',' (tab and comma files are CSV: quote a field that "
                        "holds the delimiter)")
    p.add_argument("--nested-delimiter", default=None,
                   help="split TaskArgs on this; each argument becomes one sub-task ({} in TaskScript is "
                        "replaced by it, else it is appended)")
    p.add_argument("--replace", action="store_true", help="overwrite items whose itemID exists")
    p.add_argument("--dry-run", action="store_true",
                   help="check the file and print each sub-task's command as it would run (item, sub-task, "
                        "command, tab-separated); write nothing")
    p.add_argument("--after", action="append", default=[], metavar="REFS",
                   help="every item of the file waits until these items are done: item IDs, task:TASKID "
                        "(every item of that task) or globs of item IDs, comma-separated (also: an After "
                        "column); repeatable")
    p.add_argument("--allow-missing", action="store_true",
                   help="an After item ID that is in neither the file nor the table is waited for anyway "
                        "(it is imported later) instead of refused")
    p.add_argument("--on-failure", choices=(ON_FAILURE_CONTINUE, ON_FAILURE_STOP), default=ON_FAILURE_CONTINUE,
                   help="continue: every sub-task of an item runs whatever the others did (independent "
                        "chromosomes); stop: the first sub-task that fails for good ends the item failed "
                        "and the rest are skipped (steps that need the one before)")


def _worker_options(p: argparse.ArgumentParser) -> None:
    """``pyanamo worker``: its slots, lease, limits, folders and how it starts sub-tasks."""
    p.add_argument("--items", type=_positive(int), default=1, help="items worked on concurrently")
    p.add_argument("--nests", type=_positive(int), default=1, help="sub-tasks of one item run concurrently")
    p.add_argument("--wall-time", type=_duration(), default=None, metavar="DURATION",
                   help="claim nothing new after this long (90, 90s, 15m, 2h)")
    p.add_argument("--lease", type=_duration(), default=120.0, metavar="DURATION",
                   help="lease length (seconds, or 90s, 5m; default 120)")
    p.add_argument("--max-attempts", type=_positive(int), default=2, help="runs of a failing sub-task (default 2)")
    p.add_argument("--retry-delay", type=_duration(allow_zero=True), default=1.0, metavar="DURATION",
                   help="seconds before the first retry of a failed sub-task, doubling after (default 1)")
    p.add_argument("--timeout", type=_duration(), default=None, metavar="DURATION",
                   help="kill a sub-task after this long (seconds, or 30m, 2h)")
    p.add_argument("--linger", type=_duration(allow_zero=True), default=None, metavar="DURATION",
                   help="seconds to wait for other workers' items before exiting (default: twice the lease)")
    p.add_argument("--max-claims", type=_positive(int), default=3,
                   help="fail an item after this many workers left it unfinished (died, lost the lease; "
                        "default 3)")
    p.add_argument("--outage-limit", type=_duration(), default=900.0, metavar="DURATION",
                   help="exit 1 after the table has been unreachable this many seconds (default 900)")
    p.add_argument("--log-dir", type=Path, default=Path("pyanamo-logs"), help="folder for full logs")
    p.add_argument("--log-bucket", default=None, help="S3 bucket[/prefix] for full logs")
    p.add_argument("--workdir", type=Path, default=Path("."), help="folder the sub-tasks run in")
    p.add_argument("--outputs", default="pyanamo-outputs", metavar="DIR|s3://BUCKET/PREFIX",
                   help="where the files a sub-task writes into $PYANAMO_OUTDIR are committed (only the attempt "
                        "that holds the item's lease commits)")
    p.add_argument("--max-output-size", type=_size, default=None, metavar="SIZE",
                   help="fail an attempt whose outputs are larger than this (e.g. 50G)")
    p.add_argument("--run-as", default=None, metavar="USER",
                   help="run sub-tasks as this unprivileged user (the worker must run as root; the fleet does this)")
    p.add_argument("--launcher", choices=("fork-server", "process"), default="fork-server",
                   help="how each sub-task's supervisor starts: forked by a fork server the worker starts once "
                        "(default), or as a process of its own (a Python start-up per sub-task)")
    p.add_argument("--job-role", default=None, metavar="ARN",
                   help="give sub-tasks this role's temporary credentials instead of the worker's own")
    p.add_argument("--price-per-hour", type=_not_negative, default=None, metavar="USD",
                   help="this machine's price per hour for the run's cost (default: on EC2 looked up from the "
                        "Price List API or the Spot price history; elsewhere 0)")
    p.add_argument("--quiet", action="store_true", help="no log events on stderr")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="one line of progress on stderr, redrawn in place, instead of the log events "
                        "(warnings still print); default: on when stderr is a terminal")


def _local_options(p: argparse.ArgumentParser) -> None:
    """``pyanamo local``: the embedded endpoint."""
    p.add_argument("--port", type=_port, default=8000, help="port (0 picks a free one)")
    p.add_argument("--engine", choices=["dynalite", "moto"], default="dynalite",
                   help="dynalite (Node.js; persistent, fast) or moto (in memory); dynalite falls back to "
                        "moto, with a notice, where Node.js 20+ or dynalite is missing")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--path", type=Path, default=None, metavar="DIR",
                       help="keep the tables in DIR (dynalite; default: $XDG_DATA_HOME/pyanamo/local, "
                            "that is ~/.local/share/pyanamo/local)")
    where.add_argument("--in-memory", action="store_true", help="keep nothing: the tables go when it stops")
    p.add_argument("--open", action="store_true",
                   help="serve requests signed with any key, from any user of this machine (for a test server "
                        "that other tools share); by default only requests signed with your secret are served")


TABLE_VARIABLE = "PYANAMO_TABLE"
WATCH_SECONDS = 10.0  # `status --watch` without a value


def _resolve_table(args: argparse.Namespace) -> None:
    """Fill in ``args.table`` from $PYANAMO_TABLE when it was left out. Commands that also take
    item IDs (reset, cancel) read their first argument as the table unless $PYANAMO_TABLE is set
    and the argument is not that name; then every argument is an item ID."""
    if not hasattr(args, "table"):
        return
    watched = getattr(args, "watch_table", None)  # status --watch TABLE
    if watched is not None:
        if args.table is not None:
            raise UsageError(f"two tables: {watched!r} after --watch and {args.table!r}")
        args.table = watched
    default = os.environ.get(TABLE_VARIABLE) or None
    ids = getattr(args, "item_ids", None)
    if ids is not None and args.table is not None and default is not None and args.table != default:
        args.item_ids = [args.table, *ids]
        args.table = None
        args.maybe_table = args.item_ids[0]  # a table after all if one of that name exists (``_steer``)
    if args.table is None:
        if default is None:
            raise UsageError(f"say which table: pyanamo {args.command} TABLE …, or set {TABLE_VARIABLE}")
        args.table = default


def _endpoint(args: argparse.Namespace) -> Endpoint:
    url = getattr(args, "endpoint_url", None)
    return Endpoint(endpoint_url(url) if url is not None else None, getattr(args, "region", None))


def _client(args: argparse.Namespace, **kwargs: Any) -> Any:
    return dynamodb_client(_endpoint(args), **kwargs)


def cmd_create_table(args: argparse.Namespace) -> int:
    problem = table_name_problem(args.table)
    if problem:
        raise UsageError(problem)
    client = _client(args)
    try:
        client.create_table(**create_table_request(args.table))
        print(f"creating table {args.table} in {where(client)} …", file=sys.stderr)
    except BOTO_ERRORS as exc:
        if error_code(exc) != "ResourceInUseException":  # it exists already: fine, wait for it
            raise
    client.get_waiter("table_exists").wait(TableName=args.table, WaiterConfig={"Delay": 1, "MaxAttempts": 300})
    print(f"table {args.table} is active ({where(client)})")
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    client = _client(args)
    names = [n for page in client.get_paginator("list_tables").paginate() for n in page.get("TableNames", [])]
    for name in names:
        print(name)
    if not names:
        print(f"no tables in {where(client)}", file=sys.stderr)
    return 0


def cmd_drop_table(args: argparse.Namespace) -> int:
    client = _client(args)
    _require_table(client, args.table)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"drop-table deletes every item of {args.table}: pass --yes to do it without a terminal")
        answer = input(f"delete table {args.table} and every item in it, in {where(client)}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            return 1
    client.delete_table(TableName=args.table)
    client.get_waiter("table_not_exists").wait(TableName=args.table, WaiterConfig={"Delay": 1, "MaxAttempts": 300})
    print(f"deleted table {args.table} ({where(client)})")
    return 0


def _require_table(client: Any, table: str) -> None:
    client.describe_table(TableName=table)


def cmd_import(args: argparse.Namespace) -> int:
    from .importer import IMPORT_ATTEMPTS, IO_THREADS, resolve_after
    from .taskfile import parse_delimiter, parse_task_file, split_references

    with parse_task_file(args.file, parse_delimiter(args.delimiter), args.nested_delimiter) as items:
        items.on_failure = args.on_failure
        after = [r for text in args.after for r in split_references(text)]
        if after or items.has_after:  # references are resolved against the table too
            client = _client(args, max_attempts=IMPORT_ATTEMPTS, pool=IO_THREADS + 2)
            _require_table(client, args.table)
            resolve_after(items, TableGateway(client, args.table), after=after, allow_missing=args.allow_missing)
        if args.dry_run:
            for item in items:
                if item.waiting_on:
                    print(printable(f"{item.item_id}\t(after)\t{', '.join(sorted(item.waiting_on))}"))
                for subtask in item.subtasks:
                    print(printable(f"{item.item_id}\t{subtask.key}\t{subtask.script}"))
            print(f"would import {len(items)} items ({items.subtasks} sub-tasks); nothing was written",
                  file=sys.stderr)
            return 0
        client = _client(args, max_attempts=IMPORT_ATTEMPTS, pool=IO_THREADS + 2)
        _require_table(client, args.table)
        return _write_task_file(args, client, items)


def _write_task_file(args: argparse.Namespace, client: Any, items: TaskFile) -> int:
    """``import``'s writing half: the items, then the edges and releases of their dependencies."""
    from rich.progress import Progress

    from .importer import link_upstreams, unblock_replaced, write_items

    queue = TableGateway(client, args.table)
    total = len(items)
    write = functools.partial(write_items, queue, items.in_write_order(), total=total, waiting=items.waiting,
                              replace=args.replace)
    if sys.stderr.isatty():
        with Progress(transient=True) as progress:
            bar = progress.add_task("importing", total=total)
            report = write(advance=lambda n: progress.advance(bar, n))
    else:
        report = write()
    if report.skipped:
        shown = ", ".join(report.skipped_ids) + (" …" if report.skipped > len(report.skipped_ids) else "")
        print(f"left {report.skipped} existing items untouched (use --replace to overwrite): {shown}")
    if report.busy:
        shown = ", ".join(report.busy_ids) + (" …" if report.busy > len(report.busy_ids) else "")
        print(f"left {report.busy} items untouched that workers are running now "
              f"(reset them by ID, then import again): {shown}")
    if report.replaced:
        print(f"replaced {report.replaced} existing items")
        waiting = unblock_replaced(queue, items.item_ids())
        if waiting:
            print(f"{len(waiting)} items that wait for replaced items are waiting again")
    print(f"imported {report.imported} items ({report.subtasks} sub-tasks) into {args.table} at {where(client)}")
    if items.waiting and not report.interrupted and not report.failed:
        settled = link_upstreams(queue, items)
        still = items.waiting - len(settled.released) - len(settled.blocked)
        print(f"{still} items wait for other items"
              + (f"; {len(settled.released)} had nothing left to wait for and are todo" if settled.released else "")
              + (f"; {len(settled.blocked)} are upstream_failed" if settled.blocked else ""))
        if settled.missing:
            missing = sorted({m for ids in settled.missing.values() for m in ids})
            print(printable(f"{len(settled.missing)} items wait for items not in the table yet: "
                            f"{', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}"))
    if report.interrupted or report.failed:
        cause = "interrupted" if report.failed is None else f"error: {describe(report.failed, args.table)}"
        print(f"pyanamo: {cause}: {report.not_written} of the file's {report.total} items were not written "
              f"(each item is written whole or not at all; import the file again to add them: existing items "
              f"are skipped)", file=sys.stderr)
        return 130 if report.interrupted else 1
    return 0


def _check_can_run(args: argparse.Namespace) -> None:
    """Fail at start, with one line, on a machine that could not run any sub-task."""
    if not args.workdir.is_dir():
        raise UsageError(f"--workdir {args.workdir}: no such folder")
    if shutil.which("bash") is None:
        raise PyAnamoError("bash is not on PATH: sub-tasks run with bash -c")
    try:
        args.log_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.log_dir):
            pass
    except OSError as exc:
        raise PyAnamoError(f"--log-dir {args.log_dir}: cannot write logs there: {exc.strerror}") from None


def cmd_worker(args: argparse.Namespace) -> int:
    from .cgroups import CgroupParent
    from .identity import Imds, worker_identity
    from .launcher import LAUNCHERS
    from .pricing import worker_placement
    from .progress import ProgressLine
    from .runner import become_subreaper
    from .spot import SpotWatcher
    from .worker import Worker, WorkerConfig

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    events.configure(quiet=args.quiet or progress)
    _check_can_run(args)
    become_subreaper()  # the reaper of last resort for a sub-task whose supervisor is killed
    cgroups = CgroupParent.find()
    if cgroups is not None:  # sub-tasks of workers killed with their supervisors: nobody else will stop them
        left = cgroups.sweep()
        if left:
            events.emit("leftovers_killed", processes=left,
                        why="processes of sub-tasks whose worker and supervisor were killed")
    client = _client(args, max_attempts=8, pool=max(10, 2 * args.items * args.nests + 4), validate=False)
    _require_table(client, args.table)
    imds = Imds()
    who = worker_identity(imds)
    placement = worker_placement(
        imds, who.instance_id, who.owner, args.price_per_hour, client.meta.region_name,
        lambda service, region: aws_client(service, Endpoint(None, region)),
        lambda line: events.emit("price_unknown", warning=line))
    config = WorkerConfig(
        table=args.table, items=args.items, nests=args.nests, wall_time=args.wall_time,
        lease=args.lease, max_attempts=args.max_attempts, retry_delay=args.retry_delay, timeout=args.timeout,
        linger=args.linger,
        outage_limit=args.outage_limit,
        workdir=args.workdir.resolve(), log_dir=args.log_dir.resolve(), log_bucket=args.log_bucket,
        placement=placement,
        outputs=args.outputs if args.outputs.startswith("s3://") else str(Path(args.outputs).resolve()),
        max_output_size=args.max_output_size, run_as=args.run_as, job_role=args.job_role,
    )
    queue = TaskQueue(client, args.table, owner=who.owner, lease_seconds=args.lease, max_claims=args.max_claims,
                      worker_id=who.worker_id)
    worker = Worker(queue, config, launcher=LAUNCHERS[args.launcher](cgroups))
    worker.install_signal_handlers()
    if who.instance_id:  # on EC2: a Spot interruption notice stops the worker as SIGTERM would
        SpotWatcher(imds, lambda _: worker.stop("spot_interruption", signal.SIGTERM)).start()
    line = ProgressLine(worker, TableGateway(client, args.table)).start() if progress else None
    try:
        code = worker.run()
    finally:
        if line is not None:
            line.close()
    policy = worker.policy
    if policy.error:
        print(f"pyanamo: error: worker stopped ({policy.reason}): {policy.detail}", file=sys.stderr)
    elif worker.items_failed:
        print(f"pyanamo: {worker.items_failed} of the items this worker finished failed "
              f"(see: pyanamo status {args.table})", file=sys.stderr)
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from .status import RateWindow, gather, plain_line, render

    if args.running:
        return cmd_ps(args)
    client = _client(args)
    _require_table(client, args.table)
    queue = TableGateway(client, args.table)
    report = gather(queue)
    if args.watch is None or report.total == 0:
        if args.json:
            print(json.dumps(report.to_json(), indent=2))
        else:
            Console().print(render(report))
        if args.watch is not None:
            print(f"table {args.table} is empty: nothing to watch (import items first)", file=sys.stderr)
        return EXIT_FAILED_ITEMS if report.unsuccessful else 0

    window = RateWindow()
    window.update(report, time.monotonic())

    def show(live: Live | None) -> None:
        if args.json:  # NDJSON: one object per refresh, flushed, for `| jq` or a log file
            print(json.dumps({"time": time.time(), **report.to_json()}), flush=True)
        elif live is not None:
            live.update(render(report), refresh=True)
        else:
            print(plain_line(report, time.time()), flush=True)

    live = Live(render(report), auto_refresh=False) if sys.stdout.isatty() and not args.json else None
    with live or contextlib.nullcontext():
        show(live)
        while not report.finished:
            time.sleep(args.watch)
            report = gather(queue)
            window.update(report, time.monotonic())
            show(live)
    return EXIT_FAILED_ITEMS if report.unsuccessful else 0


def cmd_ps(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .status import render_running, running, running_lines

    client = _client(args)
    _require_table(client, args.table)
    entries = running(TableGateway(client, args.table))
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2))
    elif sys.stdout.isatty():
        Console().print(render_running(args.table, entries))
    else:  # piped or redirected: one line per item, for cut, awk and sort
        for line in running_lines(entries):
            print(line)
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    from .admin import reset

    if args.rerun and args.subtasks:
        raise UsageError("--rerun runs every sub-task again; --subtasks is for failed ones: choose one")
    verb = "rerun" if args.rerun else "reset"
    return _steer(args, reset, verb)


def cmd_cancel(args: argparse.Namespace) -> int:
    from .admin import cancel

    return _steer(args, cancel, "cancel")


def _steer(args: argparse.Namespace, action: Callable[..., Any], verb: str) -> int:
    """reset, rerun or cancel the selected items; exit 2 if an item named by ID does not exist,
    1 if one could not be read (the others are handled either way)."""
    from .admin import ResetFilter

    client = _client(args)
    _table_or_item(client, args)
    _require_table(client, args.table)
    spec = ResetFilter(
        item_ids=tuple(args.item_ids), state=ItemState(args.state) if args.state else None,
        task_id=args.task_id, instance_id=args.instance_id, expired=args.expired,
        subtasks=getattr(args, "subtasks", False), rerun=getattr(args, "rerun", False),
    )
    actions = action(TableGateway(client, args.table), spec, dry_run=args.dry_run)
    for done in actions:
        print(done.message)
    changed = sum(a.changed for a in actions)
    print(f"{'would ' + verb if args.dry_run else past(verb)} {changed} items")
    return 2 if any(a.missing for a in actions) else 1 if any(a.malformed for a in actions) else 0


def _table_or_item(client: Any, args: argparse.Namespace) -> None:
    """With $PYANAMO_TABLE set, ``reset hand S01`` may name table ``hand`` or items ``hand`` and
    ``S01`` of $PYANAMO_TABLE. A first argument that names an existing table is that table; if
    it is also an item of $PYANAMO_TABLE, refuse (before changing anything) rather than guess."""
    name = getattr(args, "maybe_table", None)
    if name is None or table_name_problem(name) is not None:
        return  # no table could have that name
    try:
        client.describe_table(TableName=name)
    except BOTO_ERRORS as exc:
        if isinstance(translate(exc), TableMissing):
            return  # no such table: the item IDs they look like
        raise
    if TableGateway(client, args.table).exists(name):
        raise UsageError(f"{name!r} is both a table and an item of {args.table} (${TABLE_VARIABLE}): say "
                         f"`pyanamo {args.command} {name} ITEM_ID …` for the table, or unset ${TABLE_VARIABLE} "
                         f"and say `pyanamo {args.command} {args.table} {name} …` for the item")
    args.table = name
    args.item_ids = args.item_ids[1:]


def past(verb: str) -> str:
    return {"reset": "reset", "rerun": "rerun", "cancel": "cancelled"}[verb]


def cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .report import cycle_collection_paused, gather, render_html, report_facts, write_trace

    for path in (args.html, args.trace):
        if path is not None and not path.parent.is_dir():
            raise UsageError(f"{path}: no such folder {path.parent}")
    client = _client(args, pool=20)
    _require_table(client, args.table)
    with cycle_collection_paused():
        report = gather(TableGateway(client, args.table))
        if args.trace is not None:
            with _atomic(args.trace) as out:
                write_trace(report, out)
        if args.html is not None:
            meta = {"command": " ".join(shlex.quote(a) for a in ["pyanamo", *args.argv]),
                    "pyanamo": __version__, "table at": where(client),
                    "by": f"{getpass.getuser()}@{socket.gethostname()}",
                    "made": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")}
            with _atomic(args.html) as out:
                out.write(render_html(report, meta))
    summary = report.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    elif sys.stdout.isatty():
        facts = Table(title=f"run report: {args.table}", title_justify="left", show_header=False)
        for name, value in report_facts(report):
            facts.add_row(name, printable(value))
        Console().print(facts)
    else:  # piped or redirected: one "name<TAB>value" line per fact
        for name, value in report_facts(report):
            print(f"{name}\t{printable(value)}")
    for label, path in (("trace", args.trace), ("report", args.html)):
        if path is not None:
            print(f"{label}: {path}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Any]:
    """Write ``path`` whole or not at all (a temporary file beside it, renamed at the end)."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as out:
            yield out
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UsageError(f"{path}: cannot write: {exc.strerror}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def cmd_logs(args: argparse.Namespace) -> int:
    from .admin import format_logs

    client = _client(args)
    _require_table(client, args.table)
    item = TableGateway(client, args.table).get(args.item_id)
    if item is None:
        raise UsageError(f"no item {args.item_id!r} in table {args.table}")
    for line in format_logs(item, args.subtask):
        print(printable(line))
    return 0


def cmd_outputs(args: argparse.Namespace) -> int:
    from .outputs import OutputError, committed_outputs, download

    client = _client(args)
    _require_table(client, args.table)
    queue = TableGateway(client, args.table)
    entries = list(committed_outputs(queue, args.item_ids))
    if args.download is not None:
        try:
            copied = download(entries, args.download)
        except OutputError as exc:
            raise PyAnamoError(str(exc)) from None
        files = sum(len(e.manifest.files) for e in entries)
        print(f"{files} files of {len(entries)} sub-tasks in {args.download} ({copied:,} bytes copied)")
    elif args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2))
    else:
        for e in entries:
            for f in e.manifest.files:
                print(printable(f"{e.item_id}\t{e.subtask}\t{f.size}\t{e.manifest.location}"
                                f"{_sep(e.manifest.location)}{f.path}"))
        if not entries:
            print("no committed outputs", file=sys.stderr)
    return 0


def _sep(location: str) -> str:
    return "" if location.endswith("/") else "/"


def cmd_fleet(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import fleet

    endpoint = _endpoint(args)
    autoscaling = aws_client("autoscaling", endpoint)
    if args.fleet_command == "leave":
        print(fleet.leave(autoscaling, args.worker_exit))
        return 0
    if args.fleet_command == "boot-failed":
        table = args.table or os.environ.get(TABLE_VARIABLE)
        if not table:
            raise UsageError(f"say which table: --table TABLE, or set {TABLE_VARIABLE}")
        queue = TableGateway(_client(args), table)
        for line in fleet.boot_failed(queue, aws_client("s3", _endpoint(args)), autoscaling, args.log,
                                      args.log_bucket):
            print(line)
        return 0
    stack = fleet.read_stack(aws_client("cloudformation", endpoint), args.stack)
    if args.fleet_command == "scale":
        group = fleet.scale(autoscaling, stack.group, args.size)
        print(f"fleet {stack.group}: desired capacity {group['DesiredCapacity']} (max {group['MaxSize']})")
        return 0
    group = fleet.describe_group(autoscaling, stack.group)
    print(f"fleet {stack.group} (table {stack.table}): desired {group['DesiredCapacity']}, "
          f"min {group['MinSize']}, max {group['MaxSize']}")
    if group.get("Instances"):
        instances = Table()
        for column in ("instance", "type", "zone", "state", "health"):
            instances.add_column(column)
        for i in group["Instances"]:
            instances.add_row(i["InstanceId"], i.get("InstanceType", "?"), i.get("AvailabilityZone", "?"),
                              i.get("LifecycleState", "?"), i.get("HealthStatus", "?"))
        Console().print(instances)
    else:
        print("no instances (the fleet is at zero)")
    if stack.log_bucket:
        print(f"full logs: s3://{stack.log_bucket}/")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    """Exit 0 when nothing needs repair or everything found was repaired; 1 when a dry run found
    items to repair, or some changed while being repaired (run it again)."""
    from .repair import find_problems

    client = _client(args)
    _require_table(client, args.table)
    queue = TableGateway(client, args.table)
    found = fixed = 0
    for problem in find_problems(queue):
        found += 1
        if not args.apply:
            print(printable(f"{problem.item_id}: {problem.why}"))
        elif queue.fix_index(problem.row):
            fixed += 1
            print(printable(f"repaired {problem.item_id}: {problem.why}"))
        else:
            print(printable(f"{problem.item_id}: {problem.why}; it changed meanwhile, left as it is"))
    if not found:
        print(f"table {args.table}: every item's index keys agree with its state")
        return 0
    if not args.apply:
        print(f"{found} items need repair: run again with --apply to fix them")
        return 1
    print(f"repaired {fixed} of {found} items")
    return 0 if fixed == found else 1


def cmd_local(args: argparse.Namespace) -> int:
    from .local import default_data_dir, serve

    if args.engine == "moto" and args.path is not None:
        raise UsageError("--path: moto keeps its tables in memory only (use --engine dynalite)")
    return serve(args.engine, args.port,
                 None if args.in_memory or args.engine == "moto" else args.path or default_data_dir(), args.open)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "create-table": cmd_create_table,
    "tables": cmd_tables,
    "drop-table": cmd_drop_table,
    "import": cmd_import,
    "worker": cmd_worker,
    "status": cmd_status,
    "ps": cmd_ps,
    "reset": cmd_reset,
    "cancel": cmd_cancel,
    "report": cmd_report,
    "logs": cmd_logs,
    "outputs": cmd_outputs,
    "fleet": cmd_fleet,
    "repair": cmd_repair,
    "local": cmd_local,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed: the report records it
    try:
        _resolve_table(args)
        return COMMANDS[args.command](args)
    except PyAnamoError as exc:
        print(f"pyanamo: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pyanamo logs ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        error = describe(exc, getattr(args, "table", None))
        if error is None:
            raise
        print(f"pyanamo: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
