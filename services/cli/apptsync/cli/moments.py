"""Parsing the moments a user types (`--window-start`, `--window-end`): pure, no clock, no environment.

Accepted (ISO 8601):
  2026-01-01                     a date: its midnight in UTC
  2026-01-01Z, 2026-01-01+02:00  a date at an offset: its midnight there
  2026-01-01T09:30Z              a date and time (T or a space; seconds and fractions optional) with
  2026-01-01T09:30:15.5+02:00    `Z` or an offset (+HH:MM, +HHMM or +HH)
A date and time without an offset is refused: which day it is depends on a time zone we would guess.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, timezone

from apptsync.shared.errors import InvalidArgumentError

_MOMENT = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[Tt ](?P<time>\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?))?"
    r"(?P<offset>[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)
EXAMPLES = "2026-01-01, 2026-01-01T09:30Z or 2026-01-01T09:30+02:00"


def _offset(text: str, field: str, given: str) -> timezone:
    if text in ("Z", "z"):
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or "0")
    if hours > 23 or minutes > 59:
        raise InvalidArgumentError(field, f"{given!r} has no valid UTC offset {text!r}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_moment(text: str, field: str) -> datetime:
    """The timezone-aware moment `text` names (see the module docstring for the forms).

    Raises InvalidArgumentError(field, ...) for anything else; the message names an accepted form,
    and a date and time without an offset gets the same moment with `Z` appended as its suggestion."""
    given = text.strip()
    match = _MOMENT.fullmatch(given)
    if match is None:
        raise InvalidArgumentError(field, f"{text!r} is not a date or date and time; use e.g. {EXAMPLES}")
    try:
        day = date.fromisoformat(match["date"])
        clock = time.fromisoformat(match["time"].replace(",", ".")) if match["time"] else time()
    except ValueError as exc:
        raise InvalidArgumentError(field, f"{text!r} is not a valid date or time ({exc})") from exc
    if match["offset"] is None:
        if match["time"] is not None:
            stem = f"{match['date']}T{match['time']}"
            raise InvalidArgumentError(field, f"{text!r} needs a UTC offset, e.g. {stem}Z (UTC) or {stem}+02:00")
        return datetime.combine(day, clock, tzinfo=UTC)
    return datetime.combine(day, clock, tzinfo=_offset(match["offset"], field, text))
