"""When the dev stack restarts a service that exited on its own, and when it gives up (pure).

A crashed service is started again after an exponential delay (`base_seconds`, doubling, at most
`cap_seconds`); `max_attempts` crashes in a row end the stack instead (a service that cannot run
should be seen, not restarted forever). A run that lasted `stable_after_seconds` was a good one: its
crash starts the count again. Times are plain seconds from any monotonic clock, given by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff with a cap and a bounded number of consecutive attempts."""

    max_attempts: int = 5
    base_seconds: float = 0.5
    cap_seconds: float = 8.0
    stable_after_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_seconds < 0 or self.cap_seconds < self.base_seconds:
            raise ValueError("need 0 <= base_seconds <= cap_seconds")

    def delay_seconds(self, attempt: int) -> float:
        """The wait before restart `attempt` (1 for the first restart after a good run)."""
        if attempt < 1:
            raise ValueError("attempts count from 1")
        # min() before the power would overflow for a service restarted very often; attempts are
        # bounded by max_attempts anyway, the exponent is capped for safety.
        return float(min(self.cap_seconds, self.base_seconds * 2 ** min(attempt - 1, 62)))


@dataclass(frozen=True)
class Restart:
    """Start the service again after `delay_seconds`; this is restart `attempt` of `max_attempts`."""

    delay_seconds: float
    attempt: int
    max_attempts: int


@dataclass(frozen=True)
class GiveUp:
    """The service crashed `attempts` times in a row: stop the stack."""

    attempts: int


@dataclass
class RestartTracker:
    """Consecutive crashes per service under one policy. Call `started` when a service (re)starts
    and `crashed` when it exits on its own; `crashed` decides what happens next."""

    policy: RestartPolicy = field(default_factory=RestartPolicy)
    _started_at: dict[str, float] = field(default_factory=dict)
    _crashes: dict[str, int] = field(default_factory=dict)

    def started(self, name: str, *, now_seconds: float) -> None:
        self._started_at[name] = now_seconds

    def crashed(self, name: str, *, now_seconds: float) -> Restart | GiveUp:
        started_at = self._started_at.get(name)
        if started_at is not None and now_seconds - started_at >= self.policy.stable_after_seconds:
            self._crashes[name] = 0
        crashes = self._crashes.get(name, 0) + 1
        self._crashes[name] = crashes
        if crashes > self.policy.max_attempts:
            return GiveUp(attempts=crashes - 1)
        return Restart(self.policy.delay_seconds(crashes), crashes, self.policy.max_attempts)

    def start_failed(self, name: str, *, now_seconds: float) -> Restart | GiveUp:
        """A restart that did not get ready counts as one more crash in a row."""
        self._started_at.pop(name, None)
        return self.crashed(name, now_seconds=now_seconds)
