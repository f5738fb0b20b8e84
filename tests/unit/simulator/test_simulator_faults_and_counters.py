"""Fault knobs count down in order; counters see peak rate and concurrency."""

from __future__ import annotations

import pydantic
import pytest

from apptsync.simulator import FaultKnobs
from apptsync.simulator._counters import RequestCounters
from apptsync.simulator._faults import FaultState, InjectedFault

pytestmark = pytest.mark.unit


def test_counted_faults_hit_the_next_requests_in_order() -> None:
    state = FaultState(FaultKnobs())
    state.update({"fail_next_429": 2, "fail_next_5xx": 1, "reset_next_connections": 1, "malformed_next_bodies": 1})
    taken = [state.take_next_fault() for _ in range(7)]
    assert taken == [
        InjectedFault.RESET,
        InjectedFault.TOO_MANY_REQUESTS,
        InjectedFault.TOO_MANY_REQUESTS,
        InjectedFault.SERVER_ERROR,
        InjectedFault.MALFORMED_BODY,
        InjectedFault.NONE,
        InjectedFault.NONE,
    ]


def test_updates_merge_and_reject_unknown_or_bad_knobs() -> None:
    state = FaultState(FaultKnobs())
    state.update({"latency_ms": 20})
    knobs = state.update({"ignore_min_date": True})
    assert (knobs.latency_ms, knobs.ignore_min_date) == (20, True)
    with pytest.raises(pydantic.ValidationError):
        state.update({"no_such_knob": 1})
    with pytest.raises(pydantic.ValidationError):
        state.update({"status_5xx": 404})
    assert state.knobs == knobs


def test_peak_requests_in_any_one_second_window() -> None:
    counters = RequestCounters()
    for now in (0.0, 0.1, 0.2, 0.95, 1.1, 1.15, 1.19):
        counters.started(now)
        counters.finished(200)
    # (0.19, 1.19] holds 0.2, 0.95, 1.1, 1.15, 1.19
    assert counters.max_requests_per_window == 5
    assert counters.requests == 7


def test_a_request_exactly_one_window_later_does_not_overlap() -> None:
    counters = RequestCounters()
    for now in (0.0, 1.0, 2.0):
        counters.started(now)
        counters.finished(200)
    assert counters.max_requests_per_window == 1


def test_peak_concurrency_and_statuses() -> None:
    counters = RequestCounters()
    counters.started(0.0)
    counters.started(0.0)
    counters.started(0.0)
    counters.finished(200)
    counters.finished(429)
    counters.started(0.5)
    counters.finished(0)
    snapshot = counters.snapshot()
    assert snapshot["max_concurrent"] == 3
    assert snapshot["in_flight"] == 1
    assert snapshot["statuses"] == {"0": 1, "200": 1, "429": 1}
    counters.reset()
    assert counters.snapshot()["max_concurrent"] == 1  # the one still in flight
    assert counters.requests == 0
