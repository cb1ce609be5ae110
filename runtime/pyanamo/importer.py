"""Importing a task file: validate all of it, then write it in batches.

Format: a header ``itemID|taskID|TaskScript`` with an optional fourth column ``TaskArgs``.
The script column may itself contain the delimiter (shell pipes): itemID and taskID are split
off from the left, TaskArgs from the right. Rows that share an itemID are one bundled item.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .gateway import TableGateway
from .model import Item, Subtask
from .schema import (
    ITEM_LIMIT_BYTES,
    MAX_ITEM_ID_BYTES,
    MAX_SCRIPTS_BYTES,
    MIN_TAIL_BYTES,
    subtask_key,
    tail_budget,
)

HEADER = ("itemid", "taskid", "taskscript")
HEADER_WITH_ARGS = (*HEADER, "taskargs")
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "pipe": "|"}
MAX_REPORTED_ERRORS = 20
IO_THREADS = 16  # conditional puts in flight at once


class InvalidTaskFile(UsageError):
    """The file is malformed; ``errors`` holds one ``FILE:LINE: reason`` per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        shown = errors[:MAX_REPORTED_ERRORS]
        more = len(errors) - len(shown)
        text = "\n".join(shown) + (f"\n… and {more} more errors" if more else "")
        super().__init__(text + "\nnothing was imported")


def parse_delimiter(text: str) -> str:
    delimiter = DELIMITER_NAMES.get(text.lower(), text)
    if len(delimiter) != 1 or delimiter.isalnum() or delimiter.isspace() and delimiter != "\t":
        raise UsageError(f"--delimiter must be one character such as '|', 'tab' or ',' (got {text!r})")
    return delimiter


@dataclass
class _Draft:
    task_id: str
    first_line: int
    scripts: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)  # the TaskArgs argument of each, if any
    lines: dict[str, int] = field(default_factory=dict)
    size: int = 0


def parse_task_file(path: Path, delimiter: str = "|", nested_delimiter: str | None = None) -> list[Item]:
    """The items a task file describes, in file order; InvalidTaskFile lists every bad line."""
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a task file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_task_bytes(raw, "<stdin>" if str(path) == "-" else str(path), delimiter, nested_delimiter)


def parse_task_bytes(
    raw: bytes, name: str, delimiter: str = "|", nested_delimiter: str | None = None
) -> list[Item]:
    # A '|' file is split on every '|', so '|' cannot also split TaskArgs; in a CSV file a quoted
    # field may hold the delimiter, so `--delimiter , --nested-delimiter ,` is fine.
    if nested_delimiter is not None and (not nested_delimiter or (nested_delimiter == delimiter == "|")):
        raise UsageError("--nested-delimiter must be non-empty and, in a '|' file, not '|'")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte order mark from a spreadsheet export
    text, errors = _decode(raw, name)
    if errors:
        raise InvalidTaskFile(errors)
    records = _pipe_records(text) if delimiter == "|" else _csv_records(text, delimiter)
    header_seen = False
    with_args = False
    drafts: dict[str, _Draft] = {}
    for number, fields in records:
        if isinstance(fields, str):
            errors.append(f"{name}:{number}: {fields}")
            continue
        if not header_seen:
            header_seen = True
            columns = tuple(c.strip().lower() for c in fields)
            if columns == HEADER_WITH_ARGS:
                with_args = True
            elif columns != HEADER:
                errors.append(_header_error(name, number, delimiter, delimiter.join(fields)))
                break
            continue
        error = _parse_row(fields, number, delimiter, nested_delimiter, with_args, drafts)
        if error:
            errors.append(f"{name}:{number}: {error}")

    if not header_seen:
        errors.append(f"{name}:1: empty file: expected the header itemID{delimiter}taskID{delimiter}TaskScript")
    elif not errors and not drafts:
        errors.append(f"{name}: no items below the header")
    for item_id, draft in drafts.items():
        if draft.size > MAX_SCRIPTS_BYTES:
            errors.append(
                f"{name}:{draft.first_line}: item {item_id!r} has {draft.size} bytes of scripts "
                f"(at most {MAX_SCRIPTS_BYTES}); split it into several items"
            )
        elif tail_budget(draft.size, len(draft.scripts)) < MIN_TAIL_BYTES:
            errors.append(
                f"{name}:{draft.first_line}: item {item_id!r} has {len(draft.scripts)} sub-tasks: with their "
                f"results it could outgrow DynamoDB's {ITEM_LIMIT_BYTES // 1024} KB item limit (at most "
                f"{_most_subtasks(draft)} sub-tasks like these fit); split it into several items"
            )
    if errors:
        raise InvalidTaskFile(errors)
    return [
        Item(
            item_id=item_id,
            task_id=draft.task_id,
            subtasks=tuple(Subtask(subtask_key(n), s, label=label)
                           for n, (s, label) in enumerate(zip(draft.scripts, draft.labels, strict=True))),
        )
        for item_id, draft in drafts.items()
    ]


def _decode(raw: bytes, name: str) -> tuple[str, list[str]]:
    """The file as text, or one ``FILE:LINE`` error per line that is not UTF-8 text."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    errors: list[str] = []
    seen_text = False
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        if b"\x00" in line:
            errors.append(f"{name}:{number}: binary data (NUL byte), not a text line")
        else:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                errors.append(f"{name}:{number}: not valid UTF-8 text (save the file as UTF-8)")
                if not seen_text:
                    break  # without a header, the rows cannot be read either
        seen_text = True
    return text, errors


Record = tuple[int, "list[str] | str"]  # (first line, fields) or (line, why it cannot be read)


def _pipe_records(text: str) -> Iterator[Record]:
    """``|`` files are split on every ``|``; which of them are shell pipes is decided per row."""
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line.split("|")


def _csv_records(text: str, delimiter: str) -> Iterator[Record]:
    """Comma and tab files are RFC 4180: a quoted field may hold the delimiter, ``""`` and
    newlines. ``strict`` refuses text after a closing quote instead of silently joining it."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, (
                f"cannot read the row as {'CSV' if delimiter == ',' else 'tab-separated'} ({exc}); "
                'a field that starts with " must be quoted whole, with inner quotes doubled ("")'
            )
            return  # the reader cannot tell where the next row starts
        if any(f.strip() for f in fields):
            yield start, fields
        start = reader.line_num + 1


def _header_error(name: str, number: int, delimiter: str, line: str) -> str:
    hint = ""
    for other in ("\t", ",", "|"):
        if other != delimiter and other in line:
            hint = f" (is the delimiter {'tab' if other == chr(9) else repr(other)}? use --delimiter)"
            break
    return (
        f"{name}:{number}: expected the header itemID{delimiter}taskID{delimiter}TaskScript"
        f"[{delimiter}TaskArgs], got {line[:80]!r}{hint}"
    )


AMBIGUOUS_PIPE = (
    "ambiguous row: with a TaskArgs column, a '|' inside TaskScript (a shell pipe?) cannot be told from "
    "the column break; put the rows in a tab-separated or CSV file (--delimiter tab or ,), quoting "
    "the field if it holds the delimiter"
)


def _columns(fields: list[str], delimiter: str, with_args: bool) -> tuple[list[str], str | None]:
    """The row's itemID, taskID, TaskScript and TaskArgs, or why they cannot be told apart."""
    expected = 4 if with_args else 3
    if delimiter == "|" and len(fields) > 3:
        if not with_args:
            return [*fields[:2], "|".join(fields[2:])], None  # the script keeps its pipes
        pipe_like = fields[2][-1:].isspace() or fields[3][:1].isspace()
        if len(fields) > 4 or pipe_like:
            return [], AMBIGUOUS_PIPE
    if len(fields) != expected:
        hint = ""
        if len(fields) > expected and delimiter != "|":
            hint = " (a field that holds the delimiter must be quoted: \"echo a, b\")"
        return [], f"expected {expected} columns separated by {delimiter!r}, found {len(fields)}{hint}"
    return fields, None


def _parse_row(
    fields: list[str],
    number: int,
    delimiter: str,
    nested_delimiter: str | None,
    with_args: bool,
    drafts: dict[str, _Draft],
) -> str | None:
    """Add one row to ``drafts``; return the reason if the row is bad."""
    columns, error = _columns(fields, delimiter, with_args)
    if error:
        return error
    item_id, task_id, script = columns[0].strip(), columns[1].strip(), columns[2].strip()
    args = columns[3].strip() if with_args else ""
    script = script.replace("\r\n", "\n")
    for label, value in (("itemID", item_id), ("taskID", task_id)):
        if not value:
            return f"empty {label}"
        if len(value.encode("utf-8")) > MAX_ITEM_ID_BYTES:
            return f"{label} is longer than {MAX_ITEM_ID_BYTES} bytes"
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            return f"{label} {value[:40]!r} contains a control character"
    if not script:
        return f"empty TaskScript for item {item_id!r}"
    if any(ord(c) < 32 and c not in "\t\n" for c in script):
        return f"TaskScript of item {item_id!r} contains a control character"
    scripts: list[str] = [script]
    labels: list[str | None] = [None]
    if args:
        pieces = [a.strip() for a in args.split(nested_delimiter)] if nested_delimiter else [args]
        if any(not a for a in pieces):
            return f"empty argument in TaskArgs {args[:60]!r}"
        unsupported = unsupported_replacement(script)
        if unsupported is not None:
            return (f"TaskScript uses {unsupported}, a GNU parallel replacement string for several columns or "
                    f"a Perl expression; with TaskArgs only {{}}, {{.}}, {{/}}, {{//}}, {{/.}} and {{#}} are filled")
        scripts = [with_argument(script, a, n) for n, a in enumerate(pieces, start=1)]
        labels = list(pieces)
    draft = drafts.get(item_id)
    if draft is None:
        draft = drafts[item_id] = _Draft(task_id=task_id, first_line=number)
    elif draft.task_id != task_id:
        return (
            f"item {item_id!r} has taskID {draft.task_id!r} on line {draft.first_line} "
            f"but {task_id!r} here"
        )
    for s, argument in zip(scripts, labels, strict=True):
        if s in draft.lines:
            return f"duplicate sub-task in item {item_id!r} (same script as line {draft.lines[s]})"
        draft.lines[s] = number
        draft.scripts.append(s)
        draft.labels.append(argument)
        draft.size += len(s.encode("utf-8")) + len((argument or "").encode("utf-8"))
    return None


# GNU parallel's replacement strings for one argument (``{}`` the argument, ``{.}`` without its
# extension, ``{/}`` its basename, ``{//}`` its folder, ``{/.}`` its basename without extension,
# ``{#}`` its position among the row's arguments, from 1). Column strings (``{1}``, ``{2.}`` ...) and
# parallel's Perl expressions have no meaning for one argument: the import refuses them.
_REPLACEMENT = re.compile(r"\{(|\.|/|//|/\.|#)\}")
_UNSUPPORTED = re.compile(r"(?<!\$)\{(\d+(?:\.|/|//|/\.)?|%|=[^}]*=)\}")


def _replacement(kind: str, argument: str, position: int) -> str:
    folder, _, base = argument.rpartition("/")
    if kind == "#":
        return str(position)
    if kind == "/":
        return base
    if kind == "//":
        return folder if "/" in argument else "."
    if kind in (".", "/."):
        name = argument if kind == "." else base
        stem, dot, extension = name.rpartition(".")
        return stem if dot and stem and "/" not in extension else name
    return argument


def unsupported_replacement(script: str) -> str | None:
    """The first replacement string of GNU parallel that one argument cannot fill, if any."""
    found = _UNSUPPORTED.search(script)
    return found.group(0) if found else None


def with_argument(script: str, argument: str, position: int = 1) -> str:
    """GNU parallel's convention: every replacement string (``{}``, ``{.}``, ``{/}``, ``{//}``,
    ``{/.}``, ``{#}``) in the script becomes what it names of the argument; a script without any
    gets the argument appended after a space."""
    if _REPLACEMENT.search(script) is None:
        return f"{script} {argument}"
    return _REPLACEMENT.sub(lambda m: _replacement(m.group(1), argument, position), script)


def _most_subtasks(draft: _Draft) -> int:
    each = draft.size / len(draft.scripts)
    most = len(draft.scripts)
    while most > 1 and tail_budget(int(each * most), most) < MIN_TAIL_BYTES:
        most -= 1
    return most


# -- writing ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImportReport:
    imported: int
    subtasks: int
    skipped: list[str]
    replaced: int
    busy: list[str] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C: the items not reported here were not written
    total: int = 0  # the items the file holds

    @property
    def not_written(self) -> int:
        """Items of the file neither written nor found there (a Ctrl-C stopped the import)."""
        return self.total - self.imported - len(self.skipped) - len(self.busy)


IN_FLIGHT = 4 * IO_THREADS  # puts submitted ahead: what a Ctrl-C lets finish, never the whole file


def write_items(
    queue: TableGateway,
    items: list[Item],
    *,
    replace: bool = False,
    advance: Callable[[int], None] = lambda n: None,
) -> ImportReport:
    """Write parsed items, each with one conditional put (from a few threads): an itemID that
    exists, or comes to exist meanwhile (another import), is never overwritten unless
    ``replace``; even then an item a worker holds is left alone (reported as busy).

    Ctrl-C (KeyboardInterrupt) stops it: the puts already sent finish (each writes one whole
    item), nothing more is sent, and the report says how many were written (``interrupted``).
    Only a window of IN_FLIGHT puts is queued at a time, so stopping takes one round of puts.

    Why not batches: BatchWriteItem carries no conditions. TransactWriteItems does, but moto
    copies the whole table for every transaction (a 100-item transaction took 0.4 s on an empty
    table and 9 s with 400 items in it) and dynalite has none; one conditional put per item
    scales linearly everywhere and costs DynamoDB the same write units."""
    def write(item: Item) -> str:
        if replace:
            outcome = queue.replace_unless_held(item)
            return "busy" if outcome is None else "replaced" if outcome else "new"
        return "new" if queue.put_new(item) else "skipped"

    outcomes: dict[str, list[int]] = {"new": [], "replaced": [], "skipped": [], "busy": []}
    pending: dict[Future[str], int] = {}

    def collect(done: Iterable[Future[str]]) -> None:
        for future in done:
            outcomes[future.result()].append(pending.pop(future))
            advance(1)

    interrupted = False
    pool = ThreadPoolExecutor(max_workers=IO_THREADS)
    try:
        for index, item in enumerate(items):
            if len(pending) >= IN_FLIGHT:
                collect(wait(pending, return_when=FIRST_COMPLETED).done)
            pending[pool.submit(write, item)] = index
        collect(wait(pending).done)
    except KeyboardInterrupt:
        interrupted = True
        collect(wait(pending).done)  # the puts already sent: each writes a whole item or nothing
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    written = sorted(outcomes["new"] + outcomes["replaced"])
    return ImportReport(
        imported=len(written),
        subtasks=sum(len(items[n].subtasks) for n in written),
        skipped=[items[n].item_id for n in sorted(outcomes["skipped"])],
        replaced=len(outcomes["replaced"]),
        busy=[items[n].item_id for n in sorted(outcomes["busy"])],
        interrupted=interrupted,
        total=len(items),
    )
