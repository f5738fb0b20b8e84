"""No change event is lost when the writer is SIGKILLed around its commits and sends.

The writer process (`python -m apptsync.cli writer`, page writer and change relay) is killed from
three sides while it imports seeded pages: its fault hook kills it right after a database commit,
before the relay could send that commit's events (tests/hooked_services.py's crash fault);
the same hook kills it after the relay's send was acknowledged, before the outbox rows are deleted (a
duplicate must follow, with the same version); and the test kills it at random moments. A crash-free
writer finishes. Then, for every appointment, the topic holds every version from 1 to the row's
`row_version` (nothing lost, no event without a change), and copies of one version are identical.

Every loop is bounded in count and time; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from apptsync.shared.change_events import decode_change
from apptsync.shared.kafka import ensure_topics
from apptsync.shared.settings import KafkaSettings
from tests.containers.fixtures import BrokerContainer, free_port
from tests.integration.writer.test_writer_crash import (
    FINISH_SECONDS,
    HOOK_LOG_LINE,
    LAUNCH_SECONDS,
    PAGES_PER_RUN,
    POLL_SECONDS,
    migrated_url,
    produce,
    recorded_pages,
    run_settings,
    seeded_import,
    start_writer,
    wait_for_progress,
    wait_until_serving,
    writer_env,
)
from tests.integration.writer.writer_database import insert_job

pytestmark = pytest.mark.e2e
__all__ = ["migrated_url"]  # the fixture, imported so that pytest finds it here

RUNS = 4
CONCURRENT_RUNS = 2
MAX_CRASH_LAUNCHES = 3
FAULT_PROBABILITY = 0.2


@dataclass
class RunReport:
    kills: int = 0
    hook_kills: int = 0
    events: int = 0
    duplicates: int = 0


async def outbox_rows(owner: asyncpg.Connection, tenant_id: str) -> int:
    count: int = await owner.fetchval("SELECT count(*) FROM appointment_changes WHERE tenant_id = $1",
                                      uuid.UUID(tenant_id))
    return count


async def change_events(kafka: KafkaSettings, tenant_id: str, expected: set[tuple[str, int]]
                        ) -> dict[tuple[str, int], list[bytes]]:
    """(external id, version) -> the serialized copies in the topic, for one tenant: read until every
    expected event arrived and the topic is quiet, or FINISH_SECONDS passed."""
    consumer = AIOKafkaConsumer(kafka.change_events_topic, bootstrap_servers=kafka.bootstrap_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    try:
        deadline = time.monotonic() + FINISH_SECONDS
        quiet_polls = 0
        for _ in range(2000):
            batch = await consumer.getmany(timeout_ms=100)
            for record in (r for records in batch.values() for r in records):
                assert record.value is not None
                message = decode_change(record.value)
                if message.tenant_id == tenant_id:
                    found[message.external_id, message.row_version].append(record.value)
            quiet_polls = 0 if batch else quiet_polls + 1
            if (expected <= set(found) and quiet_polls >= 5) or time.monotonic() > deadline:
                break
    finally:
        await consumer.stop()
    return found


async def crash_run(run: int, owner_url: str, service_url: str, broker: BrokerContainer, log_dir: Path,
                    changes_topic: str) -> RunReport:
    owner = await asyncpg.connect(owner_url)
    try:
        return await _crash_run(run, owner, service_url, broker, log_dir, changes_topic)
    finally:
        await owner.close()


async def _crash_run(run: int, owner: asyncpg.Connection, service_url: str, broker: BrokerContainer,
                     log_dir: Path, changes_topic: str) -> RunReport:
    rng = random.Random(1000 + run)
    tenant_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    job_id = await insert_job(owner, tenant_id)
    messages, truth = seeded_import(rng, job_id, tenant_id)
    base = run_settings(broker, run)
    # One change-events topic for all runs, as in production: the runs share the database, hence the
    # outbox, and each run's writer publishes whatever shard it claims, other runs' tenants included.
    kafka = base.model_copy(update={"change_events_topic": changes_topic})
    await ensure_topics(kafka)
    await produce(kafka, job_id, messages)
    report = RunReport()
    log_path = log_dir / f"change-events-writer-{run}.log"

    def env(health_address: str = "127.0.0.1:0") -> dict[str, str]:
        values = writer_env(service_url, kafka, batch_pages=rng.choice([1, 2]), health_address=health_address)
        values["APPTSYNC_KAFKA_CHANGE_EVENTS_TOPIC"] = kafka.change_events_topic
        values["APPTSYNC_WRITER_CHANGE_RELAY_BATCH_SIZE"] = str(rng.choice([5, 20]))  # many relay rounds
        return values

    for _launch in range(MAX_CRASH_LAUNCHES):
        if await recorded_pages(owner, job_id) == PAGES_PER_RUN and await outbox_rows(owner, tenant_id) == 0:
            break
        process = await start_writer(env(), log_path, fault_probability=FAULT_PROBABILITY,
                                     fault_seed=rng.getrandbits(32))
        try:
            await wait_for_progress(process, owner, job_id, await recorded_pages(owner, job_id), LAUNCH_SECONDS)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
        finally:
            if process.returncode is None:
                process.kill()  # SIGKILL: no drain, no offset commit, no outbox commit
                report.kills += 1
            await asyncio.wait_for(process.wait(), timeout=10)

    health_address = f"127.0.0.1:{free_port()}"
    process = await start_writer(env(health_address), log_path, fault_probability=0.0, fault_seed=0)
    try:
        deadline = time.monotonic() + FINISH_SECONDS
        for _ in range(int(FINISH_SECONDS / POLL_SECONDS)):
            if time.monotonic() > deadline:
                break
            if await recorded_pages(owner, job_id) == PAGES_PER_RUN and await outbox_rows(owner, tenant_id) == 0:
                break
            await asyncio.sleep(POLL_SECONDS)
        await wait_until_serving(health_address)
    finally:
        if process.returncode is None:
            process.terminate()
        returncode = await asyncio.wait_for(process.wait(), timeout=30)
    assert returncode == 0, f"run {run}: the last writer did not drain cleanly (exit {returncode})"
    assert await recorded_pages(owner, job_id) == PAGES_PER_RUN, f"run {run}: pages missing"
    assert await outbox_rows(owner, tenant_id) == 0, f"run {run}: changes left unpublished"
    report.hook_kills = log_path.read_text(errors="replace").count(HOOK_LOG_LINE)

    versions = {row["external_id"]: row["row_version"] for row in await owner.fetch(
        "SELECT external_id, row_version FROM appointments WHERE tenant_id = $1", uuid.UUID(tenant_id))}
    assert set(versions) == set(truth.stored), f"run {run}: rows differ"
    expected = {(external_id, version) for external_id, last in versions.items() for version in range(1, last + 1)}
    found = await change_events(kafka, tenant_id, expected)
    assert set(found) == expected, (
        f"run {run}: lost {sorted(expected - set(found))[:10]}, unexpected {sorted(set(found) - expected)[:10]}")
    for key, copies in found.items():
        assert all(copy == copies[0] for copy in copies), f"run {run}: copies of {key} differ"
    report.events = len(found)
    report.duplicates = sum(len(copies) - 1 for copies in found.values())
    return report


async def test_no_change_event_is_lost_when_the_writer_is_killed_around_commits_and_sends(
    migrated_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> None:
    reports: list[RunReport] = []
    changes_topic = f"crash-changes-{uuid.uuid4().hex[:8]}"
    for first in range(0, RUNS, CONCURRENT_RUNS):
        reports.extend(await asyncio.gather(*(
            crash_run(run, migrated_url, service_database_url, broker, tmp_path, changes_topic)
            for run in range(first, min(first + CONCURRENT_RUNS, RUNS)))))

    print("\nchange events crash test: " + ", ".join(  # shown with -s
        f"run {i}: {r.kills} test kills, {r.hook_kills} hook kills, {r.events} events, {r.duplicates} duplicates"
        for i, r in enumerate(reports)))
    # The crashes this test is about did happen, and a kill after a send did lead to a duplicate.
    assert sum(r.hook_kills for r in reports) >= 1
    assert sum(r.kills + r.hook_kills for r in reports) >= RUNS
    assert sum(r.duplicates for r in reports) >= 1
