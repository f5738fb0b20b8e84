"""The fetcher process: claims jobs and runs them in one task group, `max_concurrent_jobs` doing work
at once and up to `max_open_jobs` open (a job waiting out a provider's rate window lends its working
slot to another; see apptsync.fetcher.slots).

Woken by LISTEN/NOTIFY when the gateway queues a job, with a polling fallback (a notification can be
missed while the listening connection reconnects, and expired leases produce no notification).
On stop (SIGTERM): stop claiming, let each job drain its pages in flight, release its lease, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import httpx

from apptsync.fetcher.providers import ProviderHttp, ProviderTransport, RateBudget
from apptsync.fetcher.results import ResultRouter
from apptsync.fetcher.runner import JOB_SOURCE, FetcherContext, run_job
from apptsync.fetcher.shared_budget import PostgresSharedBudget, shared_sources
from apptsync.fetcher.slots import JobSlots
from apptsync.shared.appointments import Source
from apptsync.shared.credentials import Keyring
from apptsync.shared.db import jobs as jobs_db
from apptsync.shared.db.listen import NotificationListener
from apptsync.shared.db.pool import acquired
from apptsync.shared.errors import StorageRefusedError, StorageUnavailableError
from apptsync.shared.lifecycle import DEFAULT_RESOURCES, ServiceResources
from apptsync.shared.messages.page_results import page_results_topic
from apptsync.shared.outbound import OutboundPolicy
from apptsync.shared.settings import DatabaseSettings, FetcherSettings, KafkaSettings
from apptsync.shared.telemetry.http_metrics import MeteredTransport
from apptsync.shared.telemetry.tracing import untraced

_log = logging.getLogger("apptsync.fetcher")


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def run_fetcher(
    database: DatabaseSettings,
    kafka: KafkaSettings,
    settings: FetcherSettings,
    keyring: Keyring,
    *,
    outbound: OutboundPolicy,
    worker_id: str,
    stop: asyncio.Event,
    clock: Callable[[], datetime] = _utc_now,
    http_transport: httpx.AsyncBaseTransport | None = None,
    rate_budget_overrides: Mapping[Source, RateBudget] | None = None,
    resources: ServiceResources = DEFAULT_RESOURCES,
) -> None:
    """Runs until `stop` is set, then drains and returns. Every provider request passes `outbound`
    (the deployment's policy; see apptsync.shared.outbound). `rate_budget_overrides` replaces
    providers' published request budgets (benchmarks and tests against the simulator; production
    passes none). Raises StorageUnavailableError or BrokerUnavailableError when PostgreSQL or Kafka
    cannot be reached at start-up; whatever was opened by then is closed first (see
    apptsync.shared.lifecycle; `resources` says how each part is opened)."""
    async with contextlib.AsyncExitStack() as stack:
        health = await stack.enter_async_context(resources.health(settings.health_address))
        pool = await stack.enter_async_context(resources.pool(database, "apptsync-fetcher"))
        await resources.topics(kafka)
        producer = await stack.enter_async_context(resources.producer(kafka, f"apptsync-fetcher-{worker_id}"))
        events_producer = await stack.enter_async_context(
            resources.downstream_producer(kafka, f"apptsync-fetcher-events-{worker_id}")
        )
        router = ResultRouter(
            resources.consumer(kafka, group_id=None, client_id=f"apptsync-fetcher-results-{worker_id}"),
            page_results_topic(kafka),
        )
        stack.push_async_callback(router.stop)
        await router.start()
        # Every provider request (each retry too) is metered by the job's source; see runner.JOB_SOURCE.
        metered = MeteredTransport(http_transport or ProviderTransport(), provider_of=lambda _request: JOB_SOURCE.get())
        sources = shared_sources(settings.shared_budget_providers)
        shared_budget = PostgresSharedBudget(
            pool,
            sources=sources,
            budget_key=settings.shared_budget_key,
            holder=worker_id,
            http_timeout_seconds=settings.http_timeout_seconds,
        )
        # Ends the leases of the last finished requests, which wait to ride on a next acquire: after the
        # jobs have drained (the stack unwinds after the task group) and before the pool closes (entered
        # earlier, so closed later).
        stack.push_async_callback(shared_budget.close)
        # A job waiting for a provider (its rate window and budgets, its answer, a Retry-After or backoff
        # of a second or more) lends its working slot to another job meanwhile.
        slot_freed, job_finished = asyncio.Event(), asyncio.Event()
        slots = JobSlots(
            working_slots=settings.max_concurrent_jobs,
            max_open_jobs=max(settings.max_open_jobs, settings.max_concurrent_jobs),
            on_slot_freed=slot_freed.set,
            on_job_finished=job_finished.set,
        )
        http = ProviderHttp(
            sleep=slots.sleep,
            provider_wait=slots.waiting_for_provider,
            timeout_seconds=settings.http_timeout_seconds,
            outbound=outbound,
            transport=metered,
            rate_budget_overrides=rate_budget_overrides,
            shared_budget=shared_budget if sources else None,
        )
        stack.push_async_callback(http.aclose)
        ctx = FetcherContext(
            pool=pool,
            producer=producer,
            events_producer=events_producer,
            results=router,
            http=http,
            keyring=keyring,
            kafka=kafka,
            settings=settings,
            worker_id=worker_id,
            clock=clock,
        )
        wake = asyncio.Event()
        # A re-subscription wakes the claim loop too: a job queued while PostgreSQL was away sent no
        # notification we could hear.
        listener = NotificationListener(
            pool, jobs_db.JOBS_QUEUED_CHANNEL, on_notification=lambda _payload: wake.set(), on_resubscribed=wake.set
        )
        stack.push_async_callback(listener.stop)
        await listener.start()
        # CancelJob's notification reaches the run of the job in this process at once; after a
        # re-subscription (notifications missed meanwhile) every run re-reads its job row.
        cancel_listener = NotificationListener(
            pool,
            jobs_db.JOB_CANCEL_CHANNEL,
            on_notification=_hear_cancel(ctx),
            on_resubscribed=ctx.cancellations.recheck_all,
        )
        stack.push_async_callback(cancel_listener.stop)
        await cancel_listener.start()

        if health is not None:
            await health.set_serving(True)
        async with asyncio.TaskGroup() as group:
            routing = group.create_task(router.run())
            running = await _claim_loop(ctx, group, wake, stop, slots, slot_freed, job_finished)
            # Stop intake (no claims since `stop`), then drain: each job finishes its pages in flight.
            if health is not None:
                await health.set_serving(False)
            ctx.draining.set()
            if running:
                await asyncio.wait(running)
            routing.cancel()


def _hear_cancel(ctx: FetcherContext) -> Callable[[str], None]:
    def heard(job_id: str) -> None:
        if ctx.cancellations.notified(job_id):
            _log.info("job %s: cancellation requested; no page is sent from now on", job_id)

    return heard


async def _claim_loop(
    ctx: FetcherContext,
    group: asyncio.TaskGroup,
    wake: asyncio.Event,
    stop: asyncio.Event,
    slots: JobSlots,
    slot_freed: asyncio.Event,
    job_finished: asyncio.Event,
) -> set[asyncio.Task[None]]:
    """Claims jobs while `slots` allows (a working slot free, no waiting job queued for one, fewer than
    `max_open_jobs` open) until `stop` is set; returns the jobs still running. `slots` sets `slot_freed`
    whenever a slot may have come free and `job_finished` when a job ended.

    After a claim that found nothing with a slot free, only a notification (`wake`), a job's end or the
    poll interval lead to the next claim: a slot lent out while its job waits for a provider (every
    Acuity request waits for the shared budget) cannot make a job claimable that the query just did not
    find, and claiming on each of them cost one query per provider request."""
    running: set[asyncio.Task[None]] = set()
    # Each claim gets its own lease owner token, so two claims of one job in this process stay apart.
    claims = itertools.count(1)
    # Providers whose requests share one budget (per egress IP): their open jobs are capped.
    shared_budget_sources = [source.value for source in shared_sources(ctx.settings.shared_budget_providers)]
    while not stop.is_set():
        job = None
        # Cleared before claiming, not after: a notification that arrives while we query must wake
        # the wait below instead of being lost until the next poll.
        wake.clear()
        slot_freed.clear()
        job_finished.clear()
        # True when no slot was free: then a slot lent out is worth a claim.
        blocked = not slots.may_claim()
        if not blocked:
            try:
                # Idle polling: a trace per poll would bury the traces of imports.
                with untraced():
                    async with acquired(ctx.pool) as conn:
                        job = await jobs_db.claim_job(
                            conn,
                            lease_owner=f"{ctx.worker_id}#{next(claims)}",
                            lease_seconds=ctx.settings.lease_seconds,
                            now=ctx.clock(),
                            max_running_per_tenant=ctx.settings.max_running_jobs_per_tenant,
                            skip_sources=slots.book.saturated_sources(shared_budget_sources),
                        )
            except (StorageUnavailableError, StorageRefusedError) as exc:
                # Retried whatever the database said (a restart drops connections mid-operation), or one
                # restart would end the process and leave its interrupted jobs with nobody to resume them.
                _log.warning("claiming failed (%s); retrying", exc)
        if job is not None:
            key = _slot_key(job)
            slots.claimed(key, job.external_source)
            task = group.create_task(_in_slot(job, key, ctx, slots))
            running.add(task)
            task.add_done_callback(running.discard)
            continue
        wakers = (wake, stop, job_finished, slot_freed) if blocked else (wake, stop, job_finished)
        waiters = [asyncio.ensure_future(e.wait()) for e in wakers]
        try:
            await asyncio.wait(waiters, timeout=ctx.settings.poll_interval_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
    return running


def _slot_key(job: jobs_db.JobRecord) -> str:
    # The claim's lease owner token: two claims of one job in this process stay apart.
    return job.lease_owner or job.job_id


async def _in_slot(job: jobs_db.JobRecord, key: str, ctx: FetcherContext, slots: JobSlots) -> None:
    """Runs the claimed job holding a working slot (lent out while it waits; see JobSlots)."""
    async with slots.running(key):
        await _guarded(job, ctx)


async def _guarded(job: jobs_db.JobRecord, ctx: FetcherContext) -> None:
    """One job's failure must not stop the process: the job's lease expires and it is resumed.
    Cancellation, KeyboardInterrupt and SystemExit pass through."""
    try:
        await run_job(job, ctx)
    except Exception:
        _log.exception("job %s interrupted; it resumes when its lease expires", job.job_id)
