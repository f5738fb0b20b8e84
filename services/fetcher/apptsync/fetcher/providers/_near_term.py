"""The near term a session walks first: where a frequent, early-stopping sync must never miss a change.

Providers whose listing has no change feed (Acuity, Calendly) page by start time, and an early-stopping
job stops at the first page without news. Walking the near term first, completely, and only then the
rest of the window under the stop rule makes the bookings of the coming days (new ones, reschedules,
cancellations: updates, which NO_NEW_RECORDS cannot see) fresh on every run; what lies beyond may wait
for the next full (NEVER) sync.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from apptsync.fetcher.providers._model import JobWindow

# The near term starts a little before now: today's bookings that already began (a late cancellation,
# a no-show mark) still change.
NEAR_TERM_LOOKBACK = timedelta(days=1)


def near_term_window(*, now: datetime, horizon: timedelta, window: JobWindow) -> JobWindow | None:
    """`[now - NEAR_TERM_LOOKBACK, now + horizon)` inside `window`; None when the horizon is zero (no
    near term: sessions walk as they did without one) or the two do not overlap. Raises ValueError for
    a naive `now` or a negative horizon."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if horizon < timedelta(0):
        raise ValueError("the freshness horizon must not be negative")
    if horizon == timedelta(0):
        return None
    return window.intersection(JobWindow(now - NEAR_TERM_LOOKBACK, now + horizon))
