"""The endpoint's clock from its answers' one-second Date headers (``pyanamo.clock``)."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from pyanamo.clock import EndpointClock


def test_before_any_answer_it_is_this_machines_clock():
    clock = EndpointClock()
    before = time.time()
    assert before <= clock.now() <= time.time() and clock.skew() is None


def test_answers_bound_the_offset_and_a_second_boundary_narrows_it():
    clock = EndpointClock()
    server = 1_800_000_000.0  # the endpoint's epoch seconds at monotonic time 1000.0
    clock.observe(1000.0, 1000.2, formatdate(server, usegmt=True))  # answered in [server, server + 1)
    assert clock.uncertainty() == pytest.approx(0.6, abs=1e-5)
    # made between 1000.95 and 1001.05, and still in the endpoint's second `server`: the offset is
    # below server + 1 - 1000.95, which cuts the bounds to a quarter of a second
    clock.observe(1000.95, 1001.05, formatdate(server, usegmt=True))
    assert clock.uncertainty() == pytest.approx(0.125, abs=1e-5)
    offset = clock.now() - time.monotonic()  # this machine's clock is far off: the nearest bound
    assert server - 1000.2 - 1e-3 <= offset <= server - 999.95 + 1e-3


def test_a_skewed_local_clock_is_measured_and_ignored():
    clock = EndpointClock()
    behind = 90.0  # the endpoint's clock is 90 s behind this machine's
    sent = time.monotonic()
    clock.observe(sent, sent + 0.01, formatdate(time.time() - behind, usegmt=True))
    assert clock.skew() == pytest.approx(behind, abs=1.1)
    assert clock.now() == pytest.approx(time.time() - behind, abs=1.1)


def test_an_endpoint_clock_that_was_stepped_starts_the_bounds_again():
    clock = EndpointClock()
    clock.observe(1000.0, 1000.1, formatdate(1_800_000_000, usegmt=True))
    clock.observe(1001.0, 1001.1, formatdate(1_800_003_600, usegmt=True))  # an hour later, a second after
    assert clock.uncertainty() == pytest.approx(0.55, abs=1e-5)
    assert clock.now() - time.monotonic() == pytest.approx(1_800_003_600 - 1000.55, abs=0.6)


@pytest.mark.parametrize("date", [None, "", "yesterday", "Thu, 99 Dec 2026 25:61:00 GMT"])
def test_answers_without_a_usable_date_change_nothing(date):
    clock = EndpointClock()
    clock.observe(1.0, 2.0, date)
    assert clock.skew() is None


def test_a_local_clock_the_answers_agree_with_is_used_as_it_is():
    """Every process of one machine (and machines kept in time by NTP) then agree exactly."""
    clock = EndpointClock()
    sent = time.monotonic()
    clock.observe(sent, sent + 0.01, formatdate(time.time(), usegmt=True))  # the endpoint agrees, to the second
    before = time.time()
    assert before <= clock.now() <= time.time()
