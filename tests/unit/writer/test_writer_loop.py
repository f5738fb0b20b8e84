"""The consume-store-report-commit loop with in-memory fakes of Kafka and the store (no I/O)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiokafka.errors
import pytest
from aiokafka.structs import TopicPartition

from apptsync.shared.errors import PermanentError, PoisonMessageError, StorageUnavailableError
from apptsync.shared.messages.appointment_pages import parse_appointment_page
from apptsync.shared.messages.page_results import PageCounts
from apptsync.shared.settings import KafkaSettings, WriterSettings
from apptsync.v1 import pages_pb2
from apptsync.writer.accounting import (
    DecodedPage,
    PageOutcome,
    RefusedRecord,
    drop_refused_records,
    refused_page_counts,
)
from apptsync.writer.service import PageWriter
from tests.hooked_services import crash_after_commit_hook
from tests.unit.writer.page_builders import JOB, appointment, page

pytestmark = pytest.mark.unit

TOPIC = "apptsync.pages"
PARTITION = TopicPartition(TOPIC, 0)


def record(offset: int, value: bytes) -> SimpleNamespace:
    return SimpleNamespace(topic=TOPIC, partition=0, offset=offset, key=JOB.encode(), value=value, headers=[])


def page_record(offset: int, page_no: int) -> SimpleNamespace:
    return record(offset, page([appointment(f"a{page_no}")], page_no=page_no).SerializeToString())


@dataclass
class FakeConsumer:
    """Hands out scripted polls (re-reading after a seek), then sets `stop`."""

    log: list[SimpleNamespace]
    stop: asyncio.Event
    max_records: int = 100
    position: int = 0
    polls: int = 0
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    seeks: list[int] = field(default_factory=list)

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.polls += 1
        if self.position >= len(self.log) or self.polls > 20:
            self.stop.set()
            return {}
        batch = self.log[self.position:self.position + min(max_records, self.max_records)]
        self.position += len(batch)
        return {PARTITION: batch}

    def assignment(self) -> set[TopicPartition]:
        return {PARTITION}

    def highwater(self, partition: TopicPartition) -> int:
        return len(self.log)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)
        self.position = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


@dataclass
class FakeProducer:
    sent: list[tuple[str, bytes | None, list[tuple[str, bytes]] | None]] = field(default_factory=list)

    async def send(self, topic: str, *, value: bytes | None, key: bytes | None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[None]:
        self.sent.append((topic, value, headers))
        acknowledgement: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acknowledgement.set_result(None)
        return acknowledgement


@dataclass
class FakeStore:
    """Counts every row as inserted; fails as scripted."""

    unavailable_times: int = 0
    refused_page_nos: frozenset[int] = frozenset()
    unrecordable_page_nos: frozenset[int] = frozenset()
    refused_records: dict[int, tuple[RefusedRecord, ...]] = field(default_factory=dict)
    permanent: bool = False
    calls: list[list[int]] = field(default_factory=list)
    recorded_refused: list[int] = field(default_factory=list)

    async def write(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        self.calls.append([p.page_no for p in pages])
        if self.permanent:
            raise PermanentError("relation appointments does not exist")
        if self.unavailable_times:
            self.unavailable_times -= 1
            raise StorageUnavailableError("connection refused")
        if any(p.page_no in self.refused_page_nos for p in pages):
            raise PoisonMessageError("invalid input syntax for type json")
        outcomes = []
        for p in pages:
            refused = self.refused_records.get(p.page_no, ())
            kept = drop_refused_records([p], {(p.key, r.external_id): r.error for r in refused})[0]
            outcomes.append(PageOutcome(
                PageCounts(job_id=p.job_id, page_no=p.page_no, records_fetched=p.records_fetched,
                           inserted=len(kept.rows), updated=0, unchanged=0, skipped=kept.skipped,
                           contacts_unmatched=0),
                redelivered=False, refused=refused))
        return outcomes

    async def record_refused(self, page: DecodedPage) -> PageOutcome:
        if page.page_no in self.unrecordable_page_nos:
            raise PoisonMessageError("insert or update on table import_job_pages violates foreign key")
        self.recorded_refused.append(page.page_no)
        return PageOutcome(refused_page_counts(page), redelivered=False)


def writer_for(consumer: FakeConsumer, producer: FakeProducer, store: FakeStore,
               max_batch_pages: int = 8) -> PageWriter:
    return PageWriter(
        consumer=consumer, producer=producer, store=store,
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        writer=WriterSettings(max_batch_pages=max_batch_pages),
        version="0.0.0-test", rng=random.Random(1), retry_base_seconds=0.001, retry_cap_seconds=0.002,
    )


def result_page_nos(producer: FakeProducer) -> list[int]:
    page_nos = []
    for topic, value, _ in producer.sent:
        if topic == "apptsync.page-results":
            result = pages_pb2.PageResult()
            result.ParseFromString(value or b"")
            page_nos.append(result.page_no)
    return page_nos


async def test_results_are_sent_before_the_exact_offsets_are_committed() -> None:
    stop = asyncio.Event()
    consumer = FakeConsumer([page_record(i, i + 1) for i in range(5)], stop)
    producer, store = FakeProducer(), FakeStore()

    await asyncio.wait_for(writer_for(consumer, producer, store, max_batch_pages=2).run(stop), 10)

    assert store.calls == [[1, 2], [3, 4], [5]]
    assert result_page_nos(producer) == [1, 2, 3, 4, 5]
    assert consumer.commits == [{PARTITION: 5}]


async def test_an_unavailable_database_is_retried_from_the_same_offset_without_commit() -> None:
    stop = asyncio.Event()
    consumer = FakeConsumer([page_record(i, i + 1) for i in range(3)], stop)
    producer, store = FakeProducer(), FakeStore(unavailable_times=2)

    await asyncio.wait_for(writer_for(consumer, producer, store).run(stop), 10)

    assert store.calls == [[1, 2, 3]] * 3
    assert consumer.seeks == [0, 0]
    assert consumer.commits == [{PARTITION: 3}]
    assert result_page_nos(producer) == [1, 2, 3]
    assert all(topic != "apptsync.dead-letters" for topic, _, _ in producer.sent)


def results_of(producer: FakeProducer) -> list[pages_pb2.PageResult]:
    results = []
    for topic, value, _ in producer.sent:
        if topic == "apptsync.page-results":
            result = pages_pb2.PageResult()
            result.ParseFromString(value or b"")
            results.append(result)
    return results


async def test_a_refused_page_is_found_page_by_page_dead_lettered_and_still_gets_a_result() -> None:
    stop = asyncio.Event()
    consumer = FakeConsumer([page_record(0, 1), page_record(1, 2), record(2, b"\xff garbage"),
                             page_record(3, 3)], stop)
    producer, store = FakeProducer(), FakeStore(refused_page_nos=frozenset({2}))

    await asyncio.wait_for(writer_for(consumer, producer, store).run(stop), 10)

    assert store.calls == [[1, 2], [1], [2], [3]]
    assert [topic for topic, _, _ in producer.sent] == [
        "apptsync.page-results", "apptsync.dead-letters", "apptsync.page-results", "apptsync.dead-letters",
        "apptsync.page-results"]
    refused_headers = dict(producer.sent[1][2] or [])
    assert refused_headers["apptsync-page-no"] == b"2"
    assert b"refused by PostgreSQL" in refused_headers["apptsync-error"]
    # Guards the refused page's result: without it its fetcher waits result_timeout_seconds.
    refused_result = results_of(producer)[1]
    assert (refused_result.page_no, refused_result.skipped.dead_letter, refused_result.inserted) == (2, 1, 0)
    assert store.recorded_refused == [2]
    assert producer.sent[3][1] == b"\xff garbage"
    assert consumer.commits == [{PARTITION: 4}]


async def test_a_page_that_cannot_even_be_recorded_still_gets_an_honest_result() -> None:
    stop = asyncio.Event()
    consumer = FakeConsumer([page_record(0, 1)], stop)
    producer = FakeProducer()
    store = FakeStore(refused_page_nos=frozenset({1}), unrecordable_page_nos=frozenset({1}))

    await asyncio.wait_for(writer_for(consumer, producer, store).run(stop), 10)

    (result,) = results_of(producer)
    assert (result.records_fetched, result.skipped.dead_letter, result.redelivered) == (1, 1, False)
    assert [topic for topic, _, _ in producer.sent] == ["apptsync.dead-letters", "apptsync.page-results"]


async def test_a_refused_record_is_dead_lettered_alone_and_the_page_result_counts_it() -> None:
    stop = asyncio.Event()
    two_records = page([appointment("good"), appointment("bad")], page_no=1).SerializeToString()
    consumer = FakeConsumer([record(0, two_records)], stop)
    producer = FakeProducer()
    store = FakeStore(refused_records={1: (RefusedRecord("bad", "invalid input syntax for type json"),)})

    await asyncio.wait_for(writer_for(consumer, producer, store).run(stop), 10)

    topic, value, headers = producer.sent[0]
    assert topic == "apptsync.dead-letters"
    single = parse_appointment_page(value or b"")
    assert [a.external_id for a in single.appointments] == ["bad"]
    assert single.records_fetched == 1
    assert dict(headers or [])["apptsync-external-id"] == b"bad"
    (result,) = results_of(producer)
    assert (result.inserted, result.skipped.dead_letter) == (1, 1)


async def test_a_permanent_failure_stops_the_writer_without_commit() -> None:
    stop = asyncio.Event()
    consumer = FakeConsumer([page_record(0, 1)], stop)
    producer, store = FakeProducer(), FakeStore(permanent=True)

    with pytest.raises(PermanentError, match="does not exist"):
        await asyncio.wait_for(writer_for(consumer, producer, store).run(stop), 10)

    assert consumer.commits == []
    assert producer.sent == []



async def test_the_fault_hook_runs_between_the_database_commit_and_the_offset_commit() -> None:
    """The crash test's fault point: after the store committed, once before the results are sent and
    once after, and always before the offsets are committed."""
    stop = asyncio.Event()
    consumer = FakeConsumer([page_record(0, 1)], stop)
    producer, store = FakeProducer(), FakeStore()
    seen: list[tuple[int, int, int]] = []
    writer = PageWriter(
        consumer=consumer, producer=producer, store=store, kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        writer=WriterSettings(), version="0.0.0-test", rng=random.Random(1),
        after_commit=lambda: seen.append((len(store.calls), len(producer.sent), len(consumer.commits))),
    )

    await asyncio.wait_for(writer.run(stop), 10)

    assert seen == [(1, 0, 0), (1, 1, 0)]
    assert consumer.commits == [{PARTITION: 1}]


def test_the_crash_hook_draws_nothing_and_kills_nothing_at_probability_zero() -> None:
    rng = random.Random(1)
    state = rng.getstate()

    crash_after_commit_hook(0.0, rng)()  # returns: this process is still here

    assert rng.getstate() == state


async def test_a_commit_the_broker_refuses_recreates_the_topics_and_is_retried() -> None:
    """A broker that lost its topics refuses commits on them until they exist again."""

    @dataclass
    class ConsumerOfALostTopic(FakeConsumer):
        refusals: int = 1

        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            if self.refusals:
                self.refusals -= 1
                raise aiokafka.errors.KafkaTimeoutError()
            await super().commit(offsets)

    stop = asyncio.Event()
    consumer = ConsumerOfALostTopic([page_record(0, 1), page_record(1, 2)], stop, max_records=1)
    recreated: list[str] = []

    async def recreate_topics() -> None:
        recreated.append("topics")

    writer = PageWriter(
        consumer=consumer, producer=FakeProducer(), store=FakeStore(),
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"), writer=WriterSettings(),
        version="0.0.0-test", rng=random.Random(1), retry_base_seconds=0.001, retry_cap_seconds=0.002,
        recreate_topics=recreate_topics,
    )
    await asyncio.wait_for(writer.run(stop), timeout=10)

    assert recreated == ["topics"]
    assert consumer.commits == [{PARTITION: 2}]  # offsets are cumulative: the next commit covers page 1
