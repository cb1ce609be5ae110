"""Reading a task file: every row checked as it is read, kept on disk, items read back one by one.

Format: a header ``itemID|taskID|TaskScript`` with optional columns ``TaskArgs`` and ``After``.
The script column may itself contain the delimiter (shell pipes): itemID and taskID are split
off from the left. Rows that share an itemID are one bundled item, wherever they are in the file.

Why on disk: a task file of a million rows held as items took 2.7 GB. Rows are streamed from the
file (or stdin) into a private temporary SQLite database (``sqlite3.connect("")``: on disk,
deleted on close, a few MB of cache), the checks that span rows (a taskID that changes, a
repeated sub-task, an item too large) are queries, and items are built again one at a time, in
file order, while they are written. Memory stays flat in the file's size.
"""

from __future__ import annotations

import csv
import io
import re
import sqlite3
import sys
from collections.abc import Iterable, Iterator
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO

from .errors import UsageError
from .model import ON_FAILURE_CONTINUE, Item, Subtask
from .schema import (
    ITEM_LIMIT_BYTES,
    MAX_ITEM_ID_BYTES,
    MAX_SCRIPTS_BYTES,
    MIN_TAIL_BYTES,
    subtask_key,
    tail_budget,
)

HEADER = ("itemid", "taskid", "taskscript")
OPTIONAL_COLUMNS = ("taskargs", "after")  # either, or both in this order, after TaskScript
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "pipe": "|"}
MAX_REPORTED_ERRORS = 20
MAX_KEPT_ERRORS = 1000  # of a file where every row is bad: the rest are only counted
BATCH_ROWS = 5000  # rows inserted per executemany
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark from a spreadsheet export


class InvalidTaskFile(UsageError):
    """The file is malformed; ``errors`` holds one ``FILE:LINE: reason`` per problem."""

    def __init__(self, errors: list[str], unlisted: int = 0) -> None:
        self.errors = errors
        shown = errors[:MAX_REPORTED_ERRORS]
        more = len(errors) - len(shown) + unlisted
        text = "\n".join(shown) + (f"\n… and {more} more errors" if more else "")
        super().__init__(text + "\nnothing was imported")


def parse_delimiter(text: str) -> str:
    delimiter = DELIMITER_NAMES.get(text.lower(), text)
    if len(delimiter) != 1 or delimiter.isalnum() or delimiter.isspace() and delimiter != "\t":
        raise UsageError(f"--delimiter must be one character such as '|', 'tab' or ',' (got {text!r})")
    return delimiter


def split_references(text: str) -> list[str]:
    """``s1, s2 task:call sample-*``: references split on commas and whitespace."""
    return [r for r in re.split(r"[,\s]+", text.strip()) if r]


# -- the parsed file ----------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE rows (
    seq INTEGER PRIMARY KEY,  -- one row per sub-task, in file order
    line INTEGER NOT NULL,    -- the file line its row starts on
    item TEXT NOT NULL,
    task TEXT NOT NULL,
    script TEXT NOT NULL,
    label TEXT,               -- its TaskArgs argument, if it came from one
    after TEXT,               -- the row's After references, space-separated (first sub-task only)
    size INTEGER NOT NULL     -- bytes of script and label
)"""

_IN_FILE_ORDER = """
SELECT r.item, r.task, r.script, r.label, r.after FROM rows r
JOIN (SELECT item, MIN(seq) AS first FROM rows GROUP BY item) f ON f.item = r.item
ORDER BY f.first, r.seq"""


class TaskFile:
    """The items of a checked task file, read back from disk one at a time in file order (the
    order of each item's first row; its sub-tasks in the order of their rows).

    ``resolve`` attaches the dependencies (``importer.resolve_after``): each item's upstream
    item IDs and the file's items that wait for it."""

    def __init__(self, db: sqlite3.Connection, *, name: str, on_failure: str = ON_FAILURE_CONTINUE) -> None:
        self.db = db
        self.name = name
        self.on_failure = on_failure
        self.upstreams: dict[str, tuple[str, ...]] = {}
        self.dependents: dict[str, frozenset[str]] = {}
        self._count: int | None = None

    def __len__(self) -> int:
        if self._count is None:
            self._count = self.db.execute("SELECT COUNT(DISTINCT item) FROM rows").fetchone()[0]
        return self._count

    def __iter__(self) -> Iterator[Item]:
        return self._items(self.db.execute(_IN_FILE_ORDER))

    def __getitem__(self, index: int) -> Item:
        for n, item in enumerate(self):
            if n == index:
                return item
        raise IndexError(index)

    def __contains__(self, item_id: object) -> bool:
        return self.db.execute("SELECT 1 FROM rows WHERE item = ? LIMIT 1", (item_id,)).fetchone() is not None

    @property
    def subtasks(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM rows").fetchone()[0])

    @property
    def has_after(self) -> bool:
        """Whether any row has an After column value."""
        return self.db.execute("SELECT 1 FROM rows WHERE after IS NOT NULL LIMIT 1").fetchone() is not None

    @property
    def waiting(self) -> int:
        """How many items wait for others (after ``resolve``)."""
        return sum(1 for upstream in self.upstreams.values() if upstream)

    def where(self, item_id: str) -> str:
        """``FILE:LINE`` of the item's first row."""
        line = self.db.execute("SELECT MIN(line) FROM rows WHERE item = ?", (item_id,)).fetchone()[0]
        return f"{self.name}:{line or 1}"

    def item_ids(self) -> Iterator[str]:
        for (item_id,) in self.db.execute("SELECT item FROM rows GROUP BY item ORDER BY MIN(seq)"):
            yield item_id

    def items_of_task(self, task_id: str) -> list[str]:
        rows = self.db.execute("SELECT item FROM rows WHERE task = ? GROUP BY item ORDER BY MIN(seq)", (task_id,))
        return [item_id for (item_id,) in rows]

    def references(self) -> Iterator[tuple[str, list[str]]]:
        """Each item's After references as written (in file order; an item without any too)."""
        rows = self.db.execute("SELECT item, GROUP_CONCAT(after, ' ') FROM rows GROUP BY item ORDER BY MIN(seq)")
        for item_id, after in rows:
            yield item_id, list(dict.fromkeys((after or "").split()))

    def resolve(self, upstreams: dict[str, tuple[str, ...]], dependents: dict[str, frozenset[str]]) -> None:
        self.upstreams, self.dependents = upstreams, dependents

    def in_write_order(self) -> Iterator[Item]:
        """The items that wait first, then the rest (``importer.write_items`` says why)."""
        if not self.waiting:
            yield from self
            return
        yield from (item for item in self if item.waiting_on)
        yield from (item for item in self if not item.waiting_on)

    def _items(self, rows: Iterable[tuple[str, str, str, str | None, str | None]]) -> Iterator[Item]:
        """Rows in item order (``_IN_FILE_ORDER``), one item per run of rows."""
        for item_id, group in groupby(rows, key=itemgetter(0)):
            own = list(group)
            upstream = self.upstreams.get(item_id)
            references = [r for *_, after in own if after for r in after.split()]
            yield Item(
                item_id=item_id, task_id=own[0][1],
                subtasks=tuple(Subtask(subtask_key(n), script, label=label)
                               for n, (_, _, script, label, _) in enumerate(own)),
                after=upstream if upstream is not None else tuple(dict.fromkeys(references)),
                waiting_on=frozenset(upstream or ()), dependents=self.dependents.get(item_id, frozenset()),
                on_failure=self.on_failure,
            )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TaskFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- reading ------------------------------------------------------------------------------

def parse_task_file(path: Path, delimiter: str = "|", nested_delimiter: str | None = None) -> TaskFile:
    """The items a task file (``-``: stdin) describes; InvalidTaskFile lists every bad line."""
    name = "<stdin>" if str(path) == "-" else str(path)
    if str(path) == "-":
        return parse_task_stream(sys.stdin.buffer, name, delimiter, nested_delimiter)
    try:
        with open(path, "rb") as handle:
            return parse_task_stream(handle, name, delimiter, nested_delimiter)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a task file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None


def parse_task_bytes(raw: bytes, name: str, delimiter: str = "|", nested_delimiter: str | None = None) -> TaskFile:
    """As ``parse_task_file``, from bytes in memory (tests, small inputs)."""
    return parse_task_stream(io.BytesIO(raw), name, delimiter, nested_delimiter)


def parse_task_stream(
    handle: BinaryIO, name: str, delimiter: str = "|", nested_delimiter: str | None = None
) -> TaskFile:
    # A '|' file is split on every '|', so '|' cannot also split TaskArgs; in a CSV file a quoted
    # field may hold the delimiter, so `--delimiter , --nested-delimiter ,` is fine.
    if nested_delimiter is not None and (not nested_delimiter or (nested_delimiter == delimiter == "|")):
        raise UsageError("--nested-delimiter must be non-empty and, in a '|' file, not '|'")
    db = sqlite3.connect("")  # a private temporary database on disk, removed when closed
    try:
        db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + _SCHEMA)
        problems, unlisted = _load(db, handle, name, delimiter, nested_delimiter)
        db.execute("CREATE INDEX rows_item ON rows (item)")
        problems = sorted(problems + _item_errors(db), key=lambda e: e[0])
        if problems:
            raise InvalidTaskFile([f"{name}:{line}: {error}" if line else f"{name}: {error}"
                                   for line, error in problems], unlisted)
    except BaseException:
        db.close()
        raise
    return TaskFile(db, name=name)


Problem = tuple[int, str]  # (line, what is wrong there); line 0: the file as a whole


def _load(db: sqlite3.Connection, handle: BinaryIO, name: str, delimiter: str,
          nested_delimiter: str | None) -> tuple[list[Problem], int]:
    """Stream the file's rows into ``rows``; the problems of single rows (at most MAX_KEPT_ERRORS,
    and how many more). InvalidTaskFile at once for lines that are not text (nothing else can be
    trusted then)."""
    unlisted = 0
    text_errors: list[str] = []
    problems: list[Problem] = []
    lines = _text_lines(handle, name, text_errors)
    records = _pipe_records(lines) if delimiter == "|" else _csv_records(lines, delimiter)
    header_seen = False
    extra: tuple[str, ...] = ()
    batch: list[tuple[int, str, str, str, str | None, str | None, int]] = []
    for number, fields in records:
        if isinstance(fields, str):
            problems.append((number, fields))
            continue
        if not header_seen:
            header_seen = True
            columns = tuple(c.strip().lower() for c in fields)
            extra = columns[3:]
            if columns[:3] != HEADER or extra not in ((), *((c,) for c in OPTIONAL_COLUMNS), OPTIONAL_COLUMNS):
                problems.append((number, _header_error(delimiter, delimiter.join(fields))))
                break
            continue
        parsed = _parse_row(fields, delimiter, nested_delimiter, extra)
        if isinstance(parsed, str):
            if len(problems) < MAX_KEPT_ERRORS:
                problems.append((number, parsed))
            else:
                unlisted += 1
            continue
        if len(problems) >= MAX_KEPT_ERRORS:
            continue  # nothing will be imported: stop storing rows, count the bad ones
        item_id, task_id, after, subtasks = parsed
        for n, (script, label) in enumerate(subtasks):
            size = len(script.encode("utf-8")) + len((label or "").encode("utf-8"))
            batch.append((number, item_id, task_id, script, label, " ".join(after) if after and n == 0 else None,
                          size))
        if len(batch) >= BATCH_ROWS:
            _insert(db, batch)
    for _ in lines:  # a bad header stops the rows: still report every line that is not text
        pass
    if text_errors:
        raise InvalidTaskFile(text_errors)
    _insert(db, batch)
    if not header_seen:
        problems.append((1, f"empty file: expected the header itemID{delimiter}taskID{delimiter}TaskScript"))
    elif not problems and db.execute("SELECT 1 FROM rows LIMIT 1").fetchone() is None:
        problems.append((0, "no items below the header"))
    return problems, unlisted


def _insert(db: sqlite3.Connection, batch: list[tuple[int, str, str, str, str | None, str | None, int]]) -> None:
    db.executemany("INSERT INTO rows (line, item, task, script, label, after, size) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   batch)
    batch.clear()


def _item_errors(db: sqlite3.Connection) -> list[Problem]:
    """The checks that span rows, as ``(line, error)`` sorted by line: a taskID that changes
    within an item, a sub-task repeated within an item, an item too large to store."""
    found: list[Problem] = []
    conflicts = db.execute("""
        SELECT r.line, r.item, r.task, f.task, f.line FROM rows r
        JOIN (SELECT item, task, line FROM rows WHERE seq IN (SELECT MIN(seq) FROM rows GROUP BY item)) f
          ON f.item = r.item
        WHERE r.task != f.task GROUP BY r.line, r.item""")
    for line, item_id, task_id, first_task, first_line in conflicts:
        found.append((line, f"item {item_id!r} has taskID {first_task!r} on line {first_line} but {task_id!r} here"))
    repeats = db.execute("""
        SELECT r.line, r.item, g.first FROM rows r
        JOIN (SELECT item, script, MIN(seq) AS seq0, MIN(line) AS first FROM rows GROUP BY item, script
              HAVING COUNT(*) > 1) g ON g.item = r.item AND g.script = r.script AND r.seq > g.seq0""")
    for line, item_id, first_line in repeats:
        found.append((line, f"duplicate sub-task in item {item_id!r} (same script as line {first_line})"))
    for item_id, line, size, count in db.execute(
            "SELECT item, MIN(line), SUM(size), COUNT(*) FROM rows GROUP BY item"):
        if size > MAX_SCRIPTS_BYTES:
            found.append((line, f"item {item_id!r} has {size} bytes of scripts (at most {MAX_SCRIPTS_BYTES}); "
                                f"split it into several items"))
        elif tail_budget(size, count) < MIN_TAIL_BYTES:
            found.append((line, f"item {item_id!r} has {count} sub-tasks: with their results it could outgrow "
                                f"DynamoDB's {ITEM_LIMIT_BYTES // 1024} KB item limit (at most "
                                f"{_most_subtasks(size, count)} sub-tasks like these fit); split it into several "
                                f"items"))
    return found


def _most_subtasks(size: int, count: int) -> int:
    each = size / count
    most = count
    while most > 1 and tail_budget(int(each * most), most) < MIN_TAIL_BYTES:
        most -= 1
    return most


def _text_lines(handle: BinaryIO, name: str, errors: list[str]) -> Iterator[str]:
    """The file's lines as text (with their line endings), one ``FILE:LINE`` error per line that
    is not UTF-8 text. After the first such line it yields nothing more, but reads on to report
    every other one; a first text line that is not UTF-8 stops it (no header, no rows)."""
    seen_text = False
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        if b"\x00" in raw and raw.strip():
            errors.append(f"{name}:{number}: binary data (NUL byte), not a text line")
            seen_text = True
            continue
        try:
            text = raw.decode("utf-8")  # once: the rows are read from it too
        except UnicodeDecodeError:
            errors.append(f"{name}:{number}: not valid UTF-8 text (save the file as UTF-8)")
            if not seen_text:
                return  # without a header, the rows cannot be read either
            seen_text = True
            continue
        seen_text = seen_text or bool(text.strip())
        if not errors:
            yield text


Record = tuple[int, "list[str] | str"]  # (first line, fields) or (line, why it cannot be read)


def _pipe_records(lines: Iterator[str]) -> Iterator[Record]:
    """``|`` files are split on every ``|``; which of them are shell pipes is decided per row."""
    for number, line in enumerate(lines, start=1):
        line = line.removesuffix("\n").removesuffix("\r")
        if line.strip():
            yield number, line.split("|")


def _csv_records(lines: Iterator[str], delimiter: str) -> Iterator[Record]:
    """Comma and tab files are RFC 4180: a quoted field may hold the delimiter, ``""`` and
    newlines. ``strict`` refuses text after a closing quote instead of silently joining it."""
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
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


def _header_error(delimiter: str, line: str) -> str:
    hint = ""
    for other in ("\t", ",", "|"):
        if other != delimiter and other in line:
            hint = f" (is the delimiter {'tab' if other == chr(9) else repr(other)}? use --delimiter)"
            break
    return (
        f"expected the header itemID{delimiter}taskID{delimiter}TaskScript"
        f"[{delimiter}TaskArgs][{delimiter}After], got {line.rstrip(chr(13) + chr(10))[:80]!r}{hint}"
    )


AMBIGUOUS_PIPE = (
    "ambiguous row: with a TaskArgs or After column, a '|' inside TaskScript (a shell pipe?) cannot be told from "
    "the column break; put the rows in a tab-separated or CSV file (--delimiter tab or ,), quoting "
    "the field if it holds the delimiter"
)


def _columns(fields: list[str], delimiter: str, extra: tuple[str, ...]) -> tuple[list[str], str | None]:
    """The row's itemID, taskID, TaskScript and optional columns, or why they cannot be told apart."""
    expected = 3 + len(extra)
    if delimiter == "|" and len(fields) > 3:
        if not extra:
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


ParsedRow = tuple[str, str, list[str], list[tuple[str, "str | None"]]]  # item, task, After refs, (script, label)s


def _parse_row(
    fields: list[str], delimiter: str, nested_delimiter: str | None, extra: tuple[str, ...]
) -> ParsedRow | str:
    """One row's item ID, taskID, references and sub-tasks, or the reason the row is bad (the
    checks that need other rows are ``_item_errors``)."""
    columns, error = _columns(fields, delimiter, extra)
    if error:
        return error
    item_id, task_id, script = columns[0].strip(), columns[1].strip(), columns[2].strip()
    optional = dict(zip(extra, (c.strip() for c in columns[3:]), strict=True))
    args = optional.get("taskargs", "")
    after = split_references(optional.get("after", ""))
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
    if not args:
        return item_id, task_id, after, [(script, None)]
    pieces = [a.strip() for a in args.split(nested_delimiter)] if nested_delimiter else [args]
    if any(not a for a in pieces):
        return f"empty argument in TaskArgs {args[:60]!r}"
    unsupported = unsupported_replacement(script)
    if unsupported is not None:
        return (f"TaskScript uses {unsupported}, a GNU parallel replacement string for several columns or "
                f"a Perl expression; with TaskArgs only {{}}, {{.}}, {{/}}, {{//}}, {{/.}} and {{#}} are filled")
    return item_id, task_id, after, [(with_argument(script, a, n), a) for n, a in enumerate(pieces, start=1)]


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
