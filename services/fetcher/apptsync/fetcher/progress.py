"""The pure state of one running job: backpressure, page results in order, and the stop decision.

`JobProgress` is told what happened (a page was sent, a result arrived, the provider is exhausted,
the clock moved, cancellation was asked) and answers what to do next. It performs no I/O, so every
rule of docs/design.md sections 4 and 5 (early stop, job lifecycle) is unit-tested here in milliseconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class StopPolicy(enum.Enum):
    NO_NEW_RECORDS = "NO_NEW_RECORDS"
    NO_CHANGES = "NO_CHANGES"
    NEVER = "NEVER"


class Outcome(enum.Enum):
    """How the job ends once every sent page has its result."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


@dataclass(frozen=True)
class WrittenPage:
    """A page the writer has written, as far as the stop policy needs it (from its PageResult, or
    from the job's ledger when the job resumes)."""

    page_no: int
    records_fetched: int
    inserted: int
    updated: int
    # Records the page could not store (invalid or refused): their keys may be stored rows.
    unreadable: int = 0


@dataclass
class JobProgress:
    """Tracks one job from its first page to its terminal state.

    Backpressure starts small and grows (like TCP slow start): while the job may still stop early, only
    `stop_after_pages` pages are sent ahead of their results, and the window doubles with every page
    that had news, up to `max_in_flight_pages`. An up-to-date tenant's re-sync thus fetches one page
    instead of a window full of pages it would then have to write and wait for; a job with news
    reaches the full window after a few pages. First imports and NEVER jobs start at the full window.

    Near-term pages (the session's walk of the coming days, always walked completely and first: see
    apptsync.fetcher.providers.near_term_window) are judged like empty pages: they neither stop the
    job, nor extend or break a streak, nor grow the window. They are fetched whatever their results
    say, so while the session is in its near term (the last page sent was a near-term page) the full
    `max_in_flight_pages` may be in flight.

    Guarantees: never more than `max_in_flight_pages` pages without a result; pages are judged by the
    stop policy in page order; an empty page neither stops the job nor breaks a streak; a near-term
    page never counts toward a stop; a first import never stops early; once a stop is decided no
    further page is sent, but every page already sent is still awaited (its rows are written and
    counted).
    """

    policy: StopPolicy
    stop_after_pages: int
    max_pages: int
    max_in_flight_pages: int
    first_import: bool
    deadline_at: datetime
    next_page_no: int = 1
    _results: dict[int, WrittenPage] = field(default_factory=dict)
    _outstanding: set[int] = field(default_factory=set)
    _judged_through: int = 0
    _streak: int = 0
    stop_reason: str = ""
    outcome: Outcome | None = None
    _window: int = 0
    error: str = ""
    _exhausted: bool = False
    _unreadable: int = 0
    _near_term: set[int] = field(default_factory=set)
    _sending_near_term: bool = False

    @property
    def stopped(self) -> bool:
        return self.outcome is not None

    @property
    def in_flight(self) -> int:
        return len(self._outstanding)

    @property
    def outstanding_pages(self) -> frozenset[int]:
        return frozenset(self._outstanding)

    def __post_init__(self) -> None:
        if self.first_import or self.policy is StopPolicy.NEVER:
            self._window = self.max_in_flight_pages
        else:
            self._window = min(self.stop_after_pages, self.max_in_flight_pages)

    @property
    def window(self) -> int:
        """Pages that may be in flight now (grows from stop_after_pages to max_in_flight_pages)."""
        return self._window

    def may_send(self) -> bool:
        """True when the next page may be fetched and sent now."""
        window = self.max_in_flight_pages if self._sending_near_term else self._window
        return not self.stopped and self.in_flight < window

    @property
    def finished(self) -> bool:
        """True when a stop is decided and every sent page has its result."""
        return self.stopped and not self._outstanding

    def resume(self, next_page_no: int, written: dict[int, WrittenPage], *, near_term_pages: int = 0) -> None:
        """Restores state after another fetcher died: pages below next_page_no were sent; those in
        `written` have results, the rest are awaited; pages 1..near_term_pages were near-term pages
        (the session's count, kept in its cursor)."""
        self.next_page_no = next_page_no
        self._near_term = set(range(1, min(near_term_pages, next_page_no - 1) + 1))
        self._sending_near_term = (next_page_no - 1) in self._near_term
        self._outstanding = set(range(1, next_page_no)) - set(written)
        for outcome in written.values():
            self._results[outcome.page_no] = outcome
            self._unreadable += outcome.unreadable
        self._judge()

    def page_sent(self, *, near_term: bool = False) -> int:
        """Records that page `next_page_no` (a near-term page when `near_term`) was handed to Kafka;
        returns its number."""
        if self.stopped:
            raise RuntimeError("no page may be sent after the job stopped")
        page_no = self.next_page_no
        if near_term:
            self._near_term.add(page_no)
        self._sending_near_term = near_term
        self._outstanding.add(page_no)
        self.next_page_no += 1
        if page_no >= self.max_pages:
            self._stop(Outcome.SUCCEEDED, f"max_pages reached ({self.max_pages})")
        return page_no

    def result_received(self, outcome: WrittenPage) -> None:
        """Records a page's result; unknown pages are ignored, and a duplicate (a redelivery) counts
        nothing again but still settles its page: a job resumed from a cursor stored before a page
        whose send timed out at the broker yet landed sends that page again, and the writer answers
        with the stored result, which must not leave the page outstanding forever."""
        if outcome.page_no >= self.next_page_no:
            return
        self._outstanding.discard(outcome.page_no)
        if outcome.page_no in self._results:
            return
        self._results[outcome.page_no] = outcome
        self._unreadable += outcome.unreadable
        self._judge()

    def provider_exhausted(self) -> None:
        if self.outcome is None:
            self._exhausted = True
        self._stop(Outcome.SUCCEEDED, "provider exhausted")

    @property
    def walked_whole_window(self) -> bool:
        """True when the job saw every record of its window: a NEVER job that ended SUCCEEDED because
        the provider was exhausted, with every page's result in and no record left unreadable or
        refused. Only such a job may mark the stored rows it did not see as deleted; a partial,
        failed, canceled, deadline-ended, max_pages-ended or early-stopped job never may."""
        return (
            self.policy is StopPolicy.NEVER
            and self._exhausted
            and self.outcome is Outcome.SUCCEEDED
            and self.finished
            and len(self._results) == self.next_page_no - 1
            and self._unreadable == 0
        )

    def cancel(self) -> None:
        self._stop(Outcome.CANCELED, "canceled by request")

    def fail(self, error: str) -> None:
        """A permanent error: stop sending, finish FAILED once in-flight pages are written."""
        self._stop(Outcome.FAILED, "failed", error=error)

    def check_deadline(self, now: datetime) -> None:
        if now >= self.deadline_at:
            error = f"job exceeded its deadline ({self.deadline_at.isoformat()})"
            self._stop(Outcome.FAILED, "deadline exceeded", error=error)

    def _stop(self, outcome: Outcome, reason: str, *, error: str = "") -> None:
        if self.outcome is None:
            self.outcome, self.stop_reason, self.error = outcome, reason, error

    def _qualifies(self, outcome: WrittenPage) -> bool:
        if self.policy is StopPolicy.NO_NEW_RECORDS:
            return outcome.inserted == 0
        return outcome.inserted + outcome.updated == 0

    def _judge(self) -> None:
        """Walks results in page order as far as they are contiguous."""
        while (self._judged_through + 1) in self._results:
            self._judged_through += 1
            outcome = self._results[self._judged_through]
            if self.policy is StopPolicy.NEVER or self.first_import or self.stopped:
                continue
            if outcome.records_fetched == 0:
                continue  # an empty provider page is not evidence of anything
            if outcome.page_no in self._near_term:
                continue  # fetched whatever it holds: no evidence about the pages beyond the near term
            if self._qualifies(outcome):
                self._streak += 1
            else:
                self._streak = 0
                self._window = min(self._window * 2, self.max_in_flight_pages)
            if self._streak >= self.stop_after_pages:
                what = "no new records" if self.policy is StopPolicy.NO_NEW_RECORDS else "no changes"
                if self.stop_after_pages == 1:
                    reason = f"page {outcome.page_no} had {what}"
                else:
                    reason = f"pages {outcome.page_no - self.stop_after_pages + 1}-{outcome.page_no} had {what}"
                self._stop(Outcome.SUCCEEDED, reason)
