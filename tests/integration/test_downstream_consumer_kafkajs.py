"""A non-Python downstream consumer end to end: kafkajs (Node.js, from the npm registry, no codec
plugins) reads the job-events and change-events topics as apptsync produces them, and protobufjs
decodes them from protos/.

kafkajs cannot read zstd ("ZSTD compression not implemented"), the codec of apptsync's internal
pages; the downstream topics are produced through `create_producer(..., downstream=True)`, gzip by
default. The change events come the production way: pages written by the writer's store as the
services' role, the outbox published by the writer's ChangeRelay. The JobFinished event is sent by the
producer the fetcher uses for it.

Needs node and npm (tests/consumers/kafkajs pins kafkajs and protobufjs with a lockfile; `npm ci`
installs them into a temporary directory). Either missing is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from apptsync.shared.db.migrator import migrate
from apptsync.shared.kafka import create_producer, ensure_topics
from apptsync.shared.settings import KafkaSettings
from apptsync.v1 import imports_pb2
from apptsync.writer.change_relay import ChangeRelay
from apptsync.writer.store import write_pages
from tests.containers.fixtures import BrokerContainer
from tests.integration.writer.test_writer_change_events import rows_page, stubs_page
from tests.integration.writer.writer_database import insert_job
from tests.unit.writer.page_builders import TENANT

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONSUMER_DIR = REPO / "tests" / "consumers" / "kafkajs"
PROTOS_DIR = REPO / "protos"
NPM_CI_TIMEOUT_SECONDS = 300
CONSUME_TIMEOUT_MS = 60_000


def node_tools() -> tuple[str, str]:
    """Paths of node and npm; fails the test loudly when either is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "node and npm are required for the kafkajs consumer test (Node.js 18+ with npm on PATH); "
            f"found node={node}, npm={npm}"
        )
    return node, npm


def installed_consumer(tmp_path: Path, npm: str) -> Path:
    """The consumer package copied to `tmp_path` with its locked dependencies installed (`npm ci`)."""
    target = tmp_path / "kafkajs-consumer"
    target.mkdir()
    for name in ("package.json", "package-lock.json", "consume.js"):
        shutil.copy2(CONSUMER_DIR / name, target / name)
    completed = subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=target, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT_SECONDS, check=False,
    )
    assert completed.returncode == 0, f"npm ci failed:\n{completed.stdout}\n{completed.stderr}"
    return target


async def run_kafkajs(node: str, consumer_dir: Path, bootstrap: str, wanted: dict[str, tuple[str, int]],
                      timeout_ms: int = CONSUME_TIMEOUT_MS) -> tuple[int | None, list[dict[str, Any]], str]:
    """Runs consume.js until it has `count` messages of every topic or `timeout_ms` passed: its exit
    status, decoded messages and stderr."""
    specs = [f"{topic}={message_type}={count}" for topic, (message_type, count) in wanted.items()]
    process = await asyncio.create_subprocess_exec(
        node, "consume.js", bootstrap, str(PROTOS_DIR), str(timeout_ms), *specs,
        cwd=consumer_dir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout_ms / 1000 + 30)
    messages = [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]
    return process.returncode, messages, stderr.decode()


async def consume_with_kafkajs(node: str, consumer_dir: Path, bootstrap: str, wanted: dict[str, tuple[str, int]]
                               ) -> list[dict[str, Any]]:
    """Runs consume.js until it has `count` messages of every topic; its decoded messages."""
    returncode, messages, stderr = await run_kafkajs(node, consumer_dir, bootstrap, wanted)
    assert returncode == 0, f"kafkajs consumer exited {returncode}:\n{stderr}"
    return messages


async def test_kafkajs_reads_and_decodes_job_events_and_change_events(
    database_url: str, service_database_url: str, broker: BrokerContainer, tmp_path: Path
) -> None:
    node, npm = node_tools()
    consumer_dir = installed_consumer(tmp_path, npm)
    suffix = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, job_events_topic=f"job-events-{suffix}",
                          change_events_topic=f"changes-{suffix}", topic_partitions=2)
    assert kafka.compression_type == "zstd" and kafka.downstream_compression_type == "gzip"
    await ensure_topics(kafka, topics=[kafka.job_events_topic, kafka.change_events_topic])

    owner = await asyncpg.connect(database_url)
    pool = await asyncpg.create_pool(service_database_url, min_size=1, max_size=2)
    assert pool is not None
    producer = create_producer(kafka, client_id="kafkajs-test", downstream=True)
    await producer.start()
    try:
        await migrate(owner)
        job_id = await insert_job(owner, TENANT)
        async with pool.acquire() as conn:
            await write_pages(conn, [rows_page(job_id, ["1147384", "1147385"], page_no=1)])
            await write_pages(conn, [rows_page(job_id, ["1147384"], page_no=2, version=1)])
            await write_pages(conn, [stubs_page(job_id, ["1147385"], page_no=3)])
        relay = ChangeRelay(pool=pool, producer=producer, topic=kafka.change_events_topic, batch_size=100,
                            poll_interval_seconds=0.05, drain_seconds=10, rng=random.Random(1),
                            monotonic=time.monotonic)
        stop = asyncio.Event()
        stop.set()  # drain only
        await asyncio.wait_for(relay.run(stop), timeout=30)
        finished = imports_pb2.JobFinished(job=imports_pb2.Job(
            job_id=job_id, tenant_id=TENANT, source=imports_pb2.SOURCE_ACUITY, connection_id="conn-1",
            state=imports_pb2.JOB_STATE_SUCCEEDED, counts=imports_pb2.JobCounts(inserted=2, updated=2),
            stop_reason="provider exhausted"))
        await producer.send_and_wait(kafka.job_events_topic, finished.SerializeToString(), key=job_id.encode())
    finally:
        await producer.stop()
        await pool.close()
        await owner.close()

    messages = await consume_with_kafkajs(node, consumer_dir, broker.bootstrap_servers, {
        kafka.change_events_topic: ("apptsync.v1.AppointmentChange", 4),
        kafka.job_events_topic: ("apptsync.v1.JobFinished", 1),
    })

    (job_event,) = [m["value"]["job"] for m in messages if m["topic"] == kafka.job_events_topic]
    assert (job_event["job_id"], job_event["state"], job_event["stop_reason"]) == (
        job_id, "JOB_STATE_SUCCEEDED", "provider exhausted")
    assert job_event["counts"] == {"inserted": "2", "updated": "2"}  # int64 as strings (JavaScript numbers)
    changes = [m for m in messages if m["topic"] == kafka.change_events_topic]
    seen = {(m["value"]["external_id"], m["value"]["row_version"]): m for m in changes}
    assert sorted(seen) == [("1147384", "1"), ("1147384", "2"), ("1147385", "1"), ("1147385", "2")]
    for (external_id, _version), message in seen.items():
        assert message["key"] == f"{TENANT}/acuity/{external_id}"
        assert message["value"]["tenant_id"] == TENANT
        assert message["value"]["job_id"] == job_id
    assert seen["1147384", "1"]["value"]["kind"] == "CHANGE_KIND_INSERTED"
    assert seen["1147384", "2"]["value"]["kind"] == "CHANGE_KIND_UPDATED"
    assert seen["1147384", "2"]["value"]["changed_fields"] == ["raw", "title"]
    assert seen["1147384", "2"]["value"]["state"]["title"] == "Session v1"
    canceled = seen["1147385", "2"]["value"]
    assert (canceled["kind"], canceled["changed_fields"]) == ("CHANGE_KIND_CANCELED", ["status"])
    assert canceled["state"]["status"] == "APPOINTMENT_STATUS_CANCELED"
    assert canceled["state"]["price"] == {"amount_minor": "4500", "currency": "EUR"}


async def test_kafkajs_cannot_read_the_internal_zstd_codec_which_is_why_downstream_topics_use_gzip(
    broker: BrokerContainer, tmp_path: Path
) -> None:
    # The control of the test above: the same consumer, a topic produced the way the pages are.
    node, npm = node_tools()
    consumer_dir = installed_consumer(tmp_path, npm)
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, job_events_topic=f"zstd-{uuid.uuid4().hex[:8]}",
                          topic_partitions=1)
    await ensure_topics(kafka, topics=[kafka.job_events_topic])
    producer = create_producer(kafka, client_id="kafkajs-zstd-test")  # not downstream: zstd
    await producer.start()
    try:
        event = imports_pb2.JobFinished(job=imports_pb2.Job(job_id=str(uuid.uuid4()), tenant_id=TENANT))
        await producer.send_and_wait(kafka.job_events_topic, event.SerializeToString(), key=b"job")
    finally:
        await producer.stop()

    returncode, messages, stderr = await run_kafkajs(
        node, consumer_dir, broker.bootstrap_servers, {kafka.job_events_topic: ("apptsync.v1.JobFinished", 1)},
        timeout_ms=15_000)

    assert (returncode, messages) == (2, [])  # timed out without a message
    assert "ZSTD compression not implemented" in stderr
