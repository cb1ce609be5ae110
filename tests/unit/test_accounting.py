"""The arithmetic of the run report: sub-task cost, run cost and utilization, the cost to
finish, percentiles and the right-sizing hint; and the run records a worker writes."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from pyanamo.accounting import (
    Placement,
    WorkerSpan,
    cost_to_finish,
    local_placement,
    percentile,
    right_size,
    run_cost,
    subtask_cost,
)
from pyanamo.model import Item, Subtask
from pyanamo.report import TRACE_COLUMNS, RunReport, runs_of, timeline_svg
from pyanamo.runner import Outcome
from pyanamo.runs import EarlierAttempt, RunRecord
from pyanamo.schema import ItemState, SubtaskStatus
from pyanamo.worker_record import Earlier, earlier_of, run_record


def test_a_subtask_costs_its_share_of_the_instance_price():
    assert subtask_cost(0.36, 3600, 1) == pytest.approx(0.36)
    assert subtask_cost(0.36, 600, 4) == pytest.approx(0.36 / 6 / 4)  # 4 slots share the instance
    assert subtask_cost(None, 600, 1) is None  # unknown price: unknown cost, not zero
    assert subtask_cost(1.0, 60, 0) == pytest.approx(1 / 60)  # never divides by zero


def span(hours: float, price: float | None, slots: int = 1, busy_hours: float = 0.0) -> WorkerSpan:
    return WorkerSpan("w", "m7i.large", price, slots, started=0.0, ended=hours * 3600,
                      busy_seconds=busy_hours * 3600)


def test_run_cost_counts_paid_idle_time_and_utilization_of_slot_time():
    cost = run_cost([span(2, 0.5, slots=2, busy_hours=3), span(1, 0.25, busy_hours=0.5)])
    assert cost.instance_hours == pytest.approx(3)
    assert cost.cost_usd == pytest.approx(2 * 0.5 + 1 * 0.25)
    assert cost.utilization == pytest.approx(3.5 / (2 * 2 + 1 * 1))
    assert cost.unknown_price_hours == 0


def test_unknown_prices_are_reported_apart_not_counted_as_free():
    cost = run_cost([span(2, None), span(1, 0.1)])
    assert cost.cost_usd == pytest.approx(0.1) and cost.unknown_price_hours == pytest.approx(2)
    assert run_cost([span(1, None)]).cost_usd is None
    assert run_cost([]).utilization is None


def test_cost_to_finish_scales_the_cost_per_ended_item():
    assert cost_to_finish(3.0, 30, 70) == pytest.approx(7.0)
    assert cost_to_finish(3.0, 0, 70) is None and cost_to_finish(None, 30, 70) is None


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 0.95) == 95 and percentile(values, 0.5) == 50 and percentile(values, 1) == 100
    assert percentile([], 0.5) == 0 and percentile([7], 0.95) == 7


def test_right_sizing_fits_the_peak_times_the_slots_with_headroom():
    hint = right_size([100.0] * 19 + [3000.0], slots=4)
    assert hint["p95_mb"] == 100.0 and hint["max_mb"] == 3000.0
    assert hint["needed_gib"] == pytest.approx(3000 * 4 * 1.2 / 1024, abs=0.01)  # 14.06 GiB
    assert hint["smallest_types"] == ["c7i.2xlarge", "m7i.xlarge", "r7i.large"]  # 16 GiB each
    assert right_size([10_000_000.0])["smallest_types"] == []


def test_off_ec2_the_price_is_zero_unless_given():
    assert local_placement("vm").price_per_hour == 0.0 and local_placement("vm").price_source == "local"
    given = local_placement("vm", 0.75)
    assert given.price_per_hour == 0.75 and given.price_source == "--price-per-hour" and not given.on_ec2


def outcome(exit_code: int | None = 0, wall: float = 10.0, signal: int | None = None) -> Outcome:
    return Outcome(exit_code, False, 4.0, wall, Path("/dev/null"), Path("/dev/null"), signal, 204_800,
                   started_at=1_800_000_000.0)


def test_a_run_record_says_where_when_and_its_share_of_the_price():
    placement = Placement("i-0abc", "ip-10-0-0-1", "m7i.large", "spot", "us-east-1a", 0.36, "spot-price-history")
    record = run_record(outcome(wall=100.0), placement, "ip-10-0-0-1:42", slots=2,
                        earlier=Earlier((1, None), (EarlierAttempt(1_799_999_000.0, 30.0, 1, "ip-10-0-0-1:42"),)),
                        attempt=2, log_location="/logs/a", log_lines=3, log_bytes=40)
    assert record.to_map() == {
        "ExitCode": 0, "Attempt": 2, "CPU_Time": 4.0, "Wall_Time": 100.0, "Log_Length": 3, "Bytes": 40,
        "Peak_RSS_KB": 204_800, "Timed_Out": False, "Log_Location": "/logs/a",
        "Started": "2027-01-15T08:00:00.000Z", "Ended": "2027-01-15T08:01:40.000Z", "InstanceID": "i-0abc",
        "Host": "ip-10-0-0-1", "Worker_ID": "ip-10-0-0-1:42", "Instance_Type": "m7i.large",
        "Earlier_Exits": [1, None], "Earlier_Attempts": [[1_799_999_000.0, 30.0, 1, ""]],  # "": this worker
        "Cost_USD": pytest.approx(0.36 * 100 / 3600 / 2),
    }
    assert RunRecord.from_map(record.to_map(), "Task_0") == record  # what is stored reads back the same
    assert run_record(outcome(137, signal=9), Placement("x", "h"), "h:1", 1, Earlier()).to_map()["Signal"] == 9
    assert "Cost_USD" not in run_record(outcome(), Placement("x", "h"), "h:1", 1, Earlier()).to_map()  # unknown price


def test_earlier_attempts_are_kept_by_their_exit_codes():
    assert earlier_of(None, 0).exits == ()
    assert earlier_of({"ExitCode": 3, "Earlier_Exits": [2]}, 2).exits == (2, 3)
    assert earlier_of({"ExitCode": 3}, 0).exits == ()  # a fresh sub-task (reset): no earlier attempts
    assert len(earlier_of({"ExitCode": 1, "Earlier_Exits": [1] * 40}, 41).exits) == 20


def test_the_latest_earlier_attempts_are_kept_with_when_how_long_and_where():
    stored = {"ExitCode": 3, "Started": "2027-01-15T08:00:00.000Z", "Wall_Time": 12.5, "Worker_ID": "h:2",
              "Earlier_Attempts": [[1_799_999_000.0, 30.0, None, "h:1"]]}
    earlier = earlier_of(stored, 2)
    assert earlier.attempts == (EarlierAttempt(1_799_999_000.0, 30.0, None, "h:1"),
                                EarlierAttempt(1_800_000_000.0, 12.5, 3, "h:2"))
    many = {**stored, "Earlier_Attempts": [[float(n), 1.0, 1, "h:1"] for n in range(9)]}
    assert [a.started for a in earlier_of(many, 10).attempts] == [7.0, 8.0, 1_800_000_000.0]  # the latest 3
    bad = RunRecord.from_map({**stored, "Earlier_Attempts": [["x", 1, 2, "h"]]}, "Task_0")
    assert bad is not None and bad.earlier_attempts == ()
    assert bad.problems == ("Log_Summary.Task_0.Earlier_Attempts is not a list of [started, wall time, exit code, "
                            "worker]",)


def ran(start: str, end: str, wall: float, worker: str = "h:1") -> dict:
    return {"Started": start, "Ended": end, "Wall_Time": wall, "CPU_Time": wall / 2, "Peak_RSS_KB": 1024,
            "Worker_ID": worker, "InstanceID": "i-1", "Instance_Type": "m7i.large", "Host": "h", "ExitCode": 0,
            "Attempt": 1}


def test_runs_come_from_records_and_overlapping_runs_of_one_worker_get_rows_of_their_own():
    item = Item("a", "S", (Subtask("Task_0", "bwa mem x", SubtaskStatus.DONE, 1, 0),
                           Subtask("Task_1", "samtools sort", SubtaskStatus.DONE, 1, 0),
                           Subtask("Task_2", "never ran")),
                log_summary={"Task_0": ran("2027-01-01T00:00:00Z", "2027-01-01T00:00:10Z", 10),
                             "Task_1": ran("2027-01-01T00:00:05Z", "2027-01-01T00:00:20Z", 15)})
    runs = list(runs_of(item))
    assert [(r.subtask, r.program, r.peak_rss_mb) for r in runs] == [
        ("Task_0", "bwa", 1.0), ("Task_1", "samtools", 1.0)]
    other = Item("b", "S", (Subtask("Task_0", "true", SubtaskStatus.DONE, 1, 0),),
                 log_summary={"Task_0": ran("2027-01-01T00:00:12Z", "2027-01-01T00:00:13Z", 1)})
    runs += list(runs_of(other))
    report = RunReport("t", {}, {}, runs, [], run_cost([]))
    svg = timeline_svg(report)
    assert svg.count('<rect class="run ') == 3 and svg.count('<g class="lane"') == 1
    # Task_0 (0–10 s) and Task_1 (5–20 s) overlap: two rows; b's run (12–13 s) fits the first row.
    assert 'y="2"' in svg and f'y="{2 + 18}"' in svg and svg.count(f'y="{2 + 36}"') == 0


def test_a_run_of_a_subtask_made_from_an_argument_carries_its_label_into_the_trace():
    item = Item("S03", "S03", (Subtask("Task_0", "call.sh chr2", SubtaskStatus.DONE, 1, 0, label="chr2"),),
                state=ItemState.DONE, log_summary={"Task_0": {"Started": "2026-12-03T00:00:00.000Z", "ExitCode": 0}})
    (run,) = runs_of(item)
    row = dict(zip(TRACE_COLUMNS, run.trace_row(), strict=True))
    assert (row["subtask"], row["label"]) == ("Task_0", "chr2") and run.name == "Task_0 (chr2)"


def test_the_timelines_axis_has_round_steps_and_at_most_eight_ticks():
    from pyanamo.report import axis_ticks

    assert axis_ticks(10) == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert axis_ticks(3600) == [600, 1200, 1800, 2400, 3000, 3600]
    assert axis_ticks(95) == [20, 40, 60, 80]
    assert all(1 <= len(axis_ticks(span)) <= 8 for span in (0.5, 7, 95, 1000, 86_400, 400_000))


def test_a_long_idle_gap_is_cut_from_the_timeline_so_both_runs_stay_wide():
    """A rerun an hour after the first run: without the break both would be slivers 17 px wide."""
    from types import SimpleNamespace

    from pyanamo.report import BREAK_PX, LABEL_WIDTH, TIMELINE_WIDTH, TimeAxis

    runs = [SimpleNamespace(started=0.0, ended=60.0), SimpleNamespace(started=3600.0, ended=3660.0)]
    axis = TimeAxis.of(0.0, 3660.0, runs)
    assert axis.gaps == ((60.0, 3600.0),)
    first, second = axis.x(60.0) - axis.x(0.0), axis.x(3660.0) - axis.x(3600.0)
    assert first == second == (TIMELINE_WIDTH - LABEL_WIDTH - 10 - BREAK_PX) / 2
    assert axis.x(3600.0) - axis.x(60.0) == BREAK_PX and axis.inside_gap(1800.0)
    assert TimeAxis.of(0.0, 120.0, [SimpleNamespace(started=0.0, ended=50.0),
                                   SimpleNamespace(started=70.0, ended=120.0)]).gaps == ()  # short: kept


def test_past_a_few_thousand_attempts_each_lane_shows_how_many_ran_at_once_instead_of_a_bar_each():
    from pyanamo.model import iso
    from pyanamo.report import TIMELINE_MOST_BARS

    runs = []
    for n in range(TIMELINE_MOST_BARS + 1):  # two workers; one run in 501 failed
        start = 1_800_000_000.0 + 3 * (n // 2)
        status = SubtaskStatus.FAILED if n % 501 == 0 else SubtaskStatus.DONE
        item = Item(f"s{n}", "S", (Subtask("Task_0", "true", status, 1, 0),),
                    log_summary={"Task_0": ran(iso(start), iso(start + 10), 10, worker=f"h:{n % 2}")})
        runs += list(runs_of(item))
    svg = timeline_svg(RunReport("t", {}, {}, runs, [], run_cost([])))
    assert '<rect class="run ' not in svg and svg.count('<g class="lane"') == 2
    assert svg.count('<path class="busy all"') == 2 and svg.count('<path class="busy bad"') == 2
    assert len(svg) < 20_000  # not in the number of runs: at most a point per column
    assert "runs at once (at most " in svg


def test_a_record_read_from_the_table_takes_its_usual_types_and_names_every_malformed_field():
    """The stored form read back (numbers as Decimal, as boto3 gives them) and one whose fields
    have the wrong types: the usual ones are taken as they are, each wrong one is named and reads
    as unknown, and the rest of the record is still read."""
    stored = {"ExitCode": Decimal("0"), "Attempt": Decimal("2"), "Wall_Time": Decimal("12.5"),
              "CPU_Time": Decimal("6"), "Peak_RSS_KB": Decimal("1024"), "Started": "2027-01-15T08:00:00.000Z",
              "Worker_ID": "h:1", "Earlier_Exits": [Decimal("1")], "Unknown_Field": "ignored"}
    record = RunRecord.from_map(stored, "Task_0")
    assert record is not None and record.problems == ()
    assert (record.exit_code, record.attempt, record.wall_time, record.peak_rss_kb, record.earlier_exits) == \
        (0, 2, 12.5, 1024, (1,))
    assert type(record.attempt) is int and type(record.wall_time) is float
    bad = RunRecord.from_map({**stored, "ExitCode": Decimal("1.5"), "Wall_Time": "long", "Host": Decimal("3"),
                              "Timed_Out": "no"}, "Task_0")
    assert bad is not None and (bad.exit_code, bad.wall_time, bad.host, bad.timed_out) == (None, 0.0, None, False)
    assert sorted(bad.problems) == ["Log_Summary.Task_0.ExitCode is not a whole number",
                                    "Log_Summary.Task_0.Host is not text",
                                    "Log_Summary.Task_0.Timed_Out is not true or false",
                                    "Log_Summary.Task_0.Wall_Time is not a number"]
    assert bad.attempt == 2 and bad.started == "2027-01-15T08:00:00.000Z"
