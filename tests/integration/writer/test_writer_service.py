"""The whole writer against a real broker and PostgreSQL: pages in, rows and PageResults out.

Every wait is bounded in polls and seconds; nothing asserts on time (rates are only printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apptsync.shared.appointments import CanonicalAppointment
from apptsync.shared.db.migrator import migrate
from apptsync.shared.kafka import header_text
from apptsync.shared.messages.appointment_pages import parse_appointment_page
from apptsync.shared.settings import DatabaseSettings, KafkaSettings, WriterSettings
from apptsync.v1 import pages_pb2
from apptsync.writer.service import run_writer
from tests.containers.fixtures import BrokerContainer, PostgresServerContainer, free_port
from tests.integration.writer.writer_database import insert_job, job_counters, padded
from tests.unit.writer.page_builders import TENANT, appointment, page

pytestmark = pytest.mark.integration

WAIT_SECONDS = 60.0
MAX_POLLS = 600


@pytest.fixture
def kafka_settings(broker: BrokerContainer) -> KafkaSettings:
    """Topics and group of this test only; fast group joins for the Tansu broker."""
    suffix = uuid.uuid4().hex[:10]
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        pages_topic=f"pages-{suffix}",
        page_results_topic=f"results-{suffix}",
        dead_letter_topic=f"dead-{suffix}",
        job_events_topic=f"events-{suffix}",
        writer_group_id=f"writer-{suffix}",
        topic_partitions=2,
        session_timeout_ms=1000,
        heartbeat_interval_ms=200,
        request_timeout_ms=10_000,
    )


def database_settings(url: str) -> DatabaseSettings:
    return DatabaseSettings(url=url, pool_min_size=1, pool_max_size=4, command_timeout_seconds=10)


async def prepare_database(url: str, tenant_id: str = TENANT) -> str:
    """Migrates the database and creates one import job; returns its id."""
    connection = await asyncpg.connect(url)
    try:
        await migrate(connection)
        job_id = await insert_job(connection, tenant_id)
        return job_id
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def running_writer(
    database: DatabaseSettings, kafka: KafkaSettings, writer: WriterSettings | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """run_writer as a task; on exit sets its stop event and requires a clean return."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_writer(database, kafka, writer or WriterSettings(), stop=stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=WAIT_SECONDS)


async def produce(kafka: KafkaSettings, topic: str, messages: Sequence[tuple[bytes, bytes]]) -> None:
    """Produces (key, value) pairs in order and waits for every acknowledgement."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        acknowledgements = [await producer.send(topic, key=key, value=value) for key, value in messages]
        await asyncio.gather(*acknowledgements)
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def reader(kafka: KafkaSettings, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def read(consumer: AIOKafkaConsumer, want: int) -> list[Any]:
    """At least `want` records (fewer only if the bound of polls or seconds is reached)."""
    records: list[Any] = []
    deadline = time.monotonic() + WAIT_SECONDS
    for _ in range(MAX_POLLS):
        if len(records) >= want or time.monotonic() > deadline:
            break
        for batch in (await consumer.getmany(timeout_ms=100)).values():
            records.extend(batch)
    return records


def results_of(records: Sequence[Any]) -> list[pages_pb2.PageResult]:
    results = []
    for record in records:
        result = pages_pb2.PageResult()
        result.ParseFromString(record.value)
        results.append(result)
    return sorted(results, key=lambda r: (r.redelivered, r.page_no))


def page_messages(job_id: str, pages: Sequence[Sequence[CanonicalAppointment]], *,
                  skipped_invalid: int = 0) -> list[tuple[bytes, bytes]]:
    return [
        (job_id.encode(), page(rows, page_no=n, job_id=job_id, skipped_invalid=skipped_invalid)
         .SerializeToString())
        for n, rows in enumerate(pages, start=1)
    ]


async def health_status(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # generated stub: no method types
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        status: int = response.status
        return status


async def test_pages_become_rows_and_results_and_a_redelivery_counts_once(
    database_url: str, kafka_settings: KafkaSettings
) -> None:
    job_id = await prepare_database(database_url)
    pages = [[appointment(f"p{n}-{i}") for i in range(20)] for n in range(1, 6)]
    pages[2].append(appointment("p3-0", version=1))  # a duplicate inside page 3: the later copy wins
    messages = page_messages(job_id, pages, skipped_invalid=1)
    health_address = f"127.0.0.1:{free_port()}"
    writer = WriterSettings(max_batch_pages=3, health_address=health_address)

    async with reader(kafka_settings, kafka_settings.page_results_topic) as results_reader, \
            running_writer(database_settings(database_url), kafka_settings, writer):
        await produce(kafka_settings, kafka_settings.pages_topic, messages)
        first = results_of(await read(results_reader, 5))
        assert await health_status(health_address) == health_pb2.HealthCheckResponse.SERVING

        await produce(kafka_settings, kafka_settings.pages_topic, messages)  # the same pages again
        again = results_of(await read(results_reader, 5))

    assert [(r.page_no, r.records_fetched, r.inserted, r.updated, r.unchanged, r.redelivered)
            for r in first] == [(1, 21, 20, 0, 0, False), (2, 21, 20, 0, 0, False),
                                (3, 22, 20, 0, 0, False), (4, 21, 20, 0, 0, False),
                                (5, 21, 20, 0, 0, False)]
    assert [(r.skipped.invalid, r.skipped.duplicate_in_page) for r in first][2] == (1, 1)
    assert all(r.job_id == job_id for r in first)
    assert [r.redelivered for r in again] == [True] * 5
    for replayed, original in zip(again, first, strict=True):
        replayed.redelivered = False
        assert replayed == original

    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM appointments") == 100
        assert await connection.fetchval(
            "SELECT title FROM appointments WHERE external_id = 'p3-0'") == "Session v1"
        counters = await job_counters(connection, job_id)
    finally:
        await connection.close()
    assert counters["pages_written"] == 5
    assert counters["records_fetched"] == 106
    assert counters["inserted"] == 100
    assert counters["skipped_duplicate_in_page"] == 1
    assert await committed_offsets(kafka_settings) == 10  # both deliveries of all 5 pages


async def committed_offsets(kafka: KafkaSettings) -> int:
    """The writer group's committed offsets summed over the pages topic's partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=kafka.writer_group_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(kafka.pages_topic) or set()
        total = 0
        for partition in partitions:
            total += await consumer.committed(TopicPartition(kafka.pages_topic, partition)) or 0
        return total
    finally:
        await consumer.stop()


def dead_letter_name(record: Any) -> str:
    """`job/external id` of a refused record, `job/page` of a refused page, `job/-` otherwise."""
    job = header_text(record.headers, "apptsync-job-id") or "?"
    detail = header_text(record.headers, "apptsync-external-id") or header_text(record.headers, "apptsync-page-no")
    return f"{job}/{detail or '-'}"


async def test_poison_messages_are_dead_lettered_and_the_writer_goes_on(
    database_url: str, kafka_settings: KafkaSettings
) -> None:
    """Guards dead letters with honest counts: an undecodable message, a page of no job (it still gets
    a PageResult counting its record as a dead letter: its fetcher must not wait for
    result_timeout_seconds) and a refused record (alone in the dead-letter topic, the rest of its
    page stored and counted)."""
    job_id = await prepare_database(database_url)
    orphan_job = str(uuid.uuid4())  # no such import job: PostgreSQL refuses the page
    garbage = b"\x0a\xff\xff\xff this is not an AppointmentPage"
    bad_record = dataclasses.replace(appointment("bad"), raw_json="{not json")
    messages = [
        (job_id.encode(), garbage),
        page_messages(orphan_job, [[appointment("orphan")]])[0],
        *page_messages(job_id, [[appointment("fine")], [appointment("fine-2"), bad_record]]),
    ]

    async with reader(kafka_settings, kafka_settings.dead_letter_topic) as dead_reader, \
            reader(kafka_settings, kafka_settings.page_results_topic) as results_reader, \
            running_writer(database_settings(database_url), kafka_settings):
        await produce(kafka_settings, kafka_settings.pages_topic, messages)
        results = results_of(await read(results_reader, 3))
        dead = {dead_letter_name(r): r for r in await read(dead_reader, 3)}

    assert sorted((r.job_id, r.page_no, r.inserted, r.skipped.dead_letter) for r in results) == sorted([
        (orphan_job, 1, 0, 1), (job_id, 1, 1, 0), (job_id, 2, 1, 1)])
    assert set(dead) == {f"{job_id}/-", f"{orphan_job}/1", f"{job_id}/bad"}
    undecodable, refused, record = dead[f"{job_id}/-"], dead[f"{orphan_job}/1"], dead[f"{job_id}/bad"]
    assert undecodable.value == garbage
    assert "not an AppointmentPage" in (header_text(undecodable.headers, "apptsync-error") or "")
    assert header_text(undecodable.headers, "apptsync-page-no") is None
    assert header_text(undecodable.headers, "apptsync-source-topic") == kafka_settings.pages_topic
    assert header_text(undecodable.headers, "apptsync-source-offset") == "0"
    assert header_text(undecodable.headers, "apptsync-source-partition") is not None
    assert header_text(undecodable.headers, "apptsync-service-version")
    assert refused.value == messages[1][1]
    assert "refused by PostgreSQL" in (header_text(refused.headers, "apptsync-error") or "")
    assert header_text(refused.headers, "apptsync-page-no") == "1"
    single = parse_appointment_page(record.value)
    assert [a.external_id for a in single.appointments] == ["bad"]
    assert header_text(record.headers, "apptsync-page-no") == "2"
    assert "json" in (header_text(record.headers, "apptsync-error") or "")
    assert header_text(record.headers, "apptsync-service-version")
    assert await committed_offsets(kafka_settings) == 4
    connection = await asyncpg.connect(database_url)
    try:
        counters = await job_counters(connection, job_id)
        assert (counters["records_fetched"], counters["inserted"]) == (3, 2)
    finally:
        await connection.close()


async def test_first_load_rate_through_the_whole_service(
    database_url: str, kafka_settings: KafkaSettings
) -> None:
    job_id = await prepare_database(database_url)
    pages = [[padded(f"appt-{n:02d}-{i:03d}") for i in range(100)] for n in range(20)]
    messages = page_messages(job_id, pages)

    async with reader(kafka_settings, kafka_settings.page_results_topic) as results_reader, \
            running_writer(database_settings(database_url), kafka_settings):
        # Warm up: the group join and the first statements are not part of the rate.
        await produce(kafka_settings, kafka_settings.pages_topic, page_messages(job_id, [[padded("warm")]]))
        await read(results_reader, 1)
        started = time.perf_counter()
        await produce(kafka_settings, kafka_settings.pages_topic, messages[1:])
        results = results_of(await read(results_reader, 19))
        elapsed_seconds = time.perf_counter() - started

    print(f"\nwriter service first load: 19 pages x 100 rows (~1 KB JSON), produce to last result, "
          f"{elapsed_seconds:.3f} s = {1900 / elapsed_seconds:,.0f} rows/s")
    assert [(r.page_no, r.inserted, r.redelivered) for r in results] == [
        (n, 100, False) for n in range(2, 21)]


async def test_a_database_outage_is_retried_never_dead_lettered(
    postgres_server_factory: Callable[[], PostgresServerContainer],
    kafka_settings: KafkaSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = postgres_server_factory()
    url = server.create_database("writer_outage")
    job_id = await prepare_database(url)

    with caplog.at_level(logging.WARNING, logger="apptsync.writer.service"):
        async with reader(kafka_settings, kafka_settings.page_results_topic) as results_reader, \
                running_writer(database_settings(url), kafka_settings):
            await produce(kafka_settings, kafka_settings.pages_topic,
                          page_messages(job_id, [[appointment("before")]]))
            assert len(await read(results_reader, 1)) == 1  # consuming, pool connected

            await asyncio.to_thread(server.stop_server)
            await produce(kafka_settings, kafka_settings.pages_topic,
                          page_messages(job_id, [[], [appointment(f"a{i}") for i in range(10)]])[1:])
            for _ in range(MAX_POLLS):
                if any("retrying" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.1)
            await asyncio.to_thread(server.start_server)
            results = results_of(await read(results_reader, 1))

    assert [(r.page_no, r.inserted, r.redelivered) for r in results] == [(2, 10, False)]
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert await end_offset_total(kafka_settings, kafka_settings.dead_letter_topic) == 0
    connection = await asyncpg.connect(url)
    try:
        assert (await job_counters(connection, job_id))["inserted"] == 11
    finally:
        await connection.close()


async def end_offset_total(kafka: KafkaSettings, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers)
    await consumer.start()
    try:
        await consumer.topics()  # refreshes metadata
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or set()]
        offsets = await consumer.end_offsets(partitions)
        return sum(offsets.values())
    finally:
        await consumer.stop()
