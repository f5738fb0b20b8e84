"""The dev stack's restart policy: exponential delays with a cap, a bounded number of crashes in a
row, and a good run (one that lasted `stable_after_seconds`) starting the count again."""

from __future__ import annotations

import pytest

from apptsync.cli.devstack.restart import GiveUp, Restart, RestartPolicy, RestartTracker

POLICY = RestartPolicy(max_attempts=4, base_seconds=0.5, cap_seconds=3.0, stable_after_seconds=30.0)


def test_delays_double_from_the_base_up_to_the_cap() -> None:
    assert [POLICY.delay_seconds(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_a_huge_attempt_number_stays_at_the_cap() -> None:
    assert POLICY.delay_seconds(10_000) == 3.0


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"base_seconds": -1.0}, {"base_seconds": 2.0, "cap_seconds": 1.0}],
)
def test_a_policy_that_makes_no_sense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must be at least 1|base_seconds"):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="count from 1"):
        POLICY.delay_seconds(0)


def test_crashes_in_a_row_back_off_then_give_up() -> None:
    tracker = RestartTracker(POLICY)
    tracker.started("writer", now_seconds=0.0)
    decisions = []
    for crash in range(5):
        now = crash * 2.0
        decisions.append(tracker.crashed("writer", now_seconds=now))
        tracker.started("writer", now_seconds=now + 1.0)
    assert decisions == [Restart(0.5, 1, 4), Restart(1.0, 2, 4), Restart(2.0, 3, 4), Restart(3.0, 4, 4), GiveUp(4)]


def test_a_run_that_lasted_long_enough_starts_the_count_again() -> None:
    tracker = RestartTracker(POLICY)
    tracker.started("writer", now_seconds=0.0)
    assert tracker.crashed("writer", now_seconds=1.0) == Restart(0.5, 1, 4)
    tracker.started("writer", now_seconds=2.0)
    assert tracker.crashed("writer", now_seconds=3.0) == Restart(1.0, 2, 4)
    tracker.started("writer", now_seconds=4.0)
    assert tracker.crashed("writer", now_seconds=4.0 + 30.0) == Restart(0.5, 1, 4)


def test_a_restart_that_did_not_get_ready_counts_as_a_crash() -> None:
    tracker = RestartTracker(RestartPolicy(max_attempts=2, base_seconds=1.0, cap_seconds=4.0))
    tracker.started("fetcher", now_seconds=0.0)
    assert tracker.crashed("fetcher", now_seconds=100.0) == Restart(1.0, 1, 2)
    # The failed start leaves no run to call good, however long it took to fail.
    assert tracker.start_failed("fetcher", now_seconds=200.0) == Restart(2.0, 2, 2)
    assert tracker.start_failed("fetcher", now_seconds=300.0) == GiveUp(2)


def test_services_are_counted_apart() -> None:
    tracker = RestartTracker(POLICY)
    for name in ("writer", "fetcher"):
        tracker.started(name, now_seconds=0.0)
    assert tracker.crashed("writer", now_seconds=1.0) == Restart(0.5, 1, 4)
    assert tracker.crashed("writer", now_seconds=2.0) == Restart(1.0, 2, 4)
    assert tracker.crashed("fetcher", now_seconds=2.0) == Restart(0.5, 1, 4)
