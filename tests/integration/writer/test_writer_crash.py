"""The writer process (`apptsync writer`, started through tests/hooked_services.py) SIGKILLed at random
points, 10 seeded runs.

Guards invariants 1 and 3 under crashes: the page ledger written in the same transaction as the rows
(a redelivered page replays its stored result instead of counting again), results produced before
the offsets are committed, and the unique key (no duplicates). Kills come from two sides: the test
SIGKILLs the process at a random moment after it made progress, and the writer's test-only fault
hook (`--crash-after-commit-probability`, injected by tests/hooked_services.py) SIGKILLs it right after a database
commit, before its results or offsets are committed. Remove the ledger replay and the inserted
counts double; commit offsets before the database and rows go missing.

Every loop is bounded in count and time; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apptsync.shared.appointments import CanonicalAppointment
from apptsync.shared.db.migrator import migrate
from apptsync.shared.kafka import ensure_topics
from apptsync.shared.settings import KafkaSettings
from apptsync.v1 import pages_pb2
from tests.containers.fixtures import BrokerContainer, free_port
from tests.hooked_services import hooked_command
from tests.integration.writer.writer_database import insert_job, padded
from tests.unit.writer.page_builders import T0, page

pytestmark = pytest.mark.integration

RUNS = 10
PAGES_PER_RUN = 8
ROWS_PER_PAGE = 25
ID_POOL = 120  # ids repeat across pages: later pages update, repeat or go stale
MAX_CRASH_LAUNCHES = 2
FAULT_PROBABILITY = 0.15  # per hook call (two per batch: after the commit, after the results)
CONCURRENT_RUNS = 2  # runs are independent (own tenant, job, topics, group): overlap their waits
LAUNCH_SECONDS = 15.0  # bound of one launch's wait for progress
FINISH_SECONDS = 30.0  # bound of the last, crash-free launch
POLL_SECONDS = 0.05
HOOK_LOG_LINE = "fault hook: SIGKILL after a database commit"


@dataclass
class Truth:
    """What the database must hold after the run: an independent model of the pages in order."""

    stored: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # external id -> (hash, version)
    # page -> (inserted, updated, unchanged, stale)
    per_page: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)

    def apply(self, page_no: int, rows: Sequence[tuple[CanonicalAppointment, int]]) -> None:
        inserted = updated = unchanged = stale = 0
        for appointment, version in rows:
            known = self.stored.get(appointment.external_id)
            if known is None:
                inserted += 1
            elif known[0] == appointment.content_hash:
                unchanged += 1
                continue
            elif known[1] > version:
                stale += 1  # observed earlier than what is stored: newer wins
                continue
            else:
                updated += 1
            self.stored[appointment.external_id] = (appointment.content_hash, version)
        self.per_page[page_no] = (inserted, updated, unchanged, stale)


def seeded_import(rng: random.Random, job_id: str, tenant_id: str) -> tuple[list[bytes], Truth]:
    """The pages of one import (version v of a record is observed v hours after T0) and their truth."""
    truth = Truth()
    messages = []
    for page_no in range(1, PAGES_PER_RUN + 1):
        rows = []
        for index in rng.sample(range(ID_POOL), ROWS_PER_PAGE):
            version = rng.randrange(3)
            rows.append((padded(f"r{index:03d}", version=version, observed_at=T0 + timedelta(hours=version)),
                         version))
        truth.apply(page_no, rows)
        messages.append(page([a for a, _ in rows], page_no=page_no, job_id=job_id,
                             tenant_id=tenant_id).SerializeToString())
    return messages, truth


def run_settings(broker: BrokerContainer, run: int) -> KafkaSettings:
    suffix = f"{run}-{uuid.uuid4().hex[:8]}"
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers, pages_topic=f"crash-pages-{suffix}",
        page_results_topic=f"crash-results-{suffix}", dead_letter_topic=f"crash-dead-{suffix}",
        job_events_topic=f"crash-events-{suffix}", writer_group_id=f"crash-writer-{suffix}",
        topic_partitions=1, session_timeout_ms=1000, heartbeat_interval_ms=200, request_timeout_ms=10_000,
    )


def writer_env(database_url: str, kafka: KafkaSettings, *, batch_pages: int,
               health_address: str = "127.0.0.1:0") -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("APPTSYNC_")}
    env.update({
        "APPTSYNC_DATABASE_URL": database_url,
        "APPTSYNC_DATABASE_POOL_MIN_SIZE": "1",
        "APPTSYNC_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "APPTSYNC_KAFKA_PAGES_TOPIC": kafka.pages_topic,
        "APPTSYNC_KAFKA_PAGE_RESULTS_TOPIC": kafka.page_results_topic,
        "APPTSYNC_KAFKA_DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
        "APPTSYNC_KAFKA_JOB_EVENTS_TOPIC": kafka.job_events_topic,
        "APPTSYNC_KAFKA_WRITER_GROUP_ID": kafka.writer_group_id,
        "APPTSYNC_KAFKA_TOPIC_PARTITIONS": "1",
        "APPTSYNC_KAFKA_SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
        "APPTSYNC_KAFKA_HEARTBEAT_INTERVAL_MS": str(kafka.heartbeat_interval_ms),
        "APPTSYNC_WRITER_MAX_BATCH_PAGES": str(batch_pages),
        "APPTSYNC_WRITER_HEALTH_ADDRESS": health_address,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    return env


async def start_writer(env: dict[str, str], log_path: Path, *, fault_probability: float,
                       fault_seed: int) -> asyncio.subprocess.Process:
    """The writer with the crash fault injected (a SIGKILL after a database commit, per chance)."""
    command = hooked_command(crash_after_commit_probability=fault_probability, fault_seed=fault_seed)("writer")
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(*command, env=env, stdout=log, stderr=log)


async def recorded_pages(owner: asyncpg.Connection, job_id: str) -> int:
    count: int = await owner.fetchval("SELECT count(*) FROM import_job_pages WHERE job_id = $1", job_id)
    return count


async def produce(kafka: KafkaSettings, job_id: str, messages: Sequence[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    await producer.start()
    try:
        acknowledgements = [await producer.send(kafka.pages_topic, value=m, key=job_id.encode()) for m in messages]
        await asyncio.gather(*acknowledgements)
    finally:
        await producer.stop()


async def results_in_topic(kafka: KafkaSettings, want: set[int]) -> list[pages_pb2.PageResult]:
    """Every PageResult in the topic (waits, bounded, until every page in `want` has one).

    Counted by page number, not by message: replays of early pages arrive beside the late pages'
    first results, so a count of messages can be reached while a late page's result is in flight."""
    consumer = AIOKafkaConsumer(kafka.page_results_topic, bootstrap_servers=kafka.bootstrap_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    results: list[pages_pb2.PageResult] = []
    try:
        deadline = time.monotonic() + FINISH_SECONDS
        quiet_polls = 0
        for _ in range(2000):
            batch = await consumer.getmany(timeout_ms=100)
            for record in (r for records in batch.values() for r in records):
                result = pages_pb2.PageResult()
                result.ParseFromString(record.value)
                results.append(result)
            quiet_polls = 0 if batch else quiet_polls + 1
            if ({r.page_no for r in results} >= want and quiet_polls >= 3) or time.monotonic() > deadline:
                break
    finally:
        await consumer.stop()
    return results


async def wait_until_serving(address: str) -> None:
    """Until the writer's health endpoint says SERVING (bounded in attempts and seconds)."""
    deadline = time.monotonic() + FINISH_SECONDS
    for _ in range(int(FINISH_SECONDS / POLL_SECONDS)):
        with contextlib.suppress(grpc.RpcError):
            async with grpc.aio.insecure_channel(address) as channel:
                stub: Any = health_pb2_grpc.HealthStub(channel)  # generated stub: no method types
                response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(POLL_SECONDS)


@dataclass
class RunReport:
    launches: int = 0
    test_kills: int = 0
    hook_kills: int = 0
    redelivered_results: int = 0


async def wait_for_progress(process: asyncio.subprocess.Process, owner: asyncpg.Connection, job_id: str,
                            above: int, seconds: float) -> None:
    """Until the process exited or recorded more than `above` pages (bounded by `seconds`)."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / POLL_SECONDS) + 1):
        if process.returncode is not None or time.monotonic() > deadline:
            return
        if await recorded_pages(owner, job_id) > above:
            return
        await asyncio.sleep(POLL_SECONDS)


async def crash_run(run: int, owner_url: str, service_url: str, broker: BrokerContainer,
                    log_dir: Path) -> RunReport:
    """One seeded import through a writer killed up to MAX_CRASH_LAUNCHES times, then finished by a
    crash-free writer; asserts the database and the results against the truth."""
    owner = await asyncpg.connect(owner_url)
    try:
        return await _crash_run(run, owner, service_url, broker, log_dir)
    finally:
        await owner.close()


async def _crash_run(run: int, owner: asyncpg.Connection, service_url: str, broker: BrokerContainer,
                     log_dir: Path) -> RunReport:
    rng = random.Random(run)
    tenant_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    job_id = await insert_job(owner, tenant_id)
    messages, truth = seeded_import(rng, job_id, tenant_id)
    kafka = run_settings(broker, run)
    await ensure_topics(kafka)
    await produce(kafka, job_id, messages)
    report = RunReport()
    log_path = log_dir / f"writer-run-{run}.log"

    for _launch in range(rng.randint(1, MAX_CRASH_LAUNCHES)):
        if await recorded_pages(owner, job_id) == PAGES_PER_RUN:
            break
        env = writer_env(service_url, kafka, batch_pages=rng.choice([1, 2, 3]))
        process = await start_writer(env, log_path, fault_probability=FAULT_PROBABILITY,
                                     fault_seed=rng.getrandbits(32))
        report.launches += 1
        try:
            await wait_for_progress(process, owner, job_id, await recorded_pages(owner, job_id), LAUNCH_SECONDS)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
        finally:
            if process.returncode is None:
                process.kill()  # SIGKILL: no drain, no offset commit
                report.test_kills += 1
            await asyncio.wait_for(process.wait(), timeout=10)

    health_address = f"127.0.0.1:{free_port()}"
    env = writer_env(service_url, kafka, batch_pages=rng.choice([1, 2, 3]), health_address=health_address)
    process = await start_writer(env, log_path, fault_probability=0.0, fault_seed=0)
    report.launches += 1
    try:
        deadline = time.monotonic() + FINISH_SECONDS
        for _ in range(int(FINISH_SECONDS / POLL_SECONDS)):
            if await recorded_pages(owner, job_id) == PAGES_PER_RUN or time.monotonic() > deadline:
                break
            await asyncio.sleep(POLL_SECONDS)
        results = await results_in_topic(kafka, set(truth.per_page))
        await wait_until_serving(health_address)  # SIGTERM before the handlers exist would just kill it
    finally:
        if process.returncode is None:
            process.terminate()  # SIGTERM: drains and leaves the group
        returncode = await asyncio.wait_for(process.wait(), timeout=20)
    report.hook_kills = log_path.read_text(errors="replace").count(HOOK_LOG_LINE)
    report.redelivered_results = sum(1 for r in results if r.redelivered)

    # Rows exact, no duplicates.
    rows = await owner.fetch(
        "SELECT external_id, content_hash FROM appointments WHERE tenant_id = $1", uuid.UUID(tenant_id))
    assert len(rows) == len({row["external_id"] for row in rows}), f"run {run}: duplicate rows"
    assert {row["external_id"]: bytes(row["content_hash"]) for row in rows} == \
        {external_id: stored[0] for external_id, stored in truth.stored.items()}, f"run {run}: rows differ"
    # Every page counted once, exactly as the truth says; the job's counters are their sums.
    ledger = await owner.fetch(
        "SELECT page_no, inserted, updated, unchanged, stale FROM import_job_pages WHERE job_id = $1",
        job_id)
    ledger_counts = {r["page_no"]: (r["inserted"], r["updated"], r["unchanged"], r["stale"]) for r in ledger}
    assert ledger_counts == truth.per_page, \
        f"run {run}: page counts differ"
    job = await owner.fetchrow(
        "SELECT pages_written, records_fetched, inserted, updated, unchanged, stale FROM import_jobs WHERE job_id = $1",
        job_id)
    assert job is not None
    assert tuple(job) == (
        PAGES_PER_RUN, PAGES_PER_RUN * ROWS_PER_PAGE,
        *(sum(c[i] for c in truth.per_page.values()) for i in range(4))), f"run {run}: job counters differ"
    assert job["inserted"] == len(truth.stored)
    # Every page has a result; a replayed result repeats the recorded counts.
    assert {r.page_no for r in results} == set(truth.per_page), f"run {run}: pages without a result"
    for result in results:
        assert (result.inserted, result.updated, result.unchanged, result.stale) == truth.per_page[result.page_no]
    assert returncode == 0, f"run {run}: the last writer did not drain cleanly (exit {returncode})"
    return report


@pytest.fixture
async def migrated_url(database_url: str) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        await migrate(connection)
    finally:
        await connection.close()
    return database_url


async def test_a_writer_killed_at_random_points_leaves_exact_rows_and_honest_counts(
    migrated_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> None:
    reports: list[RunReport] = []
    for first in range(0, RUNS, CONCURRENT_RUNS):
        reports.extend(await asyncio.gather(*(
            crash_run(run, migrated_url, service_database_url, broker, tmp_path)
            for run in range(first, min(first + CONCURRENT_RUNS, RUNS)))))

    summary = ", ".join(f"run {i}: {r.launches} launches, {r.test_kills} test kills, {r.hook_kills} hook kills, "
                        f"{r.redelivered_results} replays" for i, r in enumerate(reports))
    print(f"\nwriter crash test: {summary}")
    # The crashes this test is about did happen: after a commit (hook) and at random moments (test).
    assert sum(r.hook_kills for r in reports) >= 1
    assert sum(r.test_kills for r in reports) >= 1
    assert sum(r.redelivered_results for r in reports) >= 1
