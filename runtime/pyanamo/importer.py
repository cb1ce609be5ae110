"""Importing a task file: validate all of it, then write it in batches.

Format: a header ``itemID|taskID|TaskScript`` with an optional fourth column ``TaskArgs``.
The script column may itself contain the delimiter (shell pipes): itemID and taskID are split
off from the left, TaskArgs from the right. Rows that share an itemID are one bundled item.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .aws import UsageError, is_conditional_failure
from .model import Item, Subtask
from .schema import MAX_ITEM_ID_BYTES, MAX_SCRIPTS_BYTES, Attr, ItemState, subtask_key

HEADER = ("itemid", "taskid", "taskscript")
HEADER_WITH_ARGS = (*HEADER, "taskargs")
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "pipe": "|"}
MAX_REPORTED_ERRORS = 20
IO_THREADS = 4  # batch calls in flight at once


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
    lines: dict[str, int] = field(default_factory=dict)
    size: int = 0


def parse_task_file(path: Path, delimiter: str = "|", nested_delimiter: str | None = None) -> list[Item]:
    """The items a task file describes, in file order; InvalidTaskFile lists every bad line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a task file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_task_bytes(raw, str(path), delimiter, nested_delimiter)


def parse_task_bytes(
    raw: bytes, name: str, delimiter: str = "|", nested_delimiter: str | None = None
) -> list[Item]:
    if nested_delimiter is not None and (not nested_delimiter or nested_delimiter == delimiter):
        raise UsageError("--nested-delimiter must be non-empty and differ from --delimiter")
    errors: list[str] = []
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte order mark from a spreadsheet export
    lines = raw.split(b"\n")
    header_seen = False
    with_args = False
    drafts: dict[str, _Draft] = {}

    for number, line_bytes in enumerate(lines, start=1):
        line_bytes = line_bytes.removesuffix(b"\r")
        if not line_bytes.strip():
            continue
        if b"\x00" in line_bytes:
            errors.append(f"{name}:{number}: binary data (NUL byte), not a text line")
            continue
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError:
            errors.append(f"{name}:{number}: not valid UTF-8 text")
            continue
        if not header_seen:
            header_seen = True
            columns = tuple(c.strip().lower() for c in line.split(delimiter))
            if columns == HEADER_WITH_ARGS:
                with_args = True
            elif columns != HEADER:
                hint = ""
                for other in ("\t", ",", "|"):
                    if other != delimiter and other in line:
                        hint = f" (is the delimiter {'tab' if other == chr(9) else repr(other)}? use --delimiter)"
                        break
                errors.append(
                    f"{name}:{number}: expected the header itemID{delimiter}taskID{delimiter}TaskScript"
                    f"[{delimiter}TaskArgs], got {line[:80]!r}{hint}"
                )
                break
            continue
        error = _parse_row(line, number, delimiter, nested_delimiter, with_args, drafts)
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
    if errors:
        raise InvalidTaskFile(errors)
    return [
        Item(
            item_id=item_id,
            task_id=draft.task_id,
            subtasks=tuple(Subtask(subtask_key(n), s) for n, s in enumerate(draft.scripts)),
        )
        for item_id, draft in drafts.items()
    ]


def _parse_row(
    line: str,
    number: int,
    delimiter: str,
    nested_delimiter: str | None,
    with_args: bool,
    drafts: dict[str, _Draft],
) -> str | None:
    """Add one row to ``drafts``; return the reason if the row is bad."""
    expected = 4 if with_args else 3
    parts = line.split(delimiter, 2)
    if len(parts) < 3 or (with_args and delimiter not in parts[2]):
        found = len(parts) if len(parts) < 3 else 3
        return f"expected {expected} columns separated by {delimiter!r}, found {found}"
    item_id, task_id, script = parts[0].strip(), parts[1].strip(), parts[2]
    args = ""
    if with_args:
        script, args = script.rsplit(delimiter, 1)
    script = script.strip()
    for label, value in (("itemID", item_id), ("taskID", task_id)):
        if not value:
            return f"empty {label}"
        if len(value.encode("utf-8")) > MAX_ITEM_ID_BYTES:
            return f"{label} is longer than {MAX_ITEM_ID_BYTES} bytes"
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            return f"{label} {value[:40]!r} contains a control character"
    if not script:
        return f"empty TaskScript for item {item_id!r}"
    if any(ord(c) < 32 and c not in "\t" for c in script):
        return f"TaskScript of item {item_id!r} contains a control character"
    scripts = [script]
    args = args.strip()
    if args:
        if nested_delimiter:
            pieces = [a.strip() for a in args.split(nested_delimiter)]
            if any(not a for a in pieces):
                return f"empty argument in TaskArgs {args[:60]!r}"
            scripts = [f"{script} {a}" for a in pieces]
        else:
            scripts = [f"{script} {args}"]
    draft = drafts.get(item_id)
    if draft is None:
        draft = drafts[item_id] = _Draft(task_id=task_id, first_line=number)
    elif draft.task_id != task_id:
        return (
            f"item {item_id!r} has taskID {draft.task_id!r} on line {draft.first_line} "
            f"but {task_id!r} here"
        )
    for s in scripts:
        if s in draft.lines:
            return f"duplicate sub-task in item {item_id!r} (same script as line {draft.lines[s]})"
        draft.lines[s] = number
        draft.scripts.append(s)
        draft.size += len(s.encode("utf-8"))
    return None


# -- writing ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImportReport:
    imported: int
    subtasks: int
    skipped: list[str]
    replaced: int
    busy: list[str] = field(default_factory=list)


def _chunks(values: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def existing_ids(client: Any, table: str, item_ids: list[str]) -> set[str]:
    """Which of ``item_ids`` are already in the table (BatchGetItem, 100 keys a call)."""
    found: set[str] = set()
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        for ids in pool.map(lambda chunk: _present(client, table, chunk), _chunks(item_ids, 100)):
            found.update(ids)
    return found


def _present(client: Any, table: str, item_ids: list[str]) -> set[str]:
    request = {
        table: {
            "Keys": [{Attr.ITEM_ID: {"S": i}} for i in item_ids],
            "ProjectionExpression": "#i",
            "ExpressionAttributeNames": {"#i": Attr.ITEM_ID},
        }
    }
    found: set[str] = set()
    delay = 0.05
    while request:
        response = client.batch_get_item(RequestItems=request)
        found.update(row[Attr.ITEM_ID]["S"] for row in response["Responses"].get(table, []))
        request = response.get("UnprocessedKeys") or {}
        if request:
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    return found


def _put_batch(client: Any, table: str, items: list[Item]) -> int:
    """Write up to 25 new items, retrying what DynamoDB leaves unprocessed."""
    pending = [{"PutRequest": {"Item": item.new_row()}} for item in items]
    delay = 0.05
    while pending:
        response = client.batch_write_item(RequestItems={table: pending})
        pending = (response.get("UnprocessedItems") or {}).get(table, [])
        if pending:
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    return len(items)


def write_items(
    client: Any,
    table: str,
    items: list[Item],
    *,
    replace: bool = False,
    advance: Callable[[int], None] = lambda n: None,
) -> ImportReport:
    """Write parsed items; existing itemIDs are skipped (reported) unless ``replace``.

    Even with ``replace``, an item a worker holds (live lease) is never overwritten: the worker
    would go on running the old sub-tasks while another claims the new ones.
    """
    present = existing_ids(client, table, [i.item_id for i in items])
    skipped: list[str] = []
    busy: list[str] = []
    replaced: list[Item] = []
    for item in items:
        if item.item_id not in present:
            continue
        if not replace:
            skipped.append(item.item_id)
        elif _replace_unless_held(client, table, item):
            replaced.append(item)
        else:
            busy.append(item.item_id)
    advance(len(present))
    new = [i for i in items if i.item_id not in present]
    # A few batches in flight: each call waits on the network, not on this process.
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        for written in pool.map(lambda chunk: _put_batch(client, table, chunk), _chunks(new, 25)):
            advance(written)
    written = new + replaced
    return ImportReport(
        imported=len(written),
        subtasks=sum(len(i.subtasks) for i in written),
        skipped=skipped,
        replaced=len(replaced),
        busy=busy,
    )


def _replace_unless_held(client: Any, table: str, item: Item) -> bool:
    """Overwrite ``item`` unless a worker holds it now; False if it was left alone."""
    try:
        client.put_item(
            TableName=table,
            Item=item.new_row(),
            ConditionExpression="attribute_not_exists(#i) OR #s <> :locked OR #e < :now",
            ExpressionAttributeNames={"#i": Attr.ITEM_ID, "#s": Attr.STATE, "#e": Attr.LEASE_EXPIRY},
            ExpressionAttributeValues={":locked": {"S": ItemState.LOCKED.value},
                                       ":now": {"N": str(round(time.time(), 3))}},
        )
    except Exception as exc:
        if is_conditional_failure(exc):
            return False
        raise
    return True
