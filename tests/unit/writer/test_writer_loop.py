"""The consume-store-report-commit loop with in-memory fakes of Kafka and the store (no I/O)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from apptsync.shared.errors import PermanentError, PoisonMessageError, StorageUnavailableError
from apptsync.shared.settings import KafkaSettings, WriterSettings
from apptsync.v1 import pages_pb2
from apptsync.writer.accounting import DecodedPage, PageCounts, PageOutcome
from apptsync.writer.service import PageWriter
from tests.unit.writer.page_builders import JOB, appointment, page

pytestmark = pytest.mark.unit

TOPIC = "apptsync.pages"
PARTITION = TopicPartition(TOPIC, 0)


def record(offset: int, value: bytes) -> SimpleNamespace:
    return SimpleNamespace(topic=TOPIC, partition=0, offset=offset, key=JOB.encode(), value=value)


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
    permanent: bool = False
    calls: list[list[int]] = field(default_factory=list)

    async def write(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        self.calls.append([p.page_no for p in pages])
        if self.permanent:
            raise PermanentError("relation appointments does not exist")
        if self.unavailable_times:
            self.unavailable_times -= 1
            raise StorageUnavailableError("connection refused")
        if any(p.page_no in self.refused_page_nos for p in pages):
            raise PoisonMessageError("invalid input syntax for type json")
        return [PageOutcome(PageCounts(job_id=p.job_id, page_no=p.page_no, records_fetched=p.records_fetched,
                                       inserted=len(p.rows), updated=0, unchanged=0, skipped=p.skipped,
                                       contacts_unmatched=0), redelivered=False) for p in pages]


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


async def test_a_refused_page_is_found_page_by_page_and_dead_lettered() -> None:
    stop = asyncio.Event()
    consumer = FakeConsumer([page_record(0, 1), page_record(1, 2), record(2, b"\xff garbage"),
                             page_record(3, 3)], stop)
    producer, store = FakeProducer(), FakeStore(refused_page_nos=frozenset({2}))

    await asyncio.wait_for(writer_for(consumer, producer, store).run(stop), 10)

    assert store.calls == [[1, 2], [1], [2], [3]]
    assert [topic for topic, _, _ in producer.sent] == [
        "apptsync.page-results", "apptsync.dead-letters", "apptsync.dead-letters", "apptsync.page-results"]
    refused_headers = dict(producer.sent[1][2] or [])
    assert refused_headers["apptsync-page-no"] == b"2"
    assert b"refused by PostgreSQL" in refused_headers["apptsync-error"]
    assert producer.sent[2][1] == b"\xff garbage"
    assert consumer.commits == [{PARTITION: 4}]


async def test_a_permanent_failure_stops_the_writer_without_commit() -> None:
    stop = asyncio.Event()
    consumer = FakeConsumer([page_record(0, 1)], stop)
    producer, store = FakeProducer(), FakeStore(permanent=True)

    with pytest.raises(PermanentError, match="does not exist"):
        await asyncio.wait_for(writer_for(consumer, producer, store).run(stop), 10)

    assert consumer.commits == []
    assert producer.sent == []

