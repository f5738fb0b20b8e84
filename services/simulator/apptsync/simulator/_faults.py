"""Fault knobs of one simulated provider, and the decision of what the next request suffers (pure)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class FaultKnobs(BaseModel):
    """What the admin API sets (`PUT /_admin/<provider>/faults`, fields merge into the current knobs).

    Counted faults (`fail_next_*`, `reset_next_connections`, `malformed_next_bodies`) hit the next
    requests, one each, in the order reset > 429 > 403 rate limit > 5xx > malformed body. Some knobs
    only mean something to one provider (named in their description)."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: int = Field(0, ge=0, le=60_000, description="Delay before every response.")
    fail_next_429: int = Field(0, ge=0, description="The next N requests answer 429 too_many_requests.")
    retry_after: str | None = Field(
        None, description="Retry-After header value sent with those 429s (seconds or HTTP-date); null: none."
    )
    fail_next_403_rate_limit: int = Field(
        0, ge=0, description="The next N requests answer 403 with reason rateLimitExceeded (Google's quota answer)."
    )
    fail_next_5xx: int = Field(0, ge=0, description="The next N requests answer `status_5xx`.")
    status_5xx: int = Field(503, ge=500, le=599, description="Status of injected server errors.")
    reset_next_connections: int = Field(0, ge=0, description="The next N requests lose their connection.")
    malformed_next_bodies: int = Field(0, ge=0, description="The next N 200 responses carry broken JSON.")
    slow_body_ms: int = Field(0, ge=0, le=60_000, description="Pause between 1 KiB chunks of every body.")
    malformed_record_every: int = Field(
        0,
        ge=0,
        description="Records whose id is a multiple of N are served without a readable start; 0: off.",
    )
    ignore_min_date: bool = Field(False, description="Return appointments before minDate (legacy-observed quirk).")
    rate_limit_requests: int = Field(
        500, ge=1, description="Calendly: requests per user per window (X-RateLimit-Limit); 429 beyond."
    )
    rate_limit_window_seconds: float = Field(
        60.0, gt=0, le=3600, description="Calendly: length of the rate-limit window (X-RateLimit-Reset counts down)."
    )
    empty_page_every: int = Field(
        0, ge=0, description="Google: every Nth page of a listing comes back empty with a nextPageToken; 0: off."
    )
    repeat_page_token: bool = Field(
        False,
        description="Google: a listing's later pages hand back the page token they were asked with, as "
        "nextPageToken (a provider stuck in a paging loop).",
    )


class InjectedFault(enum.Enum):
    NONE = "none"
    RESET = "reset"
    TOO_MANY_REQUESTS = "429"
    RATE_LIMIT_403 = "403_rate_limit"
    SERVER_ERROR = "5xx"
    MALFORMED_BODY = "malformed_body"


@dataclass
class FaultState:
    knobs: FaultKnobs

    def update(self, changes: dict[str, object]) -> FaultKnobs:
        """Merges `changes` into the knobs. Raises pydantic.ValidationError for unknown or bad fields."""
        self.knobs = FaultKnobs.model_validate({**self.knobs.model_dump(), **changes})
        return self.knobs

    def take_next_fault(self) -> InjectedFault:
        """The counted fault the current request suffers (and counts it down)."""
        k = self.knobs
        for name, fault in (
            ("reset_next_connections", InjectedFault.RESET),
            ("fail_next_429", InjectedFault.TOO_MANY_REQUESTS),
            ("fail_next_403_rate_limit", InjectedFault.RATE_LIMIT_403),
            ("fail_next_5xx", InjectedFault.SERVER_ERROR),
            ("malformed_next_bodies", InjectedFault.MALFORMED_BODY),
        ):
            remaining = getattr(k, name)
            if remaining > 0:
                self.knobs = k.model_copy(update={name: remaining - 1})
                return fault
        return InjectedFault.NONE
