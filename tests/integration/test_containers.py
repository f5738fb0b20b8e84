"""The container test infrastructure itself: real PostgreSQL and a real Kafka-compatible broker.

Every wait here is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable

import asyncpg
import docker.errors
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.containers.fixtures import (
    BROKER_IMAGE,
    OWNER_LABEL,
    BrokerContainer,
    PostgresServerContainer,
    docker_client,
    require_engine,
    sweep_leftover_containers,
)

pytestmark = pytest.mark.integration

FAST_GROUP = {"session_timeout_ms": 1000, "heartbeat_interval_ms": 200}


def _topic() -> str:
    return f"it-{uuid.uuid4().hex[:12]}"


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, acks="all", request_timeout_ms=10_000
    )


def _consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        request_timeout_ms=10_000,
        **FAST_GROUP,
    )


async def _consume(consumer: AIOKafkaConsumer, want: int, within_s: float = 20.0) -> list[bytes]:
    """Collect up to ``want`` message values, bounded by ``within_s`` seconds and 100 polls."""
    got: list[bytes] = []
    deadline = time.monotonic() + within_s
    for _ in range(100):
        if len(got) >= want or time.monotonic() > deadline:
            break
        batches = await consumer.getmany(timeout_ms=500, max_records=want - len(got))
        for records in batches.values():
            got.extend(r.value for r in records if r.value is not None)
    return got


# ----------------------------------------------------------------------------- engine


def test_require_engine_names_the_missing_image_and_the_fix() -> None:
    with pytest.raises(RuntimeError, match=r"apptsync-test/no-such-image:0.*make test"):
        require_engine("apptsync-test/no-such-image:0")


def test_sweep_removes_containers_of_dead_owners_only() -> None:
    require_engine(BROKER_IMAGE)
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead_pid = str(finished.pid)  # a pid that has certainly exited
    client = docker_client()
    created = []
    try:
        for owner in (dead_pid, "not-a-pid"):
            c = client.containers.create(
                BROKER_IMAGE, ["--help"], network_mode="host", labels={OWNER_LABEL: owner}
            )
            created.append(c)
        time.sleep(0.1)
        mine = client.containers.create(
            BROKER_IMAGE,
            ["--help"],
            network_mode="host",
            labels={OWNER_LABEL: str(os.getpid())},
        )
        created.append(mine)
        sweep_leftover_containers()  # a parallel session's sweep may remove them first: check absence
        for c in created[:2]:
            with pytest.raises(docker.errors.NotFound):
                client.containers.get(c.id or "")
        assert client.containers.get(mine.id or "").id == mine.id
    finally:
        for c in created:
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
        client.close()


# ----------------------------------------------------------------------------- PostgreSQL


async def test_postgres_select_create_insert(database_url: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        await conn.execute("CREATE TABLE item (id int PRIMARY KEY, name text NOT NULL)")
        await conn.executemany("INSERT INTO item VALUES ($1, $2)", [(1, "a"), (2, "b")])
        assert await conn.fetchval("SELECT count(*) FROM item") == 2
        version = await conn.fetchval("SHOW server_version_num")
        assert int(version) >= 150000
    finally:
        await conn.close()


async def test_each_test_gets_a_fresh_database(database_url: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        assert database_url.rsplit("/", 1)[1] == await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()


async def test_postgres_stop_start_keeps_data_and_port(
    postgres_server: PostgresServerContainer, database_url: str
) -> None:
    port_before = postgres_server.port
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await conn.execute("CREATE TABLE kept (v text)")
        await conn.execute("INSERT INTO kept VALUES ('survives')")
    finally:
        await conn.close()

    try:
        postgres_server.stop_server()
        with pytest.raises((OSError, asyncpg.PostgresError)):
            await asyncpg.connect(database_url, timeout=3)
        postgres_server.start_server()
        assert postgres_server.port == port_before
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            assert await conn.fetchval("SELECT v FROM kept") == "survives"
        finally:
            await conn.close()
    finally:
        postgres_server.ensure_running()


async def test_postgres_pause_blocks_then_unpause_answers(
    postgres_server: PostgresServerContainer, database_url: str
) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        postgres_server.pause()
        try:
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT 1", timeout=1.0)
        finally:
            postgres_server.unpause()
    finally:
        conn.terminate()  # its protocol state is unknown after the cancelled query
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await conn.close()


# ----------------------------------------------------------------------------- broker


async def test_broker_produce_and_consume_in_a_group_with_committed_offsets(
    broker: BrokerContainer,
) -> None:
    topic, group = _topic(), f"g-{uuid.uuid4().hex[:8]}"
    producer = _producer(broker.bootstrap_servers)
    await producer.start()
    try:
        # One key, so one partition and a defined order (Tansu auto-creates topics with 4 partitions).
        sent = [await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k") for i in range(3)]
        partition = sent[0].partition
        assert {md.partition for md in sent} == {partition}
    finally:
        await producer.stop()

    consumer = _consumer(broker.bootstrap_servers, topic, group)
    await consumer.start()
    try:
        got = await _consume(consumer, 3)
        assert got == [b"m0", b"m1", b"m2"]
        await consumer.commit()
        tp = TopicPartition(topic, partition)
        assert await consumer.committed(tp) == 3
    finally:
        await consumer.stop()

    # A new member of the same group resumes after the committed offset: nothing left.
    producer = _producer(broker.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"m3", key=b"k")
    finally:
        await producer.stop()
    consumer = _consumer(broker.bootstrap_servers, topic, group)
    await consumer.start()
    try:
        assert await _consume(consumer, 1) == [b"m3"]
    finally:
        await consumer.stop()


async def test_broker_pause_unpause_still_delivers(broker: BrokerContainer) -> None:
    topic, group = _topic(), f"g-{uuid.uuid4().hex[:8]}"
    producer = _producer(broker.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before", key=b"k")
        broker.pause()
        try:
            pending = asyncio.ensure_future(producer.send_and_wait(topic, b"during", key=b"k"))
            await asyncio.sleep(1.0)
            assert not pending.done(), "a paused broker must not acknowledge"
        finally:
            broker.unpause()
        await asyncio.wait_for(pending, timeout=15)
        await producer.send_and_wait(topic, b"after", key=b"k")
    finally:
        await producer.stop()

    consumer = _consumer(broker.bootstrap_servers, topic, group)
    await consumer.start()
    try:
        assert await _consume(consumer, 3) == [b"before", b"during", b"after"]
    finally:
        await consumer.stop()


async def test_broker_restart_keeps_port_but_loses_topics(
    broker_factory: Callable[[], BrokerContainer],
) -> None:
    private = broker_factory()
    topic = _topic()
    port = private.port
    producer = _producer(private.bootstrap_servers)
    await producer.start()
    try:
        before = await producer.send_and_wait(topic, b"lost", key=b"k")
        assert before.offset == 0
    finally:
        await producer.stop()

    private.restart()
    assert private.port == port

    # Tansu is in memory: the old message is gone, the broker works again on the same port.
    producer = _producer(private.bootstrap_servers)
    await producer.start()
    try:
        after = await producer.send_and_wait(topic, b"new", key=b"k")
    finally:
        await producer.stop()
    # Same key, same partition: offset 0 again means the partition's log started over.
    assert (after.partition, after.offset) == (before.partition, 0)
    consumer = _consumer(private.bootstrap_servers, topic, f"g-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    try:
        assert await _consume(consumer, 1) == [b"new"]
        tp = TopicPartition(topic, after.partition)
        assert (await consumer.end_offsets([tp]))[tp] == 1
    finally:
        await consumer.stop()
