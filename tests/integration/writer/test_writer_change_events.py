"""Change events (migration 0013, apptsync.writer.change_relay) against a real PostgreSQL and broker.

Every path that changes an appointment leaves exactly one outbox row per real change, with the row's
new version: the writer's insert, update and cancellation stub, the reconciliation's deletion mark, a
revival. Nothing does for an unchanged row, a bookkeeping-only update or the retention prune. The
writes run as the services' role (row-level security on, as in production); the relay publishes the
outbox in order per key to the topic and empties it.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from apptsync.shared.change_events import ChangeKind, OutboxChange, classify_change, decode_change
from apptsync.shared.db.change_outbox import claim_changes, delete_changes, outbox_change
from apptsync.shared.db.jobs import reconcile_deletions
from apptsync.shared.db.retention import prune
from apptsync.shared.kafka import create_producer, ensure_topics
from apptsync.shared.retention import PruneBudget, retention_cutoffs
from apptsync.shared.settings import KafkaSettings
from apptsync.v1 import change_events_pb2
from apptsync.writer.accounting import DecodedPage, decode_page
from apptsync.writer.change_relay import ChangeRelay
from apptsync.writer.store import write_pages
from tests.containers.fixtures import BrokerContainer
from tests.integration.writer.writer_database import padded
from tests.unit.writer.page_builders import OTHER_TENANT, T0, TENANT, page, with_stubs

pytestmark = pytest.mark.integration

CreateJob = Callable[..., Awaitable[str]]
LEASE_OWNER = "fetcher-test"
# (external id, row version) -> (kind, changed fields)
Events = dict[tuple[str, int], tuple[ChangeKind, tuple[str, ...]]]


@pytest.fixture
async def service(connection: asyncpg.Connection, service_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """The services' role on the migrated database (`connection` is the owner that migrated it)."""
    conn = await asyncpg.connect(service_database_url)
    try:
        yield conn
    finally:
        await conn.close()


def rows_page(job_id: str, external_ids: list[str], *, page_no: int, version: int = 0,
              tenant_id: str = TENANT) -> DecodedPage:
    rows = [padded(external_id, version=version, observed_at=T0 + timedelta(minutes=version))
            for external_id in external_ids]
    return decode_page(page(rows, page_no=page_no, job_id=job_id, tenant_id=tenant_id).SerializeToString())


def stubs_page(job_id: str, external_ids: list[str], *, page_no: int) -> DecodedPage:
    base = page([], page_no=page_no, job_id=job_id)
    return decode_page(with_stubs(base, external_ids, observed_at=T0 + timedelta(hours=1)).SerializeToString())


async def running_job_of_connection(owner: asyncpg.Connection, tenant_id: str) -> str:
    """A RUNNING job of the pages' connection ('conn-1'), leased to LEASE_OWNER, whose window holds T0."""
    job_id = str(uuid.uuid4())
    await owner.execute(
        """INSERT INTO import_jobs (job_id, tenant_id, external_source, connection_id, state, window_start,
               window_end, page_size, max_pages, max_in_flight_pages, stop_policy, stop_after_pages,
               deadline_at, first_import, lease_owner, lease_expires_at)
           VALUES ($1::uuid, $2, 'acuity', 'conn-1', 'RUNNING', $3, $4, 100, 1000, 8, 'NEVER', 1,
                   now() + interval '1 hour', false, $5, now() + interval '1 hour')""",
        job_id, tenant_id, T0 - timedelta(days=30), T0 + timedelta(days=30), LEASE_OWNER,
    )
    return job_id


async def outbox(owner: asyncpg.Connection) -> list[OutboxChange]:
    """Every pending change, oldest first (read as the owner: the services' role may only insert)."""
    rows = await owner.fetch(
        """SELECT change_id, tenant_id::text AS tenant_id, external_source, external_id, row_version,
                  previous::text AS previous, state::text AS state, raw_changed
           FROM appointment_changes ORDER BY change_id""")
    return [outbox_change(row) for row in rows]


def events_of(changes: list[OutboxChange]) -> Events:
    events: Events = {}
    for change in changes:
        key = (change.external_id, change.row_version)
        assert key not in events, f"two events for {key}"
        events[key] = classify_change(change.previous, change.state, raw_changed=change.raw_changed)
    return events


async def versions(owner: asyncpg.Connection) -> dict[str, int]:
    rows = await owner.fetch("SELECT external_id, row_version FROM appointments WHERE tenant_id = $1", TENANT)
    return {row["external_id"]: row["row_version"] for row in rows}


async def test_one_event_per_committed_change_on_every_path_and_none_for_unchanged_rows(
    connection: asyncpg.Connection, service: asyncpg.Connection, create_job: CreateJob
) -> None:
    owner = connection
    job = await create_job(TENANT)

    await write_pages(service, [rows_page(job, ["a1", "a2", "a3"], page_no=1)])
    await write_pages(service, [rows_page(job, ["a1", "a2", "a3"], page_no=2)])  # identical: unchanged
    await write_pages(service, [rows_page(job, ["a1"], page_no=3, version=1)])  # new content
    await write_pages(service, [stubs_page(job, ["a2"], page_no=4)])  # Google-style deletion notice
    # A complete walk that saw only a1: a2 and a3 are marked deleted (the fetcher's reconciliation).
    walk = await running_job_of_connection(owner, TENANT)
    await write_pages(service, [rows_page(walk, ["a1"], page_no=1, version=1)])  # unchanged
    async with service.transaction():
        marked = await reconcile_deletions(service, job_id=walk, lease_owner=LEASE_OWNER, now=datetime.now(UTC))
    assert marked == 2
    await write_pages(service, [rows_page(job, ["a3"], page_no=5)])  # seen again: revived
    assert await versions(owner) == {"a1": 2, "a2": 3, "a3": 3}
    before_prune = events_of(await outbox(owner))

    # Bookkeeping only (no event), then the retention prune empties the now old payloads (no event).
    await owner.execute("UPDATE appointments SET updated_at = now() - interval '90 days'")
    report = await prune(
        service,
        cutoffs=retention_cutoffs(datetime.now(UTC), raw_payload_days=30, ledger_days=30),
        batch_rows=100,
        budget=PruneBudget(max_batches=100, deadline_monotonic=time.monotonic() + 60),
        monotonic=time.monotonic,
    )
    assert report.raw_payloads_pruned == 3
    # The unchanged re-import after the prune writes nothing either.
    await write_pages(service, [rows_page(job, ["a1"], page_no=6, version=1)])

    assert events_of(await outbox(owner)) == before_prune == {
        ("a1", 1): (ChangeKind.INSERTED, ()),
        ("a2", 1): (ChangeKind.INSERTED, ()),
        ("a3", 1): (ChangeKind.INSERTED, ()),
        ("a1", 2): (ChangeKind.UPDATED, ("raw", "title")),
        ("a2", 2): (ChangeKind.CANCELED, ("status",)),
        ("a2", 3): (ChangeKind.DELETED, ("deleted_at",)),
        ("a3", 2): (ChangeKind.DELETED, ("deleted_at",)),
        ("a3", 3): (ChangeKind.REVIVED, ("deleted_at",)),
    }
    assert await versions(owner) == {"a1": 2, "a2": 3, "a3": 3}


async def test_the_services_role_sees_only_its_tenants_outbox_rows_and_cannot_read_them_directly(
    connection: asyncpg.Connection, service: asyncpg.Connection, create_job: CreateJob
) -> None:
    await write_pages(service, [rows_page(await create_job(TENANT), ["t1"], page_no=1)])
    await write_pages(service, [rows_page(await create_job(OTHER_TENANT), ["o1"], page_no=1, tenant_id=OTHER_TENANT)])

    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await service.fetch("SELECT * FROM appointment_changes")
    # The relay's definer function reaches every tenant's changes.
    claimed = set()
    for _round in range(16):  # one transaction per round, as the relay does; bounded by the shard count
        async with service.transaction():
            changes = await claim_changes(service, limit=100, first_shard=0)
            assert await delete_changes(service, [c.change_id for c in changes]) == len(changes)
        claimed |= {(c.tenant_id, c.external_id) for c in changes}
        if not changes:
            break
    assert claimed == {(TENANT, "t1"), (OTHER_TENANT, "o1")}
    assert await connection.fetchval("SELECT count(*) FROM appointment_changes") == 0


async def test_two_relays_never_claim_the_same_shard_at_once(
    connection: asyncpg.Connection, service: asyncpg.Connection, service_database_url: str, create_job: CreateJob
) -> None:
    job = await create_job(TENANT)
    await write_pages(service, [rows_page(job, [f"k{i}" for i in range(64)], page_no=1)])
    other = await asyncpg.connect(service_database_url)
    try:
        async with service.transaction(), other.transaction():
            first = await claim_changes(service, limit=10_000, first_shard=0)
            second = await claim_changes(other, limit=10_000, first_shard=0)  # same start: must skip it
            assert first and second
            assert {c.change_id for c in first}.isdisjoint({c.change_id for c in second})
            assert len({(await shard_of(service, c)) for c in first}) == 1
            assert {await shard_of(service, c) for c in first}.isdisjoint({await shard_of(service, c) for c in second})
    finally:
        await other.close()


async def shard_of(connection: asyncpg.Connection, change: OutboxChange) -> int:
    shard: int = await connection.fetchval(
        "SELECT apptsync_change_shard($1::uuid, $2, $3)", change.tenant_id, change.external_source, change.external_id)
    return shard


async def consumed(kafka: KafkaSettings, want: int) -> list[tuple[bytes, change_events_pb2.AppointmentChange]]:
    """Messages of the change-events topic (bounded wait until `want` arrived)."""
    consumer = AIOKafkaConsumer(kafka.change_events_topic, bootstrap_servers=kafka.bootstrap_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    messages: list[tuple[bytes, change_events_pb2.AppointmentChange]] = []
    try:
        deadline = time.monotonic() + 30
        for _ in range(600):
            batch = await consumer.getmany(timeout_ms=100)
            for record in (r for records in batch.values() for r in records):
                assert record.key is not None and record.value is not None
                messages.append((record.key, decode_change(record.value)))
            if len(messages) >= want or time.monotonic() > deadline:
                break
    finally:
        await consumer.stop()
    return messages


async def test_the_relay_publishes_every_change_in_order_per_key_and_empties_the_outbox(
    connection: asyncpg.Connection, service_database_url: str, broker: BrokerContainer, create_job: CreateJob
) -> None:
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers,
                          change_events_topic=f"changes-{uuid.uuid4().hex[:8]}", topic_partitions=2)
    await ensure_topics(kafka, topics=[kafka.change_events_topic])
    pool = await asyncpg.create_pool(service_database_url, min_size=1, max_size=2)
    assert pool is not None
    producer = create_producer(kafka, client_id="relay-test", downstream=True)
    await producer.start()
    try:
        job = await create_job(TENANT)
        ids = [f"r{i}" for i in range(30)]
        async with pool.acquire() as conn:
            await write_pages(conn, [rows_page(job, ids, page_no=1)])
            await write_pages(conn, [rows_page(job, ids[:10], page_no=2, version=1)])
            await write_pages(conn, [rows_page(job, ids[:5], page_no=3, version=2)])
        relay = ChangeRelay(pool=pool, producer=producer, topic=kafka.change_events_topic, batch_size=7,
                            poll_interval_seconds=0.05, drain_seconds=5, rng=random.Random(3),
                            monotonic=time.monotonic)
        stop = asyncio.Event()
        stop.set()  # run() then only drains: every pending change, and returns
        await asyncio.wait_for(relay.run(stop), timeout=30)
        assert await relay.publish_once() == 0

        messages = await consumed(kafka, want=45)
    finally:
        await producer.stop()
        await pool.close()

    assert len(messages) == 30 + 10 + 5
    assert await connection.fetchval("SELECT count(*) FROM appointment_changes") == 0
    by_key: dict[bytes, list[int]] = {}
    for key, message in messages:
        assert key == f"{message.tenant_id}/{message.external_source}/{message.external_id}".encode()
        by_key.setdefault(key, []).append(message.row_version)
        expected_kind = (change_events_pb2.CHANGE_KIND_INSERTED if message.row_version == 1
                         else change_events_pb2.CHANGE_KIND_UPDATED)
        assert message.kind == expected_kind
        assert message.state.connection_id == "conn-1"
        assert message.job_id == job
    # Per key, versions arrive in order (Kafka keeps one partition's order; a key has one partition).
    assert {key: sorted(found) for key, found in by_key.items()} == by_key
    assert sorted(len(found) for found in by_key.values()) == [1] * 20 + [2] * 5 + [3] * 5


async def test_two_relays_draining_together_keep_every_keys_order(
    connection: asyncpg.Connection, service_database_url: str, broker: BrokerContainer, create_job: CreateJob
) -> None:
    # Writer replicas each run a relay: they split the shards, and a key's events still arrive oldest first.
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers,
                          change_events_topic=f"changes-{uuid.uuid4().hex[:8]}", topic_partitions=3)
    await ensure_topics(kafka, topics=[kafka.change_events_topic])
    pool = await asyncpg.create_pool(service_database_url, min_size=2, max_size=3)
    assert pool is not None
    producers = [create_producer(kafka, client_id=f"relay-{i}", downstream=True) for i in range(2)]
    for producer in producers:
        await producer.start()
    try:
        job = await create_job(TENANT)
        ids = [f"k{i:02d}" for i in range(40)]
        async with pool.acquire() as conn:
            for version in range(3):
                await write_pages(conn, [rows_page(job, ids, page_no=version + 1, version=version)])
        relays = [
            ChangeRelay(pool=pool, producer=producer, topic=kafka.change_events_topic, batch_size=4,
                        poll_interval_seconds=0.05, drain_seconds=30, rng=random.Random(i), monotonic=time.monotonic)
            for i, producer in enumerate(producers)
        ]
        stop = asyncio.Event()
        stop.set()  # drain only
        await asyncio.wait_for(asyncio.gather(*(relay.run(stop) for relay in relays)), timeout=60)
        messages = await consumed(kafka, want=120)
    finally:
        for producer in producers:
            await producer.stop()
        await pool.close()

    by_key: dict[bytes, list[int]] = {}
    for key, message in messages:
        by_key.setdefault(key, []).append(message.row_version)
    assert len(by_key) == 40
    assert all(found == [1, 2, 3] for found in by_key.values()), by_key
    assert await connection.fetchval("SELECT count(*) FROM appointment_changes") == 0
