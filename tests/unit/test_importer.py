"""The task-file parser: what it accepts, and a FILE:LINE error for everything it does not."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyanamo.errors import UsageError
from pyanamo.schema import (
    ITEM_BUDGET_BYTES,
    LOG_TAIL_BUDGET_BYTES,
    LOG_TAIL_MAX_BYTES,
    MIN_TAIL_BYTES,
    SUBTASK_MANIFEST_BYTES,
    SUBTASK_RECORD_BYTES,
    tail_budget,
)
from pyanamo.taskfile import InvalidTaskFile, parse_delimiter, parse_task_bytes

HEADER = b"itemID|taskID|TaskScript\n"


def parse(text: str | bytes, **kwargs):
    raw = text.encode() if isinstance(text, str) else text
    return parse_task_bytes(raw, "tasks.txt", **kwargs)


def errors_of(text: str | bytes, **kwargs) -> list[str]:
    with pytest.raises(InvalidTaskFile) as caught:
        parse(text, **kwargs)
    return caught.value.errors


def test_three_columns_one_subtask_per_row():
    items = parse("itemID|taskID|TaskScript\na|s1|echo a\nb|s2|echo b\n")
    assert [(i.item_id, i.task_id, [s.script for s in i.subtasks]) for i in items] == [
        ("a", "s1", ["echo a"]),
        ("b", "s2", ["echo b"]),
    ]
    assert items[0].subtasks[0].key == "Task_0"


def test_rows_sharing_an_item_id_are_bundled_in_file_order():
    items = parse("ITEMID|TaskId|taskscript\nx|S|echo 1\ny|T|echo y\nx|S|echo 2\nx|S|echo 3\n")
    assert [s.script for s in items[0].subtasks] == ["echo 1", "echo 2", "echo 3"]
    assert [s.key for s in items[0].subtasks] == ["Task_0", "Task_1", "Task_2"]
    assert len(items) == 2


def test_task_args_with_nested_delimiter_become_subtasks():
    items = parse(
        "itemID|taskID|TaskScript|TaskArgs\nNA1|NA1|call.sh NA1|chr1,chr2,chr3\n",
        nested_delimiter=",",
    )
    assert [s.script for s in items[0].subtasks] == [
        "call.sh NA1 chr1", "call.sh NA1 chr2", "call.sh NA1 chr3"]


def test_task_args_without_nested_delimiter_are_appended_once():
    items = parse("itemID|taskID|TaskScript|TaskArgs\na|t|run.sh|--fast x\nb|t|run.sh|\n")
    assert [s.script for s in items[0].subtasks] == ["run.sh --fast x"]
    assert [s.script for s in items[1].subtasks] == ["run.sh"]


def test_script_may_contain_the_delimiter_quotes_and_redirections():
    script = """zcat in.gz | awk -F'|' '{print $1}' > "out $(date).txt" 2>&1"""
    items = parse(f"itemID|taskID|TaskScript\na|t|{script}\n")
    assert items[0].subtasks[0].script == script
    items = parse(f"itemID\ttaskID\tTaskScript\tTaskArgs\na\tt\t{script}\tchr1\n", delimiter="\t")
    assert items[0].subtasks[0].script == f"{script} chr1"


def test_a_pipe_row_that_could_split_two_ways_is_refused_not_resplit():
    """The issue's case: with a TaskArgs column, `zcat S1.fq.gz | wc -l` used to become
    `zcat S1.fq.gz wc -l`. A '|' with a space beside it, or one too many, is refused."""
    for row in ("S1|S1|zcat S1.fq.gz | wc -l", "S1|S1|zcat x|wc -l|chr1", "S1|S1|run |chr1"):
        errors = errors_of(f"itemID|taskID|TaskScript|TaskArgs\n{row}\n")
        assert errors[0].startswith("tasks.txt:2: ambiguous row") and "tab-separated or CSV" in errors[0]
    items = parse("itemID|taskID|TaskScript|TaskArgs\nS1|S1|call.sh S1|chr20\n")
    assert items[0].subtasks[0].script == "call.sh S1 chr20"


def test_csv_fields_are_rfc4180_quoted_fields_holding_commas_quotes_and_newlines():
    text = (
        'itemID,taskID,TaskScript,TaskArgs\n'
        'X,X,"echo a, b",\n'
        'Y,Y,"printf \'%s\\n\' ""quoted"" | wc -l > ""out y.txt""",\n'
        'Z,Z,"echo one\necho two",chr1\n'
    )
    items = parse(text, delimiter=",")
    assert [i.subtasks[0].script for i in items] == [
        "echo a, b",
        'printf \'%s\\n\' "quoted" | wc -l > "out y.txt"',
        "echo one\necho two chr1",
    ]


def test_csv_row_with_an_unquoted_delimiter_is_refused_with_how_to_quote():
    errors = errors_of("itemID,taskID,TaskScript\nX,X,echo a, b\n", delimiter=",")
    assert errors == [
        "tasks.txt:2: expected 3 columns separated by ',', found 4 "
        '(a field that holds the delimiter must be quoted: "echo a, b")'
    ]


def test_csv_text_after_a_closing_quote_is_refused_not_joined():
    errors = errors_of('itemID,taskID,TaskScript\nX,X,"$x" > out\n', delimiter=",")
    assert errors[0].startswith("tasks.txt:2: cannot read the row as CSV")


def test_a_quoted_multiline_field_reports_later_rows_by_their_own_line():
    errors = errors_of('itemID\ttaskID\tTaskScript\nA\tA\t"echo 1\necho 2"\nB\t\techo\n', delimiter="\t")
    assert errors == ["tasks.txt:4: empty taskID"]


def test_braces_are_replaced_by_each_argument_and_without_braces_it_is_appended():
    items = parse(
        "itemID|taskID|TaskScript|TaskArgs\n"
        "S1|S1|bcftools view -r {} S1.vcf.gz > S1.{}.vcf|chr20,chr21\n"
        "S2|S2|call.sh S2|chr1,chr2\n"
        "S3|S3|find . -name x -exec rm {} ;|\n",
        nested_delimiter=",",
    )
    assert [[s.script for s in i.subtasks] for i in items] == [
        ["bcftools view -r chr20 S1.vcf.gz > S1.chr20.vcf", "bcftools view -r chr21 S1.vcf.gz > S1.chr21.vcf"],
        ["call.sh S2 chr1", "call.sh S2 chr2"],
        ["find . -name x -exec rm {} ;"],  # no TaskArgs: the braces are the script's own
    ]


def test_gnu_parallels_replacement_strings_are_filled_from_each_argument():
    items = parse(
        "itemID|taskID|TaskScript|TaskArgs\n"
        "S1|S1|samtools sort {} -o out/{/.}.sorted.bam; echo {#} {.} {//} {/} ${1} {1..2}|in/S1.chr1.bam,S1.bam\n",
        nested_delimiter=",",
    )
    assert [s.script for s in items[0].subtasks] == [
        "samtools sort in/S1.chr1.bam -o out/S1.chr1.sorted.bam; echo 1 in/S1.chr1 in S1.chr1.bam ${1} {1..2}",
        "samtools sort S1.bam -o out/S1.sorted.bam; echo 2 S1 . S1.bam ${1} {1..2}",
    ]


@pytest.mark.parametrize("placeholder", ["{1}", "{2.}", "{%}", "{= s/x/y/ =}"])
def test_replacement_strings_one_argument_cannot_fill_are_refused_with_the_line(placeholder):
    errors = errors_of(f"itemID|taskID|TaskScript|TaskArgs\nS1|S1|echo {placeholder}|a,b\n", nested_delimiter=",")
    assert len(errors) == 1 and errors[0].startswith(f"tasks.txt:2: TaskScript uses {placeholder}, a GNU parallel")


def test_unicode_ids_and_blank_lines():
    items = parse("itemID|taskID|TaskScript\n\n  \nprobe-é✓|sample-β|echo ü\n\n")
    assert items[0].item_id == "probe-é✓"


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "tasks.txt:1: empty file"),
        (b"\n\n  \n", "tasks.txt:1: empty file"),
        (b"a|t|echo a\n", "tasks.txt:1: expected the header"),
        (b"itemID|taskID\na|t\n", "tasks.txt:1: expected the header"),
        (HEADER, "tasks.txt: no items below the header"),
        (HEADER + b"a|t\n", "tasks.txt:2: expected 3 columns"),
        (HEADER + b"just-one-column\n", "tasks.txt:2: expected 3 columns"),
        (b"itemID|taskID|TaskScript|TaskArgs\na|t|echo\n", "tasks.txt:2: expected 4 columns"),
        (HEADER + b"a|t|   \n", "tasks.txt:2: empty TaskScript for item 'a'"),
        (HEADER + b"|t|echo\n", "tasks.txt:2: empty itemID"),
        (HEADER + b"a| |echo\n", "tasks.txt:2: empty taskID"),
        (HEADER + b"a|t|echo 1\na|t|echo 1\n", "tasks.txt:3: duplicate sub-task in item 'a' (same script as line 2)"),
        (HEADER + b"a|t|echo 1\na|u|echo 2\n", "tasks.txt:3: item 'a' has taskID 't' on line 2 but 'u' here"),
        (HEADER + b"a|t|echo \xff\xfe\n", "tasks.txt:2: not valid UTF-8 text"),
        (HEADER + b"a|t|echo \x00\x01\x02\n", "tasks.txt:2: binary data (NUL byte)"),
        (HEADER + b"a\x07b|t|echo\n", "tasks.txt:2: itemID 'a\\x07b' contains a control character"),
        (HEADER + b"a|t|echo\x1b[31m\n", "tasks.txt:2: TaskScript of item 'a' contains a control character"),
        (HEADER + b"x" * 1100 + b"|t|echo\n", "tasks.txt:2: itemID is longer than 1024 bytes"),
        (b"itemID|taskID|TaskScript|TaskArgs\na|t|run|chr1,,chr3\n", "tasks.txt:2: empty argument"),
        (b"itemID\ttaskID\tTaskScript\na\tt\techo\n", "(is the delimiter tab? use --delimiter)"),
        (bytes(range(256)) * 4, "tasks.txt:"),
    ],
)
def test_malformed_input_is_reported_with_file_and_line(content: bytes, expected: str):
    errors = errors_of(content, nested_delimiter=",")
    assert any(expected in e for e in errors), errors


def test_every_bad_line_is_reported_not_just_the_first():
    errors = errors_of(HEADER + b"a|t|echo\nbad\nb|t|\nc|t|echo\n|x|y\n")
    assert [e.split(":")[1] for e in errors] == ["3", "4", "6"]


def test_oversized_item_is_rejected():
    rows = "".join(f"big|t|echo {'x' * 1000} {n}\n" for n in range(210))
    errors = errors_of("itemID|taskID|TaskScript\n" + rows)
    assert errors == [
        "tasks.txt:2: item 'big' has 211780 bytes of scripts (at most 200000); split it into several items"
    ]


def test_an_item_whose_results_could_not_fit_dynamodb_is_refused_with_how_many_fit():
    rows = "".join(f"S1|t|bcftools view -r chr1:{n}-{n + 999} S1.vcf.gz\n" for n in range(1000))
    errors = errors_of("itemID|taskID|TaskScript\n" + rows)
    assert len(errors) == 1 and errors[0].startswith("tasks.txt:2: item 'S1' has 1000 sub-tasks: with their "
                                                     "results it could outgrow DynamoDB's 400 KB item limit")
    most = int(errors[0].split("(at most ")[1].split()[0])
    assert 150 < most < 1000 and errors[0].endswith("split it into several items")
    fits = "".join(f"S1|t|bcftools view -r chr1:{n}-{n + 999} S1.vcf.gz\n" for n in range(most))
    assert len(parse("itemID|taskID|TaskScript\n" + fits)[0].subtasks) == most


def test_tail_budget_shrinks_with_the_item_and_never_overfills_it():
    assert tail_budget(100, 1) == LOG_TAIL_MAX_BYTES
    assert tail_budget(100, 100) == LOG_TAIL_BUDGET_BYTES // 200
    for subtasks in (1, 10, 100, 178):  # a manifest's share of the item too
        tail = tail_budget(60 * subtasks, subtasks)
        assert tail >= MIN_TAIL_BYTES
        per_subtask = SUBTASK_RECORD_BYTES + SUBTASK_MANIFEST_BYTES + 2 * tail
        assert 60 * subtasks + subtasks * per_subtask <= ITEM_BUDGET_BYTES


def test_error_message_is_capped_and_says_nothing_was_imported():
    rows = "".join("x\n" for _ in range(50))
    with pytest.raises(InvalidTaskFile) as caught:
        parse("itemID|taskID|TaskScript\n" + rows)
    text = str(caught.value)
    assert len(caught.value.errors) == 50
    assert "… and 30 more errors" in text and text.endswith("nothing was imported")
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("text, expected", [("|", "|"), ("tab", "\t"), ("\\t", "\t"), (",", ","), ("comma", ",")])
def test_delimiter_names(text: str, expected: str):
    assert parse_delimiter(text) == expected


@pytest.mark.parametrize("text", ["", "ab", "a", "1", " "])
def test_bad_delimiters(text: str):
    with pytest.raises(UsageError):
        parse_delimiter(text)


# -- properties ---------------------------------------------------------------------------

_id_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="|\n\r\x85\u2028\u2029"),
    min_size=1, max_size=20,
).map(str.strip).filter(bool)
_script_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\n\r\x85\u2028\u2029"),
    min_size=1, max_size=40,
).map(str.strip).filter(bool)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_id_text, _id_text, _script_text), min_size=1, max_size=15))
def test_property_valid_files_import_exactly_what_they_say(rows):
    """Any well-formed file (scripts may hold '|', quotes, `$()`) imports exactly its rows."""
    expected: dict[str, tuple[str, list[str]]] = {}
    lines = []
    for item_id, task_id, script in rows:
        task_id = expected.get(item_id, (task_id, []))[0]
        if script in expected.get(item_id, ("", []))[1]:
            continue
        expected.setdefault(item_id, (task_id, []))[1].append(script)
        lines.append(f"{item_id}|{task_id}|{script}")
    items = parse("itemID|taskID|TaskScript\n" + "\n".join(lines) + "\n")
    assert {i.item_id: (i.task_id, [s.script for s in i.subtasks]) for i in items} == expected


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_property_arbitrary_bytes_parse_or_fail_cleanly(junk: bytes):
    """Random bytes after a valid header either parse or raise InvalidTaskFile, never else."""
    try:
        items = parse(HEADER + junk)
    except InvalidTaskFile as exc:
        assert exc.errors and all(e.startswith("tasks.txt:") for e in exc.errors)
    else:
        assert all(i.item_id and i.task_id and i.subtasks for i in items)


def test_nested_delimiter_must_differ_from_the_delimiter():
    with pytest.raises(UsageError, match="must be non-empty and, in a '|' file, not '|'"):
        parse("itemID|taskID|TaskScript|TaskArgs\na|t|x|1|2\n", nested_delimiter="|")


_csv_script = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), whitelist_characters="\n,\t\"'|"),
    min_size=1, max_size=40,
).map(str.strip).filter(bool)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([",", "\t"]),
    st.lists(st.tuples(_id_text, _csv_script), min_size=1, max_size=10, unique_by=lambda r: r[0]),
)
def test_property_what_the_csv_module_writes_imports_unchanged(delimiter, rows):
    """A file written by any RFC 4180 writer (a spreadsheet, pandas, csv.writer) means what it says."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(["itemID", "taskID", "TaskScript"])
    writer.writerows((i, i, s) for i, s in rows)
    items = parse(out.getvalue(), delimiter=delimiter)
    assert [(i.item_id, i.subtasks[0].script) for i in items] == [(i.strip(), s) for i, s in rows]


def test_the_readme_csv_example_imports_as_documented():
    """The README's CSV example (quoted pipes, doubled quotes, {} and a quoted list of arguments
    split on the same comma that separates the columns)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"```\n(itemID,taskID,TaskScript,TaskArgs\n.*?)```", readme, re.S).group(1)
    items = parse(block, delimiter=",", nested_delimiter=",")
    assert [[s.script for s in i.subtasks] for i in items] == [
        ["zcat S1.fq.gz | awk -F, '{print $1}' > S1.txt"],
        ["printf '%s\\n' \"a, b\" > S2.txt"],
        ["bcftools view -r chr1 S3.vcf.gz -Oz -o S3.chr1.vcf.gz",
         "bcftools view -r chr2 S3.vcf.gz -Oz -o S3.chr2.vcf.gz"],
    ]
