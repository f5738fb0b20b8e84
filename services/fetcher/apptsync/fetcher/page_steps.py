"""The steps of one job's page loop (`apptsync.fetcher.runner`), each with only what it needs.

- `open_job` (ProviderAccess): the connection's provider session, the phone region, the pages the
  writer already wrote (a resumed job);
- `fetch_next_page`: the provider's next page, or what the job learns instead (the provider failed
  or is exhausted, cancellation was asked meanwhile);
- `PageSender.send`, then `PageSender.advance_resume_point`: the page to Kafka (acknowledged), then
  the cursor after it to PostgreSQL; in that order, so a crash re-fetches at most one page;
- `ResultWait`: the writer's results to the job's `JobProgress`, from Kafka or from the job's ledger,
  and whether results stopped coming.

The decisions (may another page go, has the job stopped) stay in `apptsync.fetcher.progress`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict

import asyncpg
from aiokafka import AIOKafkaProducer
from opentelemetry import trace

from apptsync.fetcher.connection_state import PostgresConnectionStateStore
from apptsync.fetcher.progress import JobProgress, StopPolicy, WrittenPage
from apptsync.fetcher.providers import (
    ConnectionConfig,
    ConnectionStateStore,
    JobWindow,
    ProviderHttp,
    ProviderPage,
    ProviderSession,
    near_term_window,
    open_session,
    open_targeted_session,
)
from apptsync.fetcher.reconciliation import TARGETED_KIND
from apptsync.shared.appointments import Source
from apptsync.shared.credentials import Keyring
from apptsync.shared.db import connections as connections_db
from apptsync.shared.db import jobs as jobs_db
from apptsync.shared.errors import PermanentError, RetriableError
from apptsync.shared.kafka import kafka_errors
from apptsync.shared.messages.appointment_pages import build_page, pages_topic
from apptsync.shared.messages.page_results import PageResult
from apptsync.shared.settings import KafkaSettings
from apptsync.shared.telemetry.logs import register_secrets
from apptsync.shared.telemetry.metrics import METRICS
from apptsync.shared.telemetry.propagation import mark_error

Clock = Callable[[], datetime]
# How often a job waiting for results also looks in import_job_pages (results it cannot get from
# Kafka: pages sent by a fetcher that died before their results arrived).
RESULT_FALLBACK_SECONDS = 2.0
# How long a draining job waits for the results of its pages in flight before it lets go of them.
DRAIN_SECONDS = 10.0


def lease_owner(job: jobs_db.JobRecord) -> str:
    """The token of our claim: every lease-guarded write names it, so a run whose lease was taken over
    (even by a later claim in this same process) can no longer change the job."""
    if job.lease_owner is None:
        raise ValueError(f"job {job.job_id} was not claimed")
    return job.lease_owner


def outcome_of(result: PageResult) -> WrittenPage:
    counts = result.counts
    return WrittenPage(counts.page_no, counts.records_fetched, counts.inserted, counts.updated,
                       unreadable=result.unreadable)  # fmt: skip


# --------------------------------------------------------------------------- open the job


@dataclass(frozen=True, slots=True)
class ProviderAccess:
    """What opening a job's provider session needs: the connection row and the job's ledger
    (`pool`), the keyring that decrypts the credentials, the HTTP client, the clock, and how many
    days ahead a job walks first (`freshness_horizon_days`)."""

    pool: asyncpg.Pool
    keyring: Keyring
    http: ProviderHttp
    clock: Clock
    freshness_horizon_days: int


@dataclass(frozen=True, slots=True)
class OpenedJob:
    """A claimed job ready to page: its provider `session` (None when its connection no longer
    exists), the region a phone without a country code is read in (empty: the writer's default),
    and the pages the writer already wrote (a resumed job)."""

    session: ProviderSession | None
    phone_region: str
    written: dict[int, WrittenPage]


class _SessionArguments(TypedDict):
    """What every provider session is opened with (`open_session`, `open_targeted_session`)."""

    http: ProviderHttp
    connection: ConnectionConfig
    window: JobWindow
    page_size: int
    cursor: Any
    clock: Clock
    state: ConnectionStateStore


async def open_job(job: jobs_db.JobRecord, access: ProviderAccess) -> OpenedJob:
    """Reads the job's written pages and its connection, and opens the provider session: a targeted
    job (queued by provider notifications) fetches only the named records, any other walks the window."""
    async with access.pool.acquire() as conn:
        written = await jobs_db.page_results(conn, job.job_id)
        loaded = await connections_db.load_connection_secrets(
            conn, keyring=access.keyring, tenant_id=job.tenant_id, connection_id=job.connection_id
        )
    written_pages = {n: WrittenPage(n, *r) for n, r in written.items()}
    if loaded is None:
        return OpenedJob(None, "", written_pages)
    record, secrets = loaded
    register_secrets(*secrets.values())  # redacted by value from every log line of this process
    phone_region = record.settings.get("phone_region", "").strip().upper()
    window = JobWindow(job.window_start, job.window_end)
    config = ConnectionConfig(
        base_url=record.base_url,
        credentials=secrets,
        settings=record.settings,
        scope_key=f"{job.tenant_id}/{job.connection_id}",
    )
    state = PostgresConnectionStateStore(
        pool=access.pool,
        keyring=access.keyring,
        tenant_id=job.tenant_id,
        connection_id=job.connection_id,
        clock=access.clock,
        refresh_owner=lease_owner(job),
    )
    common = _SessionArguments(
        http=access.http, connection=config, window=window, page_size=job.options.page_size, cursor=job.cursor,
        clock=access.clock, state=state,
    )
    session: ProviderSession
    if job.kind == TARGETED_KIND:
        session = open_targeted_session(Source(job.external_source), targets=job.targets, **common)
    else:
        session = open_session(
            Source(job.external_source),
            # Every job walks the coming days first (a resumed one keeps its cursor's order); only
            # an early-stopping job depends on it, the order never changes what a full walk covers.
            near_term=near_term_window(
                now=access.clock(), horizon=timedelta(days=access.freshness_horizon_days), window=window
            ),
            # The client list (people with or without an appointment in the window) changes slowly:
            # the jobs that walk everything carry it, frequent early-stopping syncs do not.
            clients=job.first_import or StopPolicy(job.options.stop_policy) is StopPolicy.NEVER,
            **common,
        )
    return OpenedJob(session, phone_region, written_pages)


# --------------------------------------------------------------------------- fetch the next page


async def fetch_next_page(
    session: ProviderSession, progress: JobProgress, cancel_requested: asyncio.Event, span: trace.Span, source: str
) -> ProviderPage | None:
    """The provider's next page to send, or None after telling `progress` why there is none: the
    provider failed (permanently, or still after its retries), it is exhausted, or cancellation was
    asked while the page was being fetched (then the page is dropped, so a cancel stops the pages
    within one fetch). Counts the provider retries the fetch needed."""
    retries_before = session.retries
    try:
        page = await session.next_page()
    except PermanentError as exc:
        mark_error(span, exc)
        progress.fail(str(exc))
        return None
    except RetriableError as exc:
        mark_error(span, exc)
        progress.fail(f"provider unavailable after retries: {exc}")
        return None
    finally:
        _count_retries(source, session.retries - retries_before, span)
    if cancel_requested.is_set():
        span.set_attribute("apptsync.discarded_by_cancel", True)
        progress.cancel()
        return None
    if page is None:
        span.set_attribute("apptsync.provider_exhausted", True)
        progress.provider_exhausted()
        return None
    return page


def _count_retries(source: str, retries: int, span: trace.Span) -> None:
    if retries > 0:
        METRICS.provider_retries.labels(source).inc(retries)
        span.set_attribute("apptsync.provider_retries", retries)


# --------------------------------------------------------------------------- send, resume point


@dataclass(slots=True)
class PageSender:
    """Sends one job's pages: each as an AppointmentPage to the pages topic (acknowledged), then its
    resume point to the job row; `pages_fetched` counts the pages sent (the job row's counter)."""

    job: jobs_db.JobRecord
    producer: AIOKafkaProducer
    kafka: KafkaSettings
    pool: asyncpg.Pool
    clock: Clock
    phone_region: str
    pages_fetched: int

    async def send(self, page: ProviderPage, page_no: int) -> None:
        """Hands `page` to Kafka as page `page_no` of the job; returns once the broker acknowledged it.
        Raises BrokerUnavailableError / PermanentError (apptsync.shared.kafka)."""
        job = self.job
        message = build_page(
            job_id=job.job_id,
            tenant_id=job.tenant_id,
            external_source=job.external_source,
            connection_id=job.connection_id,
            page_no=page_no,
            fetched_at=self.clock(),
            records_fetched=page.records_fetched,
            appointments=page.appointments,
            skipped_out_of_window=page.skipped_out_of_window,
            skipped_invalid=page.skipped_invalid,
            contacts=page.contacts,
            default_phone_region=self.phone_region,
        )
        async with kafka_errors():
            await self.producer.send_and_wait(
                pages_topic(self.kafka), message.SerializeToString(), key=job.job_id.encode()
            )
        self.pages_fetched += 1

    async def advance_resume_point(self, cursor: Any, next_page_no: int) -> None:
        """Stores where the job resumes (the session's cursor after the pages sent, the next page
        number) under our lease. Raises LeaseLostError if another fetcher took the job over."""
        async with self.pool.acquire() as conn:
            await jobs_db.save_progress(
                conn,
                job_id=self.job.job_id,
                lease_owner=lease_owner(self.job),
                cursor=cursor,
                next_page_no=next_page_no,
                pages_fetched=self.pages_fetched,
                now=self.clock(),
            )


# --------------------------------------------------------------------------- await the results


@dataclass(slots=True)
class ResultWait:
    """Brings the writer's results of one job's pages to its progress: from the `inbox` the
    ResultRouter fills from Kafka, or from the job's ledger (`pool`) when Kafka did not bring them
    (pages sent by a fetcher that died). Tells when no result came for `timeout_seconds`."""

    job_id: str
    inbox: asyncio.Queue[PageResult]
    pool: asyncpg.Pool
    timeout_seconds: float
    # Loop time of the last progress (a result, or a page sent): the result timeout counts from it.
    last_progress: float

    def progressed(self) -> None:
        self.last_progress = asyncio.get_running_loop().time()

    def take_ready(self, progress: JobProgress) -> None:
        """Settles the results already in the inbox, without waiting."""
        while not self.inbox.empty():
            progress.result_received(outcome_of(self.inbox.get_nowait()))
            self.progressed()

    async def await_next(self, progress: JobProgress) -> bool:
        """Waits a while for a result, then looks in the ledger; False when no result has come for
        `timeout_seconds` (the job cannot finish: the caller fails it)."""
        try:
            result = await asyncio.wait_for(self.inbox.get(), timeout=RESULT_FALLBACK_SECONDS)
        except TimeoutError:
            if await self.recover(progress):
                self.progressed()
                return True
            return asyncio.get_running_loop().time() - self.last_progress <= self.timeout_seconds
        progress.result_received(outcome_of(result))
        self.progressed()
        return True

    def timed_out_error(self, progress: JobProgress) -> str:
        missing = sorted(progress.outstanding_pages)
        return f"no result for pages {missing[:5]} within {self.timeout_seconds:.0f} s"

    async def recover(self, progress: JobProgress) -> bool:
        """Feeds results the writer stored but Kafka did not bring us; True if a page was settled by
        them (only that counts as progress: the result timeout must still fire for pages that stay out)."""
        outstanding = sorted(progress.outstanding_pages)
        if not outstanding:
            return False
        async with self.pool.acquire() as conn:
            stored = await jobs_db.page_results(conn, self.job_id, page_nos=outstanding)
        for page_no, counts in stored.items():
            progress.result_received(WrittenPage(page_no, *counts))
        return progress.in_flight < len(outstanding)

    async def drain(self, progress: JobProgress, *, give_up_seconds: float = DRAIN_SECONDS) -> None:
        """Settles results of the pages in flight for at most `give_up_seconds` (a draining process)."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + give_up_seconds
        while progress.in_flight and loop.time() < give_up_at:
            try:
                progress.result_received(outcome_of(await asyncio.wait_for(self.inbox.get(), timeout=1.0)))
            except TimeoutError:
                await self.recover(progress)
