"""Runs one claimed job: provider pages -> Kafka, page results -> stop decision -> terminal state.

The decisions live in `progress.JobProgress`; this module only moves data between the provider
session, Kafka and PostgreSQL, in the order that keeps the invariants:
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg
from aiokafka import AIOKafkaProducer
from opentelemetry import trace

from apptsync.fetcher.cancellation import CancelSignals, CancelWatch
from apptsync.fetcher.connection_state import PostgresConnectionStateStore
from apptsync.fetcher.progress import JobProgress, Outcome, StopPolicy, WrittenPage
from apptsync.fetcher.providers import (
    ConnectionConfig,
    JobWindow,
    ProviderHttp,
    ProviderPage,
    ProviderSession,
    near_term_window,
    open_session,
    open_targeted_session,
)
from apptsync.fetcher.reconciliation import TARGETED_KIND, reconciles
from apptsync.fetcher.results import ResultRouter
from apptsync.shared.appointments import CanonicalAppointment, Source
from apptsync.shared.credentials import Keyring
from apptsync.shared.db import connections as connections_db
from apptsync.shared.db import jobs as jobs_db
from apptsync.shared.db.pool import acquired
from apptsync.shared.errors import ApptsyncError, PermanentError, RetriableError
from apptsync.shared.kafka import kafka_errors
from apptsync.shared.messages.appointment_pages import build_page, pages_topic
from apptsync.shared.messages.job_events import encode_job_finished, job_events_topic
from apptsync.shared.messages.page_results import PageResult
from apptsync.shared.settings import FetcherSettings, KafkaSettings
from apptsync.shared.telemetry.logs import bound_log_fields, log_event, register_secrets
from apptsync.shared.telemetry.metrics import METRICS
from apptsync.shared.telemetry.propagation import context_from_traceparent, mark_error, use_span_safely

if TYPE_CHECKING:
    from apptsync.shared.db import DbConnection

_log = logging.getLogger("apptsync.fetcher")
_tracer = trace.get_tracer("apptsync.fetcher")
# The source of the job the current task runs: labels the provider request metrics (see service.py).
JOB_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("apptsync_job_source", default="unknown")
Clock = Callable[[], datetime]
# How often a job waiting for results also looks in import_job_pages (results it cannot get from
# Kafka: pages sent by a fetcher that died before their results arrived).
_RESULT_FALLBACK_SECONDS = 2.0


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


def outcome_of(result: PageResult) -> WrittenPage:
    counts = result.counts
    return WrittenPage(counts.page_no, counts.records_fetched, counts.inserted, counts.updated,
                       unreadable=result.unreadable)  # fmt: skip


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
                renewal = group.create_task(_renew_lease(job.job_id, _lease_owner(job), ctx, cancel_watch))
                try:
                    await _page_loop(job, ctx, progress, inbox, cancel_watch.requested)
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
    inbox: asyncio.Queue[PageResult],
    cancel_requested: asyncio.Event,
) -> None:
    async with ctx.pool.acquire() as conn:
        written = await jobs_db.page_results(conn, job.job_id)
        loaded = await connections_db.load_connection_secrets(
            conn, keyring=ctx.keyring, tenant_id=job.tenant_id, connection_id=job.connection_id
        )
    session: ProviderSession | None = None
    phone_region = ""
    if loaded is not None:
        record, secrets = loaded
        register_secrets(*secrets.values())  # redacted by value from every log line of this process
        # The region a phone without a country code is read in (the writer's default when unset).
        phone_region = record.settings.get("phone_region", "").strip().upper()
        window = JobWindow(job.window_start, job.window_end)
        config = ConnectionConfig(
            base_url=record.base_url,
            credentials=secrets,
            settings=record.settings,
            scope_key=f"{job.tenant_id}/{job.connection_id}",
        )
        state = PostgresConnectionStateStore(
            pool=ctx.pool,
            keyring=ctx.keyring,
            tenant_id=job.tenant_id,
            connection_id=job.connection_id,
            clock=ctx.clock,
            refresh_owner=_lease_owner(job),
        )
        if job.kind == TARGETED_KIND:
            # Queued by provider notifications (the webhook receiver): only the named records.
            session = open_targeted_session(
                Source(job.external_source),
                http=ctx.http,
                connection=config,
                window=window,
                page_size=job.options.page_size,
                targets=job.targets,
                cursor=job.cursor,
                clock=ctx.clock,
                state=state,
            )
        else:
            session = open_session(
                Source(job.external_source),
                http=ctx.http,
                connection=config,
                window=window,
                page_size=job.options.page_size,
                cursor=job.cursor,
                clock=ctx.clock,
                state=state,
                # Every job walks the coming days first (a resumed one keeps its cursor's order); only
                # an early-stopping job depends on it, the order never changes what a full walk covers.
                near_term=near_term_window(
                    now=ctx.clock(), horizon=timedelta(days=ctx.settings.freshness_horizon_days), window=window
                ),
                # The client list (people with or without an appointment in the window) changes slowly:
                # the jobs that walk everything carry it, frequent early-stopping syncs do not.
                clients=job.first_import or StopPolicy(job.options.stop_policy) is StopPolicy.NEVER,
            )
    near_term_pages = 0 if session is None else session.near_term_pages
    progress.resume(
        job.next_page_no, {n: WrittenPage(n, *r) for n, r in written.items()}, near_term_pages=near_term_pages
    )
    if session is None:
        progress.fail(f"connection {job.connection_id!r} no longer exists")
    pages_fetched = job.counts["pages_fetched"]
    last_progress = asyncio.get_running_loop().time()
    log_event(
        _log, "job started", source=job.external_source, page_no=job.next_page_no, first_import=job.first_import
    )

    while not progress.finished:
        METRICS.pages_in_flight.set(job.job_id, progress.in_flight)
        while not inbox.empty():
            progress.result_received(outcome_of(inbox.get_nowait()))
            last_progress = asyncio.get_running_loop().time()
        progress.check_deadline(ctx.clock())
        if cancel_requested.is_set():
            progress.cancel()
        if ctx.draining.is_set() and not progress.stopped:
            await _release_after_drain(job, ctx, progress, inbox)
            return
        if session is not None and progress.may_send():
            with _page_span(job, progress.next_page_no) as page_span:
                retries_before = session.retries
                try:
                    page = await session.next_page()
                except PermanentError as exc:
                    mark_error(page_span, exc)
                    progress.fail(str(exc))
                    continue
                except RetriableError as exc:
                    mark_error(page_span, exc)
                    progress.fail(f"provider unavailable after retries: {exc}")
                    continue
                finally:
                    _count_retries(job.external_source, session.retries - retries_before, page_span)
                if cancel_requested.is_set():
                    # Asked to cancel while the page was being fetched: it is not sent (nor its
                    # resume point stored), so a cancel stops the pages within one fetch.
                    page_span.set_attribute("apptsync.discarded_by_cancel", True)
                    progress.cancel()
                    continue
                if page is None:
                    page_span.set_attribute("apptsync.provider_exhausted", True)
                    progress.provider_exhausted()
                    continue
                message = build_page(
                    job_id=job.job_id,
                    tenant_id=job.tenant_id,
                    external_source=job.external_source,
                    connection_id=job.connection_id,
                    page_no=progress.next_page_no,
                    fetched_at=ctx.clock(),
                    records_fetched=page.records_fetched,
                    appointments=page.appointments,
                    skipped_out_of_window=page.skipped_out_of_window,
                    skipped_invalid=page.skipped_invalid,
                    contacts=page.contacts,
                    default_phone_region=phone_region,
                )
                async with kafka_errors():
                    await ctx.producer.send_and_wait(
                        pages_topic(ctx.kafka), message.SerializeToString(), key=job.job_id.encode()
                    )
                page_no = progress.next_page_no
                progress.page_sent(near_term=page.near_term)
                pages_fetched += 1
                page_sent(job.external_source, page_no, page, page_span)
                async with ctx.pool.acquire() as conn:
                    await jobs_db.save_progress(
                        conn,
                        job_id=job.job_id,
                        lease_owner=_lease_owner(job),
                        cursor=session.cursor(),
                        next_page_no=progress.next_page_no,
                        pages_fetched=pages_fetched,
                        now=ctx.clock(),
                    )
                last_progress = asyncio.get_running_loop().time()
                continue
        # Backpressure or a decided stop: wait for results of pages in flight.
        if progress.in_flight == 0:
            continue
        try:
            result = await asyncio.wait_for(inbox.get(), timeout=_RESULT_FALLBACK_SECONDS)
            progress.result_received(outcome_of(result))
            last_progress = asyncio.get_running_loop().time()
        except TimeoutError:
            if await _recover_results(job.job_id, ctx, progress):
                last_progress = asyncio.get_running_loop().time()
            elif asyncio.get_running_loop().time() - last_progress > ctx.settings.result_timeout_seconds:
                missing = sorted(progress.outstanding_pages)
                progress.fail(f"no result for pages {missing[:5]} within {ctx.settings.result_timeout_seconds:.0f} s")
                async with ctx.pool.acquire() as conn:
                    await _finish(job, ctx, progress, conn)
                return

    async with ctx.pool.acquire() as conn:
        await _finish(job, ctx, progress, conn)


async def _recover_results(job_id: str, ctx: FetcherContext, progress: JobProgress) -> bool:
    """Feeds results the writer stored but Kafka did not bring us; True if a page was settled by
    them (only that counts as progress: the result timeout must still fire for pages that stay out)."""
    outstanding = sorted(progress.outstanding_pages)
    if not outstanding:
        return False
    async with ctx.pool.acquire() as conn:
        stored = await jobs_db.page_results(conn, job_id, page_nos=outstanding)
    for page_no, counts in stored.items():
        progress.result_received(WrittenPage(page_no, *counts))
    return progress.in_flight < len(outstanding)


async def _finish(job: jobs_db.JobRecord, ctx: FetcherContext, progress: JobProgress, conn: DbConnection) -> None:
    """Stores the terminal state (after marking the rows a complete walk did not see as deleted, in
    the same transaction), then announces it on the job-events topic.

    The event follows the commit: a crash in between loses the event, never the job's state (the
    job row is the record; the event is a notification for downstream consumers)."""
    outcome = progress.outcome or Outcome.FAILED
    async with conn.transaction():
        if reconciles(Source(job.external_source), progress, kind=job.kind):
            deleted = await jobs_db.reconcile_deletions(
                conn, job_id=job.job_id, lease_owner=_lease_owner(job), now=ctx.clock()
            )
            log_event(_log, "window reconciled", deleted=deleted)
        finished = await jobs_db.finish_job(
            conn,
            job_id=job.job_id,
            lease_owner=_lease_owner(job),
            state=outcome.value,
            stop_reason=progress.stop_reason,
            error=progress.error,
            now=ctx.clock(),
        )
        if job.kind == TARGETED_KIND:
            # The connection's next targeted job (queued meanwhile) waited for this one: wake every
            # fetcher at commit, not only this process (whose freed slot claims again anyway).
            await conn.execute("SELECT pg_notify($1, $2)", jobs_db.JOBS_QUEUED_CHANNEL, job.job_id)
    _job_finished(finished)
    async with kafka_errors():
        await ctx.events_producer.send_and_wait(
            job_events_topic(ctx.kafka), encode_job_finished(finished), key=job.job_id.encode()
        )


async def _release_after_drain(
    job: jobs_db.JobRecord, ctx: FetcherContext, progress: JobProgress, inbox: asyncio.Queue[PageResult]
) -> None:
    """SIGTERM: no new page; give pages in flight a short while, then hand the job to another fetcher."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + 10.0
    while progress.in_flight and loop.time() < give_up_at:
        try:
            progress.result_received(outcome_of(await asyncio.wait_for(inbox.get(), timeout=1.0)))
        except TimeoutError:
            await _recover_results(job.job_id, ctx, progress)
    async with ctx.pool.acquire() as conn:
        await jobs_db.release_lease(conn, job_id=job.job_id, lease_owner=_lease_owner(job), now=ctx.clock())
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


def _count_retries(source: str, retries: int, span: trace.Span) -> None:
    if retries > 0:
        METRICS.provider_retries.labels(source).inc(retries)
        span.set_attribute("apptsync.provider_retries", retries)


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


def _lease_owner(job: jobs_db.JobRecord) -> str:
    """The token of our claim: every lease-guarded write names it, so a run whose lease was taken over
    (even by a later claim in this same process) can no longer change the job."""
    if job.lease_owner is None:
        raise ValueError(f"job {job.job_id} was not claimed")
    return job.lease_owner


async def _renew_lease(job_id: str, lease_owner: str, ctx: FetcherContext, watch: CancelWatch) -> None:
    """Renews the lease every third of its length, or at once when `watch.recheck` is set (missed
    notifications); sets `watch.requested` when the row says cancellation was requested (the
    fallback of the cancel notification). Raises LeaseLostError if the lease was taken over."""
    interval_seconds = ctx.settings.lease_seconds / 3
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watch.recheck.wait(), timeout=interval_seconds)
        watch.recheck.clear()
        try:
            async with acquired(ctx.pool) as conn:
                if await jobs_db.renew_lease(
                    conn,
                    job_id=job_id,
                    lease_owner=lease_owner,
                    lease_seconds=ctx.settings.lease_seconds,
                    now=ctx.clock(),
                ):
                    watch.requested.set()
        except jobs_db.LeaseLostError:
            raise
        except ApptsyncError as exc:
            # A missed renewal is not fatal while the lease still runs; the next one may succeed.
            _log.warning("lease renewal of job %s failed: %s", job_id, exc)


def new_worker_id(hostname: str, pid: int) -> str:
    return f"{hostname}-{pid}-{uuid.uuid4().hex[:6]}"
