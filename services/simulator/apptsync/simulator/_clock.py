"""The simulator's notion of now: stores take a clock so that no record is stamped later than it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time

Clock = Callable[[], datetime]


def fixed_clock(moment: datetime) -> Clock:
    """A clock that always reads `moment` (aware)."""
    return lambda: moment


def anchor_clock(anchor: date) -> Clock:
    """Noon UTC of `anchor`: the default of stores built without a clock (unit tests, benchmarks),
    so that their data stays a pure function of the arguments."""
    return fixed_clock(datetime.combine(anchor, time(12), UTC))


def not_after(moment: datetime, now: datetime) -> datetime:
    """`moment`, or `now` when `moment` lies in the future: a provider never stamps a record
    (created/updated) later than the moment it answers."""
    return min(moment, now)
