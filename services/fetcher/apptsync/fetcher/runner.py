"""Runs one claimed job: provider pages -> Kafka, page results -> stop decision -> terminal state.

The decisions live in `progress.JobProgress`; the steps of the page loop (open the job, fetch the
next page, send it, advance the resume point, await the results) in `page_steps`, each given only
the parts of the process's `FetcherContext` it needs. This module strings them together in the order
that keeps the invariants:
  1. a page is handed to Kafka (acked) before its resume point is stored, so a crash re-fetches at
     most that page (the writer deduplicates it by (job_id, page_no));
  2. the job reaches a terminal state only after every sent page has its result, and its counts are
     the ones the writer committed with those results.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg
from aiokafka import AIOKafkaProducer
from opentelemetry import trace

from apptsync.fetcher.cancellation import CancelSignals, CancelWatch
from apptsync.fetcher.page_steps import (
    Clock,
    PageSender,
    ProviderAccess,
    ResultWait,
    fetch_next_page,
    lease_owner,
    open_job,
)
from apptsync.fetcher.progress import JobProgress, Outcome, StopPolicy
from apptsync.fetcher.providers import (
    ProviderHttp,
    ProviderPage,
    ProviderSession,
)
from apptsync.fetcher.reconciliation import TARGETED_KIND, reconciles
from apptsync.fetcher.results import ResultRouter
from apptsync.shared.appointments import CanonicalAppointment, Source
from apptsync.shared.credentials import Keyring
from apptsync.shared.db import jobs as jobs_db
from apptsync.shared.db.pool import acquired
from apptsync.shared.errors import ApptsyncError
from apptsync.shared.kafka import kafka_errors
from apptsync.shared.messages.job_events import encode_job_finished, job_events_topic
from apptsync.shared.messages.page_results import PageResult
from apptsync.shared.settings import FetcherSettings, KafkaSettings
from apptsync.shared.telemetry.logs import bound_log_fields, log_event
from apptsync.shared.telemetry.metrics import METRICS
from apptsync.shared.telemetry.propagation import context_from_traceparent, use_span_safely

if TYPE_CHECKING:
    from apptsync.shared.db import DbConnection

_log = logging.getLogger("apptsync.fetcher")
_tracer = trace.get_tracer("apptsync.fetcher")
# The source of the job the current task runs: labels the provider request metrics (see service.py).
JOB_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("apptsync_job_source", default="unknown")


@dataclass
class FetcherContext:
    """What every job of one fetcher process shares."""

    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    # JobFinished events: a topic downstream services read, compressed for any client (see
    # apptsync.shared.kafka.producer_config); the pages go through `producer`.
    events_producer: AIOKafkaProducer
    results: ResultRouter
    http: ProviderHttp
    keyring: Keyring
    kafka: KafkaSettings
    settings: FetcherSettings
    worker_id: str
    clock: Clock
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    cancellations: CancelSignals = field(default_factory=CancelSignals)

    def provider_access(self) -> ProviderAccess:
        """What opening a job's provider session needs."""
        return ProviderAccess(self.pool, self.keyring, self.http, self.clock, self.settings.freshness_horizon_days)

    def page_sender(self, job: jobs_db.JobRecord, phone_region: str) -> PageSender:
        """What sending the job's pages and storing its resume point need."""
        return PageSender(job, self.producer, self.kafka, self.pool, self.clock, phone_region,
                          pages_fetched=job.counts["pages_fetched"])  # fmt: skip

    def result_wait(self, job_id: str, inbox: asyncio.Queue[PageResult]) -> ResultWait:
        """What awaiting the job's page results needs; the result timeout counts from now."""
        return ResultWait(job_id, inbox, self.pool, self.settings.result_timeout_seconds,
                          last_progress=asyncio.get_running_loop().time())  # fmt: skip

    def job_row(self) -> JobRow:
        """What keeping the job's row (lease, release, terminal state and its event) needs."""
        return JobRow(self.pool, self.clock, self.settings.lease_seconds, self.events_producer, self.kafka)


@dataclass(frozen=True, slots=True)
class JobRow:
    """The parts that keep a running job's row: renew or release its lease, store its terminal state
    and announce it on the job-events topic."""

    pool: asyncpg.Pool
    clock: Clock
    lease_seconds: float
    events_producer: AIOKafkaProducer
    kafka: KafkaSettings


async def run_job(job: jobs_db.JobRecord, ctx: FetcherContext) -> None:
    """Runs `job` to a terminal state, or until the process drains (then releases the lease so
    another fetcher resumes it). Raises LeaseLostError if another fetcher took the job over."""
    progress = JobProgress(
        policy=StopPolicy(job.options.stop_policy),
        stop_after_pages=job.options.stop_after_pages,
        max_pages=job.options.max_pages,
        max_in_flight_pages=job.options.max_in_flight_pages,
        first_import=job.first_import,
        deadline_at=job.deadline_at,
    )
    inbox = ctx.results.subscribe(job.job_id)
    row = ctx.job_row()
    # The job span continues the trace of the StartImport call that queued the job (its traceparent
    # is in the job row), whichever fetcher claims it and however late.
    job_span = _tracer.start_span(
        "import job",
        context=context_from_traceparent(job.traceparent),
        attributes={
            "apptsync.job_id": job.job_id,
            "apptsync.tenant_id": job.tenant_id,
            "apptsync.source": job.external_source,
            "apptsync.connection_id": job.connection_id,
            "apptsync.first_page_no": job.next_page_no,
            "apptsync.job_kind": job.kind,
            "apptsync.targets": len(job.targets),
        },
    )
    source_token = JOB_SOURCE.set(job.external_source)
    try:
        with (
            use_span_safely(job_span, end_on_exit=True),
            bound_log_fields(job_id=job.job_id, tenant_id=job.tenant_id),
            ctx.cancellations.watch(job.job_id) as cancel_watch,
        ):
            async with asyncio.TaskGroup() as group:
                renewal = group.create_task(_renew_lease(job.job_id, lease_owner(job), row, cancel_watch))
                try:
                    await _page_loop(job, ctx, progress, ctx.result_wait(job.job_id, inbox), cancel_watch.requested)
                finally:
                    renewal.cancel()
    finally:
        JOB_SOURCE.reset(source_token)
        METRICS.pages_in_flight.forget(job.job_id)
        ctx.results.unsubscribe(job.job_id)


async def _page_loop(
    job: jobs_db.JobRecord,
    ctx: FetcherContext,
    progress: JobProgress,
    results: ResultWait,
    cancel_requested: asyncio.Event,
) -> None:
    """Pages the job until it is finished (every sent page has its result and a stop is decided),
    then stores its terminal state; or, when the process drains, hands the job over."""
    opened = await open_job(job, ctx.provider_access())
    session = opened.session
    progress.resume(
        job.next_page_no, opened.written, near_term_pages=0 if session is None else session.near_term_pages
    )
    if session is None:
        progress.fail(f"connection {job.connection_id!r} no longer exists")
    sender = ctx.page_sender(job, opened.phone_region)
    results.progressed()
    log_event(
        _log, "job started", source=job.external_source, page_no=job.next_page_no, first_import=job.first_import
    )
    while not progress.finished:
        METRICS.pages_in_flight.set(job.job_id, progress.in_flight)
        results.take_ready(progress)
        _note_stop_requests(progress, ctx.clock(), cancel_requested)
        if ctx.draining.is_set() and not progress.stopped:
            await _release_after_drain(job, ctx.job_row(), progress, results)
            return
        if session is not None and progress.may_send():
            if await _page_step(job, session, sender, progress, cancel_requested):
                results.progressed()
        elif progress.in_flight and not await results.await_next(progress):
            # Backpressure or a decided stop, and the writer went quiet on the pages in flight.
            progress.fail(results.timed_out_error(progress))
            break
    async with ctx.pool.acquire() as conn:
        await _finish(job, ctx.job_row(), progress, conn)


def _note_stop_requests(progress: JobProgress, now: datetime, cancel_requested: asyncio.Event) -> None:
    """Tells `progress` of the stops asked from outside the page loop: the deadline, a cancellation."""
    progress.check_deadline(now)
    if cancel_requested.is_set():
        progress.cancel()


async def _page_step(
    job: jobs_db.JobRecord,
    session: ProviderSession,
    sender: PageSender,
    progress: JobProgress,
    cancel_requested: asyncio.Event,
) -> bool:
    """One page of the job: fetch the provider's next page, send it, then advance the resume point
    (in that order: a crash in between re-fetches this page, which the writer deduplicates). True
    when a page was sent; False when the fetch told `progress` why there is none."""
    page_no = progress.next_page_no
    with _page_span(job, page_no) as page_span:
        page = await fetch_next_page(session, progress, cancel_requested, page_span, job.external_source)
        if page is None:
            return False
        await sender.send(page, page_no)
        progress.page_sent(near_term=page.near_term)
        page_sent(job.external_source, page_no, page, page_span)
        await sender.advance_resume_point(session.cursor(), progress.next_page_no)
    return True


async def _finish(job: jobs_db.JobRecord, row: JobRow, progress: JobProgress, conn: DbConnection) -> None:
    """Stores the terminal state (after marking the rows a complete walk did not see as deleted, in
    the same transaction), then announces it on the job-events topic.

    The event follows the commit: a crash in between loses the event, never the job's state (the
    job row is the record; the event is a notification for downstream consumers)."""
    outcome = progress.outcome or Outcome.FAILED
    async with conn.transaction():
        if reconciles(Source(job.external_source), progress, kind=job.kind):
            deleted = await jobs_db.reconcile_deletions(
                conn, job_id=job.job_id, lease_owner=lease_owner(job), now=row.clock()
            )
            log_event(_log, "window reconciled", deleted=deleted)
        finished = await jobs_db.finish_job(
            conn,
            job_id=job.job_id,
            lease_owner=lease_owner(job),
            state=outcome.value,
            stop_reason=progress.stop_reason,
            error=progress.error,
            now=row.clock(),
        )
        if job.kind == TARGETED_KIND:
            # The connection's next targeted job (queued meanwhile) waited for this one: wake every
            # fetcher at commit, not only this process (whose freed slot claims again anyway).
            await conn.execute("SELECT pg_notify($1, $2)", jobs_db.JOBS_QUEUED_CHANNEL, job.job_id)
    _job_finished(finished)
    async with kafka_errors():
        await row.events_producer.send_and_wait(
            job_events_topic(row.kafka), encode_job_finished(finished), key=job.job_id.encode()
        )


async def _release_after_drain(
    job: jobs_db.JobRecord, row: JobRow, progress: JobProgress, results: ResultWait
) -> None:
    """SIGTERM: no new page; give pages in flight a short while, then hand the job to another fetcher."""
    await results.drain(progress)
    async with row.pool.acquire() as conn:
        await jobs_db.release_lease(conn, job_id=job.job_id, lease_owner=lease_owner(job), now=row.clock())
    _log.info("job %s released for another fetcher at page %d", job.job_id, progress.next_page_no)


@contextmanager
def _page_span(job: jobs_db.JobRecord, page_no: int) -> Iterator[trace.Span]:
    """The current span of one provider page: HTTP call(s), normalization, the Kafka send, the resume point."""
    span = _tracer.start_span(
        "fetch page",
        attributes={
            "apptsync.job_id": job.job_id,
            "apptsync.tenant_id": job.tenant_id,
            "apptsync.source": job.external_source,
            "apptsync.page_no": page_no,
        },
    )
    with use_span_safely(span, end_on_exit=True):
        yield span


def _job_finished(finished: jobs_db.JobRecord) -> None:
    """The job's summary: outcome metrics, attributes of the current (job) span and one log event."""
    METRICS.jobs_finished.labels(finished.external_source, finished.state).inc()
    if finished.started_at is not None and finished.finished_at is not None:
        duration_seconds = (finished.finished_at - finished.started_at).total_seconds()
        METRICS.job_duration.labels(finished.external_source, finished.state).observe(duration_seconds)
    span = trace.get_current_span()
    span.set_attribute("apptsync.job_state", finished.state)
    span.set_attribute("apptsync.stop_reason", finished.stop_reason)
    for name, value in finished.counts.items():
        span.set_attribute(f"apptsync.{name}", value)
    if finished.state == "FAILED":
        span.set_status(trace.Status(trace.StatusCode.ERROR, "job failed"))
    log_event(
        _log,
        "job finished",
        level=logging.WARNING if finished.state == "FAILED" else logging.INFO,
        state=finished.state,
        stop_reason=finished.stop_reason,
        error=finished.error,
        **finished.counts,
    )


def page_sent(source: str, page_no: int, page: ProviderPage, span: trace.Span) -> None:
    """Counts, span attributes and the page's log event (counts only: never record content)."""
    counts = {
        "records_fetched": page.records_fetched,
        "appointments": len(page.appointments),
        "skipped_out_of_window": page.skipped_out_of_window,
        "skipped_invalid": page.skipped_invalid,
        "contacts": len(page.contacts),
        "payments": sum(len(a.payments) for a in page.appointments if isinstance(a, CanonicalAppointment)),
    }
    for name, value in counts.items():
        span.set_attribute(f"apptsync.{name}", value)
    span.set_attribute("apptsync.near_term", page.near_term)
    METRICS.pages_fetched.labels(source).inc()
    log_event(_log, "page sent", page_no=page_no, **counts)


async def _renew_lease(job_id: str, owner: str, row: JobRow, watch: CancelWatch) -> None:
    """Renews the lease every third of its length, or at once when `watch.recheck` is set (missed
    notifications); sets `watch.requested` when the row says cancellation was requested (the
    fallback of the cancel notification). Raises LeaseLostError if the lease was taken over."""
    interval_seconds = row.lease_seconds / 3
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watch.recheck.wait(), timeout=interval_seconds)
        watch.recheck.clear()
        try:
            async with acquired(row.pool) as conn:
                if await jobs_db.renew_lease(
                    conn,
                    job_id=job_id,
                    lease_owner=owner,
                    lease_seconds=row.lease_seconds,
                    now=row.clock(),
                ):
                    watch.requested.set()
        except jobs_db.LeaseLostError:
            raise
        except ApptsyncError as exc:
            # A missed renewal is not fatal while the lease still runs; the next one may succeed.
            _log.warning("lease renewal of job %s failed: %s", job_id, exc)


def new_worker_id(hostname: str, pid: int) -> str:
    return f"{hostname}-{pid}-{uuid.uuid4().hex[:6]}"
