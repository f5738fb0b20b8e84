"""The writer process: consume pages, store them, report each page's result, then commit offsets.

Order of effects for every consumed batch (DESIGN.md invariants 1 and 3):
PostgreSQL commit -> PageResults (and dead letters) acknowledged by the broker -> Kafka offsets
committed. A crash between any two steps redelivers the messages; the page ledger then replays the
stored results instead of counting twice.

PostgreSQL or the broker unreachable: nothing goes to the dead-letter topic; the partition seeks back
to the first unfinished message and the batch is retried with backoff, the consumer staying in its
group. A message that is not a valid page, or a page whose data PostgreSQL refuses, is copied to the
dead-letter topic with headers saying why, and the writer moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition

from apptsync.shared.db.pool import create_pool
from apptsync.shared.errors import PoisonMessageError, RetriableError
from apptsync.shared.health import HealthEndpoint, health_enabled
from apptsync.shared.kafka import (
    commit_offsets,
    create_consumer,
    create_producer,
    ensure_topics,
    kafka_errors,
)
from apptsync.shared.settings import DatabaseSettings, KafkaSettings, WriterSettings
from apptsync.writer.accounting import DecodedPage, PageOutcome
from apptsync.writer.intake import (
    DeadLetter,
    InboundMessage,
    PageBatch,
    WorkUnit,
    dead_letter_headers,
    plan_work,
    retry_delay_seconds,
)
from apptsync.writer.store import PageStore

log = logging.getLogger(__name__)

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
    """Stores consecutive pages of one tenant in one transaction (see `store.write_pages`)."""

    async def write(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]: ...


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
        if not await commit_offsets(self._consumer, offsets):
            log.info("writer: group rebalanced before the commit; the new owner replays those pages")
        return [p.failure for p in progress if p.failure is not None]

    async def _process_partition(
        self, partition: TopicPartition, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> PartitionProgress:
        messages = [
            InboundMessage(r.topic, r.partition, r.offset, r.key, r.value) for r in records
        ]
        commit_offset: int | None = None
        for unit in plan_work(messages, max_batch_pages=self._writer.max_batch_pages):
            try:
                await self._process_unit(unit)
            except RetriableError as exc:
                return PartitionProgress(partition, commit_offset, unit.first_offset, exc)
            commit_offset = unit.last_offset + 1
        return PartitionProgress(partition, commit_offset)

    async def _process_unit(self, unit: WorkUnit) -> None:
        if isinstance(unit, DeadLetter):
            reports: list[PageOutcome | DeadLetter] = [unit]
        else:
            reports = await self._write_batch(unit)
        await self._send_reports(reports)

    async def _write_batch(self, batch: PageBatch) -> list[PageOutcome | DeadLetter]:
        """Outcomes of the batch's pages in order; a page PostgreSQL refuses becomes a dead letter
        (the batch is then retried one page per transaction to find it)."""
        try:
            return list(await self._store.write([d.page for d in batch.pages]))
        except PoisonMessageError as exc:
            if len(batch.pages) == 1:
                return [self._refused(batch.pages[0].message, batch.pages[0].page, exc)]
        reports: list[PageOutcome | DeadLetter] = []
        for delivered in batch.pages:
            try:
                reports.extend(await self._store.write([delivered.page]))
            except PoisonMessageError as exc:
                reports.append(self._refused(delivered.message, delivered.page, exc))
        return reports

    @staticmethod
    def _refused(message: InboundMessage, page: DecodedPage, exc: PoisonMessageError) -> DeadLetter:
        log.warning("writer: dead-lettering page %s/%s (offset %d): %s",
                    page.job_id, page.page_no, message.offset, exc)
        return DeadLetter(message, f"refused by PostgreSQL: {exc}", job_id=page.job_id, page_no=page.page_no)

    async def _send_reports(self, reports: Sequence[PageOutcome | DeadLetter]) -> None:
        """Produces every PageResult and dead letter, in order, and waits for all acknowledgements."""
        async with kafka_errors():
            acknowledgements = []
            for report in reports:
                if isinstance(report, DeadLetter):
                    acknowledgements.append(await self._producer.send(
                        self._kafka.dead_letter_topic,
                        value=report.message.value,
                        key=report.message.key,
                        headers=dead_letter_headers(report, service_version=self._version),
                    ))
                else:
                    acknowledgements.append(await self._producer.send(
                        self._kafka.page_results_topic,
                        value=report.to_proto().SerializeToString(),
                        key=report.counts.job_id.encode("utf-8"),
                    ))
            await asyncio.gather(*acknowledgements)


async def _report_draining(stop: asyncio.Event, health: HealthEndpoint | None) -> None:
    """NOT_SERVING as soon as a stop is requested, while the batch in hand is still finishing."""
    await stop.wait()
    if health is not None:
        await health.set_serving(False)


async def run_writer(
    database: DatabaseSettings,
    kafka: KafkaSettings,
    writer: WriterSettings,
    *,
    stop: asyncio.Event,
    rng: random.Random | None = None,
) -> None:
    """Runs the writer until `stop` is set: then stops intake, finishes and commits the poll in hand,
    leaves the consumer group and returns.

    Creates the apptsync topics if missing; serves gRPC health on `writer.health_address` unless its
    port is 0 (SERVING while consuming, NOT_SERVING while draining). Raises StorageUnavailableError /
    BrokerUnavailableError when PostgreSQL / the broker cannot be reached at start-up, and
    PermanentError for failures no retry can fix."""
    health = HealthEndpoint(writer.health_address) if health_enabled(writer.health_address) else None
    if health is not None:
        await health.start()
    try:
        await ensure_topics(kafka)
        pool = await create_pool(database, application_name=CLIENT_ID)
        try:
            producer = create_producer(kafka, client_id=CLIENT_ID)
            consumer = create_consumer(
                kafka, kafka.pages_topic, group_id=kafka.writer_group_id, client_id=CLIENT_ID
            )
            async with kafka_errors():
                await producer.start()
            try:
                async with kafka_errors():
                    await consumer.start()
                draining = asyncio.create_task(_report_draining(stop, health))
                try:
                    if health is not None:
                        await health.set_serving(True)
                    page_writer = PageWriter(
                        consumer=consumer,
                        producer=producer,
                        store=PageStore(pool),
                        kafka=kafka,
                        writer=writer,
                        version=service_version(),
                        rng=rng or random.Random(),
                    )
                    await page_writer.run(stop)
                finally:
                    draining.cancel()
                    if health is not None:
                        await health.set_serving(False)
                    await consumer.stop()  # leaves the group: partitions move on at once
            finally:
                await producer.stop()
        finally:
            await pool.close()
    finally:
        if health is not None:
            await health.stop()
