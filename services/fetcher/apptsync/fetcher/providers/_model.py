"""The provider layer's value types and the session contract the fetcher's job runner pages with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeAlias, Union

from apptsync.shared.appointments import Contact, PageRecord, SkippedRecord

# What `json.loads` produces (and `json.dumps` accepts): provider payloads and resume cursors.
JsonValue: TypeAlias = Union[bool, int, float, str, list["JsonValue"], dict[str, "JsonValue"], None]  # noqa: UP007


@dataclass(frozen=True, slots=True)
class JobWindow:
    """The appointments a job imports: start time in the half-open range [start, end).

    Raises ValueError if either bound is naive or the range is empty."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("job window bounds must be timezone-aware")
        if self.end <= self.start:
            raise ValueError("job window must end after it starts")

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    def intersection(self, other: JobWindow) -> JobWindow | None:
        """The moments in both windows; None when they do not overlap."""
        start, end = max(self.start, other.start), min(self.end, other.end)
        return JobWindow(start, end) if start < end else None


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """One tenant's connection to a provider, decrypted.

    `base_url` "" means the provider's public API. `credentials` are secret: they go into request
    headers only, never into messages, logs or exceptions. `settings` are provider options (e.g. Acuity
    `currency`, Calendly `organization`, Google `calendar_ids`). `scope_key` names the connection
    across jobs (e.g. `tenant/connection`); per-account rate-limit pauses are keyed by it ("" : by
    session)."""

    base_url: str
    credentials: Mapping[str, str] = field(repr=False)
    settings: Mapping[str, str] = field(default_factory=dict)
    scope_key: str = ""


@dataclass(frozen=True, slots=True)
class ProviderPage:
    """One provider response that is worth a page.

    Guarantees: `records_fetched == len(appointments) + skipped_out_of_window + skipped_invalid`, and
    `skip_details` has one entry per skipped record (reasons and record ids, no personal data).
    `appointments` holds, in the provider's order, full records and cancellation stubs (a record
    the provider reports canceled or deleted without its times). `near_term` is True when the page
    belongs to the session's near-term walk (see `near_term_window`): such pages are always fetched,
    so they never count toward an early stop."""

    records_fetched: int
    appointments: Sequence[PageRecord]
    skipped_out_of_window: int
    skipped_invalid: int
    skip_details: list[SkippedRecord]
    near_term: bool = False
    # The clients stream (e.g. Acuity `GET /clients`): people the provider lists, not appointments,
    # so not part of records_fetched. A page of the clients stream has no appointments.
    contacts: Sequence[Contact] = ()


class ProviderSession(Protocol):
    """Pages through one connection's appointments inside one job window."""

    async def next_page(self) -> ProviderPage | None:
        """The next page, or None once the provider is exhausted (only None ends paging).

        Raises (apptsync.shared.errors): ProviderUnavailableError once retries are spent,
        ProviderAuthError (reauthorization required), ProviderRejectedError (4xx other than 429, or a
        response no retry can fix), PaginationLoopError."""
        ...

    def cursor(self) -> JsonValue:
        """A JSON-serializable resume point after the last page returned; opening a session with it
        continues with the following page."""
        ...

    @property
    def near_term_pages(self) -> int:
        """How many pages of this job's walk, counting those returned before the session was resumed
        from its cursor, were near-term pages. The near term is walked first, so they are the job's
        pages 1..near_term_pages (0: the session walks no near term, or has not returned a page of it)."""
        ...

    @property
    def retries(self) -> int:
        """HTTP retries this session spent so far."""
        ...
