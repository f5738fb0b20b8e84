"""Request counters of one simulated provider: totals, statuses, peak rate and peak concurrency (pure:
the caller passes monotonic timestamps)."""

from __future__ import annotations

from collections import Counter, deque


class RequestCounters:
    """`max_requests_per_window` is the most requests that arrived within any `window_seconds`
    (a sliding window over arrival times: (t - window, t]); `max_in_flight` the most requests being
    served at once (from arrival until the response body is written)."""

    def __init__(self, *, window_seconds: float = 1.0) -> None:
        self._window_seconds = window_seconds
        self._recent: deque[float] = deque()
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Starts counting afresh; requests in flight stay in flight."""
        self._recent.clear()
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.max_requests_per_window = 0
        self.statuses: Counter[int] = Counter()

    def started(self, now: float) -> None:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        while self._recent and self._recent[0] <= now - self._window_seconds:
            self._recent.popleft()
        self._recent.append(now)
        self.max_requests_per_window = max(self.max_requests_per_window, len(self._recent))

    def finished(self, status: int) -> None:
        """`status` 0: the connection was dropped without a response."""
        self.in_flight -= 1
        self.statuses[status] += 1

    def snapshot(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_concurrent": self.max_in_flight,
            "max_requests_per_second": self.max_requests_per_window,
            "window_seconds": self._window_seconds,
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
        }
