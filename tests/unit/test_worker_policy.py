"""The worker's decisions, without processes or a table: stop policy, retries, backoff."""

from __future__ import annotations

import signal

import pytest

from pyanamo.worker_policy import (
    EXIT_DRAINED,
    EXIT_ERROR,
    EXIT_FAILED_ITEMS,
    MAX_LOCAL_FAILURES,
    Backoff,
    RetryPolicy,
    StopPolicy,
    WorkerConfig,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(**config) -> tuple[StopPolicy, FakeClock]:
    clock = FakeClock()
    return StopPolicy(WorkerConfig(table="t", **config), clock=clock), clock


def test_the_first_stop_reason_wins_and_sets_the_deadline():
    p, clock = policy()
    assert p.stop("SIGTERM", signum=signal.SIGTERM)
    assert not p.stop("drained")
    assert p.reason == "SIGTERM" and p.stopping
    assert not p.past_deadline()
    clock.now += 10.0
    assert p.past_deadline()
    assert p.exit_code(items_failed=0) == 128 + signal.SIGTERM


def test_wall_time_and_linger_stop_when_their_time_is_up():
    p, clock = policy(wall_time=60, lease=10)
    assert not p.out_of_time()
    clock.now += 60
    assert p.out_of_time() and p.reason == "wall_time"
    q, clock = policy(lease=10)  # linger defaults to twice the lease
    idle_since = clock.now
    clock.now += 19.9
    assert not q.lingered(idle_since)
    clock.now += 0.1
    assert q.lingered(idle_since) and q.reason == "linger_expired"


def test_an_outage_past_its_limit_is_an_error():
    p, clock = policy(outage_limit=30)
    since = clock.now
    clock.now += 30
    assert not p.unreachable(since, "refused")
    clock.now += 1
    assert p.unreachable(since, "refused")
    assert p.exit_code(items_failed=5) == EXIT_ERROR and p.detail == "refused"


def test_local_failures_back_off_then_stop_the_worker_and_a_success_resets_them():
    p, _ = policy()
    assert p.local_backoff() == 0.0
    assert p.local_failure("disk full") == 1 and p.local_backoff() == 2.0
    p.local_success()
    assert p.local_backoff() == 0.0
    for _n in range(MAX_LOCAL_FAILURES):
        p.local_failure("disk full")
    assert p.stopping and p.reason == "cannot_run_subtasks" and p.exit_code(0) == EXIT_ERROR


@pytest.mark.parametrize("failed, expected", [(0, EXIT_DRAINED), (2, EXIT_FAILED_ITEMS)])
def test_a_drained_worker_exits_by_whether_items_failed(failed, expected):
    p, _ = policy()
    p.drained()
    assert p.exit_code(items_failed=failed) == expected


def test_retry_policy_counts_attempts_and_doubles_the_delay_up_to_a_cap():
    retry = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=3.0)
    assert retry.allows(2) and not retry.allows(3)
    assert [retry.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]


def test_backoff_grows_with_jitter_to_its_cap_and_resets():
    backoff = Backoff(initial=0.2, cap=1.0)
    delays = [backoff.next() for _ in range(6)]
    assert 0.1 <= delays[0] <= 0.2 and all(0.5 <= d <= 1.0 for d in delays[3:])
    backoff.reset()
    assert backoff.next() <= 0.2
