"""near_term_window: the coming days a session walks first, inside the job window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apptsync.fetcher.providers import NEAR_TERM_LOOKBACK, JobWindow, near_term_window

pytestmark = pytest.mark.unit

NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
WINDOW = JobWindow(NOW - timedelta(days=180), NOW + timedelta(days=180))


def test_the_near_term_starts_a_day_ago_and_reaches_the_horizon() -> None:
    assert timedelta(days=1) == NEAR_TERM_LOOKBACK
    assert near_term_window(now=NOW, horizon=timedelta(days=14), window=WINDOW) == JobWindow(
        NOW - timedelta(days=1), NOW + timedelta(days=14)
    )


def test_it_is_cut_to_the_job_window() -> None:
    past = JobWindow(NOW - timedelta(days=30), NOW + timedelta(days=2))
    assert near_term_window(now=NOW, horizon=timedelta(days=14), window=past) == JobWindow(
        NOW - timedelta(days=1), NOW + timedelta(days=2)
    )
    long_ago = JobWindow(NOW - timedelta(days=60), NOW - timedelta(days=30))
    assert near_term_window(now=NOW, horizon=timedelta(days=14), window=long_ago) is None


def test_a_zero_horizon_is_no_near_term() -> None:
    assert near_term_window(now=NOW, horizon=timedelta(0), window=WINDOW) is None


def test_time_is_an_argument_and_must_be_aware() -> None:
    with pytest.raises(ValueError, match="aware"):
        near_term_window(now=NOW.replace(tzinfo=None), horizon=timedelta(days=1), window=WINDOW)
    with pytest.raises(ValueError, match="negative"):
        near_term_window(now=NOW, horizon=timedelta(days=-1), window=WINDOW)
