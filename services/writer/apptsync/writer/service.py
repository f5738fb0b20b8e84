"""The writer process: consume pages, store them, report each page's result, then commit offsets.

Order of effects for every consumed batch (docs/design.md invariants 1 and 3):
PostgreSQL commit -> PageResults (and dead letters) acknowledged by the broker -> Kafka offsets
committed. A crash between any two steps redelivers the messages; the page ledger then replays the
stored results instead of counting twice.

PostgreSQL or the broker unreachable: nothing goes to the dead-letter topic; the partition seeks back
to the first unfinished message and the batch is retried with backoff, the consumer staying in its
group. A message that is not a valid page is copied to the dead-letter topic with headers saying why,
and the writer moves on. A record PostgreSQL refuses is copied there alone (as a one-record page)
while the rest of its page lands, counted as `skipped.dead_letter`. A page PostgreSQL refuses as a
whole (e.g. its job does not exist) is copied there and still gets a PageResult counting all its
records as dead letters (recorded in the job's counters when the job exists), so its fetcher never
waits for a result that cannot come.

Beside the page writer runs the change relay (apptsync.writer.change_relay): the change events the
page writer's transactions left in the outbox go to the change-events topic after the commit that
made them, woken by each commit (docs/design.md invariant 11).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition
from opentelemetry import trace

from apptsync.shared.change_events import change_events_topic
from apptsync.shared.errors import BrokerUnavailableError, PoisonMessageError, RetriableError
from apptsync.shared.health import HealthEndpoint
from apptsync.shared.kafka import commit_offsets, ensure_topics, kafka_errors
from apptsync.shared.lifecycle import DEFAULT_RESOURCES, ServiceResources, cancel_and_wait
from apptsync.shared.messages.appointment_pages import pages_topic
from apptsync.shared.messages.page_results import page_results_topic
from apptsync.shared.settings import DatabaseSettings, KafkaSettings, WriterSettings
from apptsync.shared.telemetry.logs import log_event
from apptsync.shared.telemetry.metrics import METRICS, RECORD_OUTCOMES
from apptsync.shared.telemetry.propagation import ConsumerSpans, HeaderPairs, start_consumer_span
from apptsync.writer.accounting import DecodedPage, PageOutcome, refused_page_counts
from apptsync.writer.change_relay import ChangeRelay
from apptsync.writer.intake import (
    DeadLetter,
    DeliveredPage,
    InboundMessage,
    PageBatch,
    WorkUnit,
    dead_letter_headers,
    plan_work,
    record_page_value,
    retry_delay_seconds,
)
from apptsync.writer.store import PageStore

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("apptsync.writer")

CLIENT_ID = "apptsync-writer"
# How long one poll waits for messages: bounds how late a stop request is noticed.
POLL_TIMEOUT_MS = 500
# A poll returns at most this many batches' worth of messages (spread over partitions).
BATCHES_PER_POLL = 4


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """What became of one partition's share of a poll: the offset to commit (all effects done
    before it), and where to resume after a retriable failure."""

    partition: TopicPartition
    commit_offset: int | None
    retry_offset: int | None = None
    failure: RetriableError | None = None


def service_version() -> str:
    """The installed apptsync version (for dead-letter headers)."""
    try:
        return importlib.metadata.version("apptsync")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class PageWriting(Protocol):
    """Stores consecutive pages of one tenant in one transaction (see `store.write_pages`), and
    records a page refused as a whole (see `store.record_refused_page`)."""

    async def write(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]: ...

    async def record_refused(self, page: DecodedPage) -> PageOutcome: ...


Report = PageOutcome | DeadLetter
# Called between a database commit and the offset commit (twice per unit: before and after its
# reports are produced). Production passes nothing; the crash tests inject their fault here
# (tests/hooked_services.py), so no fault code ships in the writer.
AfterCommitHook = Callable[[], None]


async def _nothing_to_recreate() -> None:
    return None


def _no_fault() -> None:
    return None


class PageWriter:
    """The consume-store-report-commit loop over started Kafka clients and a page store."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        store: PageWriting,
        kafka: KafkaSettings,
        writer: WriterSettings,
        version: str,
        rng: random.Random,
        retry_base_seconds: float = 0.2,
        retry_cap_seconds: float = 10.0,
        after_commit: AfterCommitHook = _no_fault,
        recreate_topics: Callable[[], Awaitable[None]] = _nothing_to_recreate,
        committed: Callable[[], None] = _no_fault,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._store = store
        self._kafka = kafka
        self._writer = writer
        self._version = version
        self._rng = rng
        self._retry_base_seconds = retry_base_seconds
        self._retry_cap_seconds = retry_cap_seconds
        self._consecutive_failures = 0
        self._after_commit = after_commit
        self._recreate_topics = recreate_topics
        self._committed = committed

    async def run(self, stop: asyncio.Event) -> None:
        """Processes polls until `stop` is set; the poll in hand is finished and committed first.

        Retriable failures are retried (with backoff) without committing; a PermanentError (a bug or
        a broken deployment, e.g. a missing table) is raised."""
        while not stop.is_set():
            fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
            try:
                async with kafka_errors():
                    fetched = await self._consumer.getmany(
                        timeout_ms=POLL_TIMEOUT_MS,
                        max_records=self._writer.max_batch_pages * BATCHES_PER_POLL,
                    )
                failures = await self._process_poll(fetched)
            except RetriableError as exc:
                failures = [exc]
            if failures:
                self._consecutive_failures += 1
                delay_seconds = retry_delay_seconds(
                    self._consecutive_failures, self._rng,
                    base_seconds=self._retry_base_seconds, cap_seconds=self._retry_cap_seconds,
                )
                log.warning("writer: %s; retrying in %.2f s (failure %d in a row)",
                            failures[0], delay_seconds, self._consecutive_failures)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay_seconds)
            elif fetched:
                self._consecutive_failures = 0

    async def _process_poll(
        self, fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> list[RetriableError]:
        if not fetched:
            return []
        # Partitions are independent: their batches run concurrently on separate connections.
        outcomes = await asyncio.gather(
            *(self._process_partition(partition, records) for partition, records in fetched.items()),
            return_exceptions=True,  # every partition finishes before a permanent failure is raised
        )
        progress = [outcome for outcome in outcomes if isinstance(outcome, PartitionProgress)]
        crashed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if crashed:
            raise crashed[0]
        # Rewind failed partitions first, so a failing commit cannot make us skip their messages.
        assigned = self._consumer.assignment()
        for p in progress:
            if p.retry_offset is not None and p.partition in assigned:
                self._consumer.seek(p.partition, p.retry_offset)
        offsets = {p.partition: p.commit_offset for p in progress if p.commit_offset is not None}
        # Bounded: a commit the broker keeps refusing must not stop the writer (see commit_offsets).
        try:
            committed = await commit_offsets(
                self._consumer, offsets, timeout_seconds=self._kafka.request_timeout_ms / 1000
            )
        except BrokerUnavailableError:
            # A broker that lost its topics (an in-memory broker restarted, a topic deleted by hand)
            # refuses commits on them until they exist again; nothing else would ever create them.
            await self._recreate_topics()
            raise
        if not committed:
            log.info("writer: group rebalanced before the commit; the new owner replays those pages")
        return [p.failure for p in progress if p.failure is not None]

    async def _process_partition(
        self, partition: TopicPartition, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> PartitionProgress:
        messages = [
            InboundMessage(r.topic, r.partition, r.offset, r.key, r.value) for r in records
        ]
        headers = {r.offset: r.headers for r in records}
        self._observe_lag(partition, records)
        commit_offset: int | None = None
        for unit in plan_work(messages, max_batch_pages=self._writer.max_batch_pages):
            try:
                await self._process_unit(unit, headers)
            except RetriableError as exc:
                return PartitionProgress(partition, commit_offset, unit.first_offset, exc)
            commit_offset = unit.last_offset + 1
        return PartitionProgress(partition, commit_offset)

    async def _process_unit(self, unit: WorkUnit, headers: dict[int, HeaderPairs | None] | None = None) -> None:
        spans = _consumer_spans(unit, headers or {})
        try:
            if isinstance(unit, DeadLetter):
                reports: list[Report] = [unit]
            else:
                with spans.shared_work("write pages", {"apptsync.pages": len(unit.pages)}):
                    started = time.perf_counter()
                    reports = await self._write_batch(unit)
                    elapsed_seconds = time.perf_counter() - started
                    for _ in unit.pages:  # each page waited for the whole transaction
                        METRICS.page_upsert_duration.observe(elapsed_seconds)
                self._committed()  # the change relay publishes the batch's change events
                self._after_commit()
            await self._send_reports(reports, spans)
            self._after_commit()
        except Exception as exc:
            spans.fail(exc)
            raise
        finally:
            spans.end()

    def _observe_lag(self, partition: TopicPartition, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Consumer lag: messages in the partition after the last one this poll fetched."""
        highwater = self._consumer.highwater(partition)
        if highwater is not None and records:
            lag = max(0, highwater - (records[-1].offset + 1))
            METRICS.consumer_lag.labels(partition.topic, str(partition.partition)).set(lag)

    async def _write_batch(self, batch: PageBatch) -> list[Report]:
        """Reports of the batch's pages in order: each page's outcome, preceded by dead letters of
        its refused records. A page PostgreSQL refuses as a whole becomes a dead letter and an
        outcome counting all its records as dead letters (the batch is then retried one page per
        transaction to find it)."""
        try:
            return self._with_refused_records(batch.pages, await self._store.write([d.page for d in batch.pages]))
        except PoisonMessageError as exc:
            if len(batch.pages) == 1:
                return await self._refuse_page(batch.pages[0], exc)
        reports: list[Report] = []
        for delivered in batch.pages:
            try:
                reports.extend(self._with_refused_records([delivered], await self._store.write([delivered.page])))
            except PoisonMessageError as exc:
                reports.extend(await self._refuse_page(delivered, exc))
        return reports

    @staticmethod
    def _with_refused_records(
        delivered_pages: Sequence[DeliveredPage], outcomes: Sequence[PageOutcome]
    ) -> list[Report]:
        reports: list[Report] = []
        for delivered, outcome in zip(delivered_pages, outcomes, strict=True):
            message, page = delivered.message, delivered.page
            for refused in outcome.refused:
                log.warning("writer: dead-lettering record %r of page %s/%s: %s",
                            refused.external_id, page.job_id, page.page_no, refused.error)
                reports.append(DeadLetter(
                    InboundMessage(message.topic, message.partition, message.offset, message.key,
                                   record_page_value(message.value, refused.external_id)),
                    f"record refused by PostgreSQL: {refused.error}",
                    job_id=page.job_id, page_no=page.page_no, external_id=refused.external_id,
                ))
            reports.append(outcome)
        return reports

    async def _refuse_page(self, delivered: DeliveredPage, exc: PoisonMessageError) -> list[Report]:
        message, page = delivered.message, delivered.page
        log.warning("writer: dead-lettering page %s/%s (offset %d): %s",
                    page.job_id, page.page_no, message.offset, exc)
        letter = DeadLetter(message, f"refused by PostgreSQL: {exc}", job_id=page.job_id, page_no=page.page_no)
        try:
            outcome = await self._store.record_refused(page)
        except PoisonMessageError as unrecordable:
            # Not even the ledger takes it (e.g. no such job): the result still tells its fetcher.
            log.warning("writer: page %s/%s cannot be recorded either: %s", page.job_id, page.page_no, unrecordable)
            outcome = PageOutcome(refused_page_counts(page), redelivered=False)
        return [letter, outcome]

    async def _send_reports(self, reports: Sequence[Report], spans: ConsumerSpans | None = None) -> None:
        """Produces every PageResult and dead letter, in order, and waits for all acknowledgements.

        Each is produced under its page's consumer span, so the result continues that page's trace."""
        async with kafka_errors():
            acknowledgements = []
            for report in reports:
                with _report_span(spans, report):
                    if isinstance(report, DeadLetter):
                        acknowledgements.append(await self._producer.send(
                            self._kafka.dead_letter_topic,
                            value=report.message.value,
                            key=report.message.key,
                            headers=dead_letter_headers(report, service_version=self._version),
                        ))
                    else:
                        acknowledgements.append(await self._producer.send(
                            page_results_topic(self._kafka),
                            value=report.encode(),
                            key=report.counts.job_id.encode("utf-8"),
                        ))
            await asyncio.gather(*acknowledgements)


def _consumer_spans(unit: WorkUnit, headers: dict[int, HeaderPairs | None]) -> ConsumerSpans:
    """One consumer span per message of `unit`, each continuing the trace of the page it carries."""
    if isinstance(unit, DeadLetter):
        delivered: list[tuple[object, InboundMessage, dict[str, str | int]]] = [
            ((unit.job_id, unit.page_no), unit.message, {})
        ]
    else:
        delivered = [
            (
                (d.page.job_id, d.page.page_no),
                d.message,
                {"apptsync.job_id": d.page.job_id, "apptsync.tenant_id": d.page.tenant_id,
                 "apptsync.page_no": d.page.page_no, "apptsync.records_fetched": d.page.records_fetched},
            )
            for d in unit.pages
        ]
    return ConsumerSpans(_tracer, [
        (key, start_consumer_span(_tracer, topic=m.topic, headers=headers.get(m.offset), partition=m.partition,
                                  offset=m.offset, attributes=dict(attributes)))
        for key, m, attributes in delivered
    ])


@contextlib.contextmanager
def _report_span(spans: ConsumerSpans | None, report: Report) -> Iterator[None]:
    """Makes the report's page span current while it is produced; counts it and logs its event."""
    if isinstance(report, DeadLetter):
        key: object = (report.job_id, report.page_no)
    else:
        key = (report.counts.job_id, report.counts.page_no)
    if spans is None:
        yield
        return
    with spans.use(key) as span:
        if isinstance(report, DeadLetter):
            METRICS.dead_letters.labels("record" if report.external_id else "page").inc()
            span.set_attribute("apptsync.dead_lettered", True)
        else:
            _page_written(report, span)
        yield


# One warning per refused record up to this many per page, then one line with the number.
_STALE_RECORDS_LOGGED_PER_PAGE = 20


def _page_written(outcome: PageOutcome, span: trace.Span) -> None:
    counts = outcome.counts
    skipped = counts.skipped
    by_outcome = {
        "inserted": counts.inserted,
        "updated": counts.updated,
        "unchanged": counts.unchanged,
        "stale": counts.stale,
        "skipped_out_of_window": skipped.out_of_window,
        "skipped_invalid": skipped.invalid,
        "skipped_dead_letter": skipped.dead_letter,
        "skipped_duplicate_in_page": skipped.duplicate_in_page,
        "skipped_unknown_deletion": skipped.unknown_deletion,
    }
    # Newer wins: a refused older copy is visible, with the key and both times, never silent.
    for record in outcome.stale[:_STALE_RECORDS_LOGGED_PER_PAGE]:
        log_event(log, "stale record refused", level=logging.WARNING, job_id=counts.job_id, page_no=counts.page_no,
                  external_id=record.external_id, stored_observed_at=record.stored_observed_at.isoformat(),
                  offered_observed_at=record.offered_observed_at.isoformat())
    if len(outcome.stale) > _STALE_RECORDS_LOGGED_PER_PAGE:
        log_event(log, "stale records refused", level=logging.WARNING, job_id=counts.job_id,
                  page_no=counts.page_no, stale=len(outcome.stale))
    METRICS.pages_written.labels(str(outcome.redelivered).lower()).inc()
    if not outcome.redelivered:
        for name in RECORD_OUTCOMES:
            METRICS.records.labels(name).inc(by_outcome[name])
    for name, value in by_outcome.items():
        span.set_attribute(f"apptsync.{name}", value)
    span.set_attribute("apptsync.redelivered", outcome.redelivered)
    log_event(log, "page written", job_id=counts.job_id, page_no=counts.page_no,
              records_fetched=counts.records_fetched, redelivered=outcome.redelivered, **by_outcome)


async def _report_draining(stop: asyncio.Event, health: HealthEndpoint) -> None:
    """NOT_SERVING as soon as a stop is requested, while the batch in hand is still finishing."""
    await stop.wait()
    await health.set_serving(False)


async def run_writer(
    database: DatabaseSettings,
    kafka: KafkaSettings,
    writer: WriterSettings,
    *,
    stop: asyncio.Event,
    rng: random.Random | None = None,
    after_commit: AfterCommitHook | None = None,
    after_send: AfterCommitHook | None = None,
    resources: ServiceResources = DEFAULT_RESOURCES,
) -> None:
    """Runs the writer until `stop` is set: then stops intake, finishes and commits the poll in hand,
    leaves the consumer group (a static member, `kafka.writer_group_instance_id`, stays in it until
    its session times out or the same instance comes back), lets the change relay publish what is
    pending (at most `writer.change_relay_drain_seconds`) and returns.

    Two long-lived tasks share the process's pool and lifecycle: the page writer (consume, store,
    report, commit offsets) and the change relay (apptsync.writer.change_relay: the outbox the page
    writer's transactions fill, to the change-events topic, through its own producer compressed for
    downstream clients). A permanent failure of either stops both.

    Creates the apptsync topics if missing; serves gRPC health on `writer.health_address` unless its
    port is 0 (SERVING while consuming, NOT_SERVING while draining). Raises StorageUnavailableError /
    BrokerUnavailableError when PostgreSQL / the broker cannot be reached at start-up, and
    PermanentError for failures no retry can fix. `after_commit` runs after each database commit,
    before the offsets are committed (a no-op unless a crash test injects its fault). Whatever start-up
    opened is closed again when a later step fails (see apptsync.shared.lifecycle; `resources` says how
    each part is opened). `after_send` runs in the change relay after the broker acknowledged a batch,
    before the outbox rows are deleted (crash tests only, as `after_commit`)."""
    async with contextlib.AsyncExitStack() as stack:
        health = await stack.enter_async_context(resources.health(writer.health_address))
        await resources.topics(kafka)
        pool = await stack.enter_async_context(resources.pool(database, CLIENT_ID))
        producer = await stack.enter_async_context(resources.producer(kafka, CLIENT_ID))
        change_producer = await stack.enter_async_context(
            resources.downstream_producer(kafka, f"{CLIENT_ID}-changes")
        )
        consumer = resources.consumer(
            kafka,
            pages_topic(kafka),
            group_id=kafka.writer_group_id,
            client_id=CLIENT_ID,
            group_instance_id=kafka.writer_group_instance_id or None,
        )
        # A dynamic member leaves the group on stop: its partitions move on at once. A static one does
        # not (aiokafka sends no LeaveGroup for it): the restart that usually follows takes them back
        # without a rebalance.
        stack.push_async_callback(consumer.stop)
        async with kafka_errors():
            await consumer.start()
        if health is not None:
            # NOT_SERVING as soon as a stop is requested, while the batch in hand is still finishing.
            stack.push_async_callback(health.set_serving, False)
            stack.push_async_callback(cancel_and_wait, asyncio.create_task(_report_draining(stop, health)))
            await health.set_serving(True)
        relay = ChangeRelay(
            pool=pool,
            producer=change_producer,
            topic=change_events_topic(kafka),
            batch_size=writer.change_relay_batch_size,
            poll_interval_seconds=writer.change_relay_poll_interval_seconds,
            drain_seconds=writer.change_relay_drain_seconds,
            rng=random.Random(),  # noqa: S311 -- spreads relays over shards, not a secret
            monotonic=time.monotonic,
            after_send=after_send or _no_fault,
        )
        page_writer = PageWriter(
            consumer=consumer,
            producer=producer,
            store=PageStore(pool),
            kafka=kafka,
            writer=writer,
            version=service_version(),
            rng=rng or random.Random(),  # noqa: S311 -- backoff jitter, not a secret
            after_commit=after_commit or _no_fault,
            recreate_topics=functools.partial(ensure_topics, kafka),
            committed=relay.wake,
        )
        # Stops intake at `stop`, after finishing and committing the poll in hand; the consumer leaves
        # as soon as the page writer is done, not after the relay's drain: its partitions move on
        # meanwhile (consumer.stop is idempotent; it is on the stack too).
        await _run_together(page_writer, relay, stop, after_writing=consumer.stop)


async def _run_together(
    page_writer: PageWriter, relay: ChangeRelay, stop: asyncio.Event, *, after_writing: Callable[[], Awaitable[None]]
) -> None:
    """Runs both tasks until `stop`; `after_writing` runs once the page writer finished its last batch,
    then the relay drains (the page writer's commits are its last work). A task that fails sets `stop`
    for the other, then its error is raised."""
    relay_stop = asyncio.Event()

    async def writing() -> None:
        try:
            await page_writer.run(stop)
        finally:
            relay_stop.set()
            await after_writing()

    async def relaying() -> None:
        try:
            await relay.run(relay_stop)
        finally:
            stop.set()

    outcomes = await asyncio.gather(writing(), relaying(), return_exceptions=True)
    for outcome in outcomes:  # the first failure as itself (a TaskGroup would wrap it in a group)
        if isinstance(outcome, BaseException):
            raise outcome
