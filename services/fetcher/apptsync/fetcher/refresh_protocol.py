"""The decisions of the two-phase OAuth refresh (pure; the I/O is in `connection_state`).

A connection row carries its encrypted credentials and, while one fetcher is spending its refresh
token, a marker (owner, started_at). A fetcher whose access token was refused looks at the row and
either uses what is stored, waits for the marker's owner, or claims the refresh itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class RefreshMarker:
    """`owner` is spending the refresh token since `started_at` (committed before the token call)."""

    owner: str
    started_at: datetime


class RefreshStep(enum.Enum):
    USE_STORED = "use_stored"  # the stored credentials are not the refused ones: someone refreshed
    WAIT = "wait"  # another fetcher is refreshing right now: wait for its result
    CLAIM = "claim"  # nobody is: mark the row as ours, then call the provider


def next_refresh_step(
    *,
    stored_is_rejected: bool,
    marker: RefreshMarker | None,
    owner: str,
    now: datetime,
    marker_timeout_seconds: float,
) -> RefreshStep:
    """What a fetcher holding refused credentials does next, given the row as it is now.

    Stored credentials other than the refused ones always win (they are the rotated result, or a
    re-authorization). Otherwise a marker of another owner younger than `marker_timeout_seconds`
    means wait; none, our own, or an expired one (its owner died before storing a result, so its
    refresh token was never spent or is already lost) means claim. `marker_timeout_seconds` must
    exceed the longest token request, retries included, or a slow owner and the claimant both spend
    the token (the provider then refuses one of them)."""
    if not stored_is_rejected:
        return RefreshStep.USE_STORED
    if marker is None or marker.owner == owner:
        return RefreshStep.CLAIM
    if (now - marker.started_at).total_seconds() >= marker_timeout_seconds:
        return RefreshStep.CLAIM
    return RefreshStep.WAIT
