"""Every argument of every command says what it is, and the table comes from PYANAMO_TABLE."""

from __future__ import annotations

import argparse
import re

import pytest

from pyanamo.cli import _resolve_table, build_parser
from pyanamo.errors import UsageError


def parsers(parser: argparse.ArgumentParser, name: str = "pyanamo"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def test_every_argument_of_every_command_has_help():
    missing = [f"{name} {action.dest}" for name, parser in parsers(build_parser()) for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction) and action.help in (None, "")]
    assert missing == []


@pytest.mark.parametrize("argv, env, table, ids", [
    (["status", "t1"], None, "t1", None),
    (["status"], "env-table", "env-table", None),
    (["reset", "t1", "a", "b"], None, "t1", ["a", "b"]),
    (["reset", "a", "b"], "env-table", "env-table", ["a", "b"]),  # with the variable: item IDs
    (["reset", "env-table", "a"], "env-table", "env-table", ["a"]),  # naming that table is fine
    (["cancel", "x"], "env-table", "env-table", ["x"]),
    (["import", "tasks.tsv", "--delimiter", "tab"], "env-table", "env-table", None),  # the README's flow
    (["worker", "--items", "4"], "env-table", "env-table", None),
    (["outputs", "--download", "results/"], "env-table", "env-table", []),  # the README's flow
    (["outputs", "S1"], "env-table", "env-table", ["S1"]),
    (["outputs", "t1", "S1"], None, "t1", ["S1"]),
])
def test_the_table_argument_or_pyanamo_table(monkeypatch, argv, env, table, ids):
    if env:
        monkeypatch.setenv("PYANAMO_TABLE", env)
    args = build_parser().parse_args(argv)
    _resolve_table(args)
    assert args.table == table and getattr(args, "item_ids", None) == ids
    if argv[0] == "import":
        assert str(args.file) == "tasks.tsv"


def test_no_table_and_no_variable_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("PYANAMO_TABLE", raising=False)
    args = build_parser().parse_args(["report"])
    with pytest.raises(UsageError, match="say which table: pyanamo report TABLE …, or set PYANAMO_TABLE"):
        _resolve_table(args)


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1.5h", 5400),
                                           ("1d", 86400), (" 30 min ", 1800)])
def test_durations_take_the_units_of_the_field(text, seconds):
    args = build_parser().parse_args(["worker", "t1", "--lease", text, "--timeout", text])
    assert args.lease == seconds and args.timeout == seconds


@pytest.mark.parametrize("text", ["5x", "-1m", "0", "h"])
def test_a_bad_duration_is_one_line_naming_the_option(text, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["worker", "t1", "--lease", text])
    assert exit_.value.code == 2 and "argument --lease:" in capsys.readouterr().err


def test_watch_without_a_value_refreshes_every_ten_seconds():
    assert build_parser().parse_args(["status", "t1", "--watch"]).watch == 10
    assert build_parser().parse_args(["status", "t1", "--watch", "1m"]).watch == 60


@pytest.mark.parametrize("argv, table, seconds", [
    (["status", "--watch", "t1"], "t1", 10),
    (["status", "--json", "--watch", "t1"], "t1", 10),
    (["status", "--watch", "5", "t1"], "t1", 5),
    (["status", "t1", "--watch", "2m"], "t1", 120),
])
def test_a_word_after_watch_that_is_no_duration_is_the_table(monkeypatch, argv, table, seconds):
    monkeypatch.delenv("PYANAMO_TABLE", raising=False)
    args = build_parser().parse_args(argv)
    _resolve_table(args)
    assert (args.table, args.watch) == (table, seconds)


def test_watch_with_a_bad_duration_or_two_tables_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("PYANAMO_TABLE", raising=False)
    for argv in (["status", "--watch", "5x"], ["status", "t1", "--watch", "t2"]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2 and "argument --watch: not a duration" in capsys.readouterr().err
    args = build_parser().parse_args(["status", "--watch", "t1", "t2"])
    with pytest.raises(UsageError, match="two tables: 't1' after --watch and 't2'"):
        _resolve_table(args)


def test_help_shows_each_default_once():
    """Before: `(default 120) (default: 120.0)`."""
    shown = [(name, parser.formatter_class(name)._get_help_string(action) or "")
             for name, parser in parsers(build_parser()) for action in parser._actions]
    assert [(name, text) for name, text in shown if len(re.findall(r"[(;] ?default[ :]", text)) > 1] == []
    assert any("(default: %(default)s)" in text for _, text in shown)  # the ones that did not say it get it


def test_a_mistyped_command_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["staus", "t1"])
    assert capsys.readouterr().err.rstrip().endswith("(did you mean status?)")


def test_writing_commands_say_whether_they_write_to_aws_or_to_an_endpoint(monkeypatch):
    """A user with an AWS profile who forgot AWS_ENDPOINT_URL_DYNAMODB is told it is AWS."""
    import boto3

    from pyanamo.aws import where

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    aws = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="y").client(
        "dynamodb", region_name="eu-west-2")
    local = boto3.client("dynamodb", region_name="us-east-1", endpoint_url="http://127.0.0.1:8000",
                         aws_access_key_id="x", aws_secret_access_key="y")
    monkeypatch.setenv("AWS_PROFILE", "lab")  # named by where() as the user set it
    assert where(aws) == "AWS region eu-west-2 (profile lab)"
    assert where(local) == "endpoint http://127.0.0.1:8000"
