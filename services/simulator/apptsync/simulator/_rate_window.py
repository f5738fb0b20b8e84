"""A per-user request budget in fixed windows, as Calendly announces it in X-RateLimit-* (pure: the
caller passes monotonic seconds)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateVerdict:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }


class RateWindows:
    """Counts requests per key in windows of `window_seconds` starting at each key's first request."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}
        self.rejected = 0

    def admit(self, key: str, *, now: float, limit: int, window_seconds: float) -> RateVerdict:
        started, used = self._windows.get(key, (now, 0))
        if now >= started + window_seconds:
            started, used = now, 0
        reset_seconds = max(1, math.ceil(started + window_seconds - now))
        if used >= limit:
            self._windows[key] = (started, used)
            self.rejected += 1
            return RateVerdict(False, limit, 0, reset_seconds)
        used += 1
        self._windows[key] = (started, used)
        return RateVerdict(True, limit, limit - used, reset_seconds)

    def reset(self) -> None:
        self._windows.clear()
