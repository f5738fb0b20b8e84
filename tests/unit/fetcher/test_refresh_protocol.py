"""The two-phase refresh's decision: use what is stored, wait for a live refresher, or claim."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apptsync.fetcher.refresh_protocol import RefreshMarker, RefreshStep, next_refresh_step

NOW = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)
TIMEOUT_SECONDS = 180.0


def step(*, stored_is_rejected: bool, marker: RefreshMarker | None, owner: str = "me") -> RefreshStep:
    return next_refresh_step(
        stored_is_rejected=stored_is_rejected,
        marker=marker,
        owner=owner,
        now=NOW,
        marker_timeout_seconds=TIMEOUT_SECONDS,
    )


def marker(owner: str, *, age_seconds: float) -> RefreshMarker:
    return RefreshMarker(owner=owner, started_at=NOW - timedelta(seconds=age_seconds))


@pytest.mark.parametrize(
    "found",
    [
        None,
        marker("other", age_seconds=1),
        marker("other", age_seconds=TIMEOUT_SECONDS * 10),
        marker("me", age_seconds=1),
    ],
)
def test_stored_credentials_other_than_the_refused_ones_are_used_whatever_the_marker(
    found: RefreshMarker | None,
) -> None:
    assert step(stored_is_rejected=False, marker=found) is RefreshStep.USE_STORED


def test_without_a_marker_the_refresher_claims() -> None:
    assert step(stored_is_rejected=True, marker=None) is RefreshStep.CLAIM


def test_a_live_marker_of_another_refresher_means_wait() -> None:
    assert step(stored_is_rejected=True, marker=marker("other", age_seconds=TIMEOUT_SECONDS - 1)) is RefreshStep.WAIT


def test_a_marker_from_a_clock_ahead_of_ours_means_wait() -> None:
    assert step(stored_is_rejected=True, marker=marker("other", age_seconds=-30)) is RefreshStep.WAIT


def test_an_expired_marker_is_taken_over() -> None:
    assert step(stored_is_rejected=True, marker=marker("other", age_seconds=TIMEOUT_SECONDS)) is RefreshStep.CLAIM


def test_our_own_marker_left_by_an_earlier_attempt_is_reclaimed() -> None:
    assert step(stored_is_rejected=True, marker=marker("me", age_seconds=1)) is RefreshStep.CLAIM
