"""The page loop's steps without a network: what a fetch tells the job when there is no page to
send, and how results reach the job's progress from its inbox."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from opentelemetry import trace

from apptsync.fetcher.page_steps import ResultWait, fetch_next_page, outcome_of
from apptsync.fetcher.progress import JobProgress, Outcome, StopPolicy
from apptsync.fetcher.providers import ProviderPage
from apptsync.shared.errors import PermanentError, ProviderUnavailableError
from apptsync.shared.messages.page_results import PageCounts, PageResult, SkipCounts

pytestmark = pytest.mark.unit
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SPAN = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
PAGE = ProviderPage(records_fetched=0, appointments=(), skipped_out_of_window=0, skipped_invalid=0, skip_details=[])


class Session:
    """A provider session that answers with `answer` (a page, None, or an error to raise)."""

    def __init__(self, answer: ProviderPage | BaseException | None, *, retries: int = 0) -> None:
        self.answer, self.retries, self._retries_after = answer, 0, retries

    async def next_page(self) -> ProviderPage | None:
        self.retries = self._retries_after
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def progress() -> JobProgress:
    return JobProgress(policy=StopPolicy.NEVER, stop_after_pages=1, max_pages=10, max_in_flight_pages=2,
                       first_import=True, deadline_at=NOW + timedelta(hours=1))


async def fetched(answer: ProviderPage | BaseException | None, *, cancel: bool = False) -> tuple[Any, JobProgress]:
    p, requested = progress(), asyncio.Event()
    if cancel:
        requested.set()
    page = await fetch_next_page(cast(Any, Session(answer, retries=2)), p, requested, SPAN, "acuity")
    return page, p


async def test_a_page_is_returned_for_sending() -> None:
    page, p = await fetched(PAGE)

    assert page is PAGE
    assert not p.stopped


async def test_a_provider_failure_fails_the_job_instead_of_sending() -> None:
    page, p = await fetched(PermanentError("401 from Acuity"))
    assert page is None
    assert (p.outcome, p.error) == (Outcome.FAILED, "401 from Acuity")

    page, p = await fetched(ProviderUnavailableError("503 three times"))
    assert page is None
    assert p.outcome is Outcome.FAILED
    assert p.error == "provider unavailable after retries: 503 three times"


async def test_an_exhausted_provider_stops_the_job_and_a_cancel_drops_the_fetched_page() -> None:
    page, p = await fetched(None)
    assert page is None
    assert p.stopped and p.walked_whole_window

    page, p = await fetched(PAGE, cancel=True)
    assert page is None
    assert p.outcome is Outcome.CANCELED


def result(page_no: int) -> PageResult:
    counts = PageCounts(job_id="job-1", page_no=page_no, records_fetched=3, inserted=1, updated=1, unchanged=0,
                        skipped=SkipCounts(invalid=1), contacts_unmatched=0)
    return PageResult(counts, redelivered=False)


async def test_results_in_the_inbox_settle_the_pages_in_flight() -> None:
    p = progress()
    p.page_sent()
    p.page_sent()
    inbox: asyncio.Queue[PageResult] = asyncio.Queue()
    wait = ResultWait("job-1", inbox, cast(Any, None), timeout_seconds=60.0, last_progress=0.0)

    inbox.put_nowait(result(1))
    wait.take_ready(p)
    assert p.outstanding_pages == {2}
    inbox.put_nowait(result(2))
    assert await wait.await_next(p)

    assert p.in_flight == 0
    assert wait.last_progress > 0.0
    assert outcome_of(result(1)).unreadable == 1
    assert wait.timed_out_error(p) == "no result for pages [] within 60 s"
