"""One import, one trace: gateway, fetcher and writer run as real processes and export their spans over
OTLP/gRPC to a receiver this test starts on 127.0.0.1. Also: every metrics port answers, and a canary
secret in the connection's credentials appears in no span, no log line and no Kafka message."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from apptsync.cli.devstack import ServiceSet, format_dev_keyring
from apptsync.cli.devstack.ports import pick_free_ports
from apptsync.shared.timestamps import timestamp
from apptsync.v1 import imports_pb2, imports_pb2_grpc
from tests.containers.fixtures import BrokerContainer
from tests.e2e.otlp_receiver import (
    SPAN_KIND_CONSUMER,
    SPAN_KIND_PRODUCER,
    SPAN_KIND_SERVER,
    ReceivedSpan,
    ReceiverProcess,
    trace_receiver,
)
from tests.e2e.system import TENANT_ID, TENANT_TOKEN, system_env

pytestmark = pytest.mark.e2e
CONNECTION_ID = "acuity-traced"
CANARY = f"canary-{uuid.uuid4().hex}"
API_KEY = "demo-acuity-key"  # the simulator's demo account: a real credential of this connection
PAGES = 3
SERVICES = {"apptsync-gateway", "apptsync-fetcher", "apptsync-writer"}
HTTP_STATUS, HTTP_STATUS_OLD = "http.response.status_code", "http.status_code"
TERMINAL = {imports_pb2.JOB_STATE_SUCCEEDED, imports_pb2.JOB_STATE_FAILED, imports_pb2.JOB_STATE_CANCELED}
METRIC_NAMES = {
    "gateway": ["apptsync_gateway_imports_started_total"],
    "fetcher": [
        "apptsync_fetcher_pages_fetched_total",
        "apptsync_provider_requests_total",
        "apptsync_provider_request_duration_seconds",
        "apptsync_provider_retries_total",
        "apptsync_fetcher_pages_in_flight",
        "apptsync_jobs_finished_total",
        "apptsync_job_duration_seconds",
    ],
    "writer": [
        "apptsync_writer_pages_written_total",
        "apptsync_writer_records_total",
        "apptsync_writer_page_upsert_duration_seconds",
        "apptsync_writer_dead_letters_total",
        "apptsync_writer_consumer_lag_messages",
    ],
}


@dataclass
class TracedSystem:
    services: ServiceSet
    stub: imports_pb2_grpc.ImportServiceAsyncStub
    receiver: ReceiverProcess
    env: dict[str, str]
    bootstrap_servers: str
    log_dir: Path
    metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {TENANT_TOKEN}"),)


@asynccontextmanager
async def system_exporting_to(
    receiver: ReceiverProcess, collector_port: int, *, database_url: str, broker: BrokerContainer, tmp_path: Path
) -> AsyncIterator[TracedSystem]:
    """Gateway, fetcher, writer and simulator exporting spans over OTLP/gRPC to 127.0.0.1:collector_port."""
    env = system_env(
        tmp_path,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector_port}",
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_EXPORTER_OTLP_TIMEOUT="2",
        OTEL_TRACES_SAMPLER="parentbased_always_on",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_RESOURCE_ATTRIBUTES="k8s.pod.name=e2e-pod,deployment.environment=test",
    )
    services = ServiceSet(
        database_url=database_url,
        bootstrap_servers=broker.bootstrap_servers,
        log_dir=tmp_path / "logs",
        credentials_keyring=format_dev_keyring(uuid.uuid4().bytes * 2),
        extra_env=env,
    )
    async with services, grpc.aio.insecure_channel(services.addresses.gateway_address) as channel:
        yield TracedSystem(
            services=services,
            stub=imports_pb2_grpc.ImportServiceStub(channel),
            receiver=receiver,
            env=env,
            bootstrap_servers=broker.bootstrap_servers,
            log_dir=tmp_path / "logs",
        )


@pytest.fixture
async def traced_system(database_url: str, broker: BrokerContainer, tmp_path: Path) -> AsyncIterator[TracedSystem]:
    async with (
        trace_receiver(tmp_path) as receiver,
        system_exporting_to(
            receiver, receiver.port, database_url=database_url, broker=broker, tmp_path=tmp_path
        ) as system,
    ):
        yield system


@pytest.fixture
async def system_without_collector(
    database_url: str, broker: BrokerContainer, tmp_path: Path
) -> AsyncIterator[TracedSystem]:
    """The collector's port has nothing listening: every export fails."""
    (closed_port,) = pick_free_ports(1)
    async with system_exporting_to(
        ReceiverProcess(closed_port, tmp_path / "nothing-received.bin"),
        closed_port,
        database_url=database_url,
        broker=broker,
        tmp_path=tmp_path,
    ) as system:
        yield system


async def wait_until(condition: Callable[[], bool], *, timeout_seconds: float, what: str) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds:g} s waiting for {what}")
        await asyncio.sleep(0.2)


async def run_traced_import(system: TracedSystem) -> imports_pb2.Job:
    await system.stub.PutConnection(
        imports_pb2.PutConnectionRequest(
            tenant_id=TENANT_ID,
            connection_id=CONNECTION_ID,
            source=imports_pb2.SOURCE_ACUITY,
            base_url=f"{system.services.addresses.simulator_url}/acuity/api/v1",
            credentials={"user_id": "1001", "api_key": API_KEY},
        ),
        metadata=system.metadata,
        timeout=10,
    )
    # The canary, a credential no provider knows, reaches the gateway in a connection of its own,
    # stored unverified (a connection holds only its source's credential fields, and the simulator
    # would refuse this key); the imported connection's API_KEY is the secret the fetcher handles.
    await system.stub.PutConnection(
        imports_pb2.PutConnectionRequest(
            tenant_id=TENANT_ID,
            connection_id=f"{CONNECTION_ID}-canary",
            source=imports_pb2.SOURCE_ACUITY,
            base_url=f"{system.services.addresses.simulator_url}/acuity/api/v1",
            credentials={"user_id": "1001", "api_key": CANARY},
            skip_verification=True,
        ),
        metadata=system.metadata,
        timeout=10,
    )
    now = datetime.now(UTC)
    response = await system.stub.StartImport(
        imports_pb2.StartImportRequest(
            tenant_id=TENANT_ID,
            source=imports_pb2.SOURCE_ACUITY,
            connection_id=CONNECTION_ID,
            window=imports_pb2.TimeWindow(
                start=timestamp(now - timedelta(days=120)), end=timestamp(now + timedelta(days=120))
            ),
            options=imports_pb2.ImportOptions(page_size=50, max_pages=PAGES, stop_policy=imports_pb2.STOP_POLICY_NEVER),
        ),
        metadata=system.metadata,
        timeout=10,
    )
    job = response.job
    for _poll in range(600):
        if job.state in TERMINAL:
            return job
        await asyncio.sleep(0.2)
        job = await system.stub.GetJob(
            imports_pb2.GetJobRequest(tenant_id=TENANT_ID, job_id=job.job_id), metadata=system.metadata, timeout=10
        )
    raise AssertionError(f"job {job.job_id} did not end within 120 s")


async def read_topics_raw(
    bootstrap_servers: str, topics: list[str]
) -> list[tuple[str, bytes, list[tuple[str, bytes]]]]:
    """Every message of `topics` (value and headers), read from the beginning without a group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = []
        for topic in topics:
            for _attempt in range(50):
                found = consumer.partitions_for_topic(topic)
                if found:
                    break
                await consumer.topics()
                await asyncio.sleep(0.1)
            partitions += [TopicPartition(topic, p) for p in sorted(found or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        messages: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []
        for _poll in range(100):
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if all(positions[tp] >= ends[tp] for tp in partitions):
                break
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                messages += [(r.topic, r.value or b"", list(r.headers)) for r in records]
        return messages
    finally:
        await consumer.stop()


def one(spans: list[ReceivedSpan], **where: object) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, f"expected one span with {where}, found {len(found)}"
    return found[0]


async def test_one_import_is_one_trace_across_gateway_fetcher_kafka_and_writer(traced_system: TracedSystem) -> None:
    system = traced_system
    job = await run_traced_import(system)
    assert job.state == imports_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.counts.pages_written == job.counts.pages_fetched == PAGES
    assert len(job.trace_id) == 32, "GetJob returns the trace id of the StartImport call"

    # Metrics: every service's /metrics answers with its metric names while the system runs.
    async with httpx.AsyncClient(timeout=10) as client:
        for service, url in (
            ("gateway", system.services.addresses.gateway_metrics_url),
            ("fetcher", system.services.addresses.fetcher_metrics_url),
            ("writer", system.services.addresses.writer_metrics_url),
        ):
            assert url is not None
            text = (await client.get(url)).text
            for name in METRIC_NAMES[service]:
                assert f"# TYPE {name} " in text, f"{service} metrics lack {name}"
        fetcher_text = (await client.get(str(system.services.addresses.fetcher_metrics_url))).text
        assert f'apptsync_fetcher_pages_fetched_total{{source="acuity"}} {PAGES}.0' in fetcher_text
        assert 'apptsync_jobs_finished_total{source="acuity",state="SUCCEEDED"} 1.0' in fetcher_text

    # Spans: wait for the last hops (the job span ends when the job does) to be exported. Each process
    # exports on its own schedule, so the writer's spans of a page are awaited too, not only the
    # fetcher's (the fetcher's could all be in while the writer's last batch was not yet sent).
    def trace_spans() -> list[ReceivedSpan]:
        return [s for s in system.receiver.spans() if s.trace_id == job.trace_id]

    def complete() -> bool:
        spans = trace_spans()
        names = {(s.service, s.name) for s in spans}
        fetcher_consumed = sum(1 for s in spans if s.service == "apptsync-fetcher" and s.kind == SPAN_KIND_CONSUMER)
        writer_processed = sum(1 for s in spans if s.service == "apptsync-writer"
                               and s.name == f"{system.env['APPTSYNC_KAFKA_PAGES_TOPIC']} process")
        return ("apptsync-fetcher", "import job") in names and min(fetcher_consumed, writer_processed) >= PAGES

    await wait_until(complete, timeout_seconds=30, what="the import's spans")
    spans = trace_spans()

    # One trace id: every span about this job is in GetJob's trace.
    about_job = [s for s in system.receiver.spans() if s.attributes.get("apptsync.job_id") == job.job_id]
    assert about_job
    assert {s.trace_id for s in about_job} == {job.trace_id}
    assert {s.service for s in spans} >= SERVICES

    # StartImport (gateway) -> import job (fetcher).
    start_import = one(spans, service="apptsync-gateway", kind=SPAN_KIND_SERVER)
    assert start_import.name.endswith("/StartImport")
    job_span = one(spans, service="apptsync-fetcher", name="import job")
    assert job_span.parent_span_id == start_import.span_id

    pages_topic = system.env["APPTSYNC_KAFKA_PAGES_TOPIC"]
    results_topic = system.env["APPTSYNC_KAFKA_PAGE_RESULTS_TOPIC"]
    by_id = {s.span_id: s for s in spans}
    page_spans = [s for s in spans if s.name == "fetch page"]
    assert sorted(int(str(s.attributes["apptsync.page_no"])) for s in page_spans) == list(range(1, PAGES + 1))
    clients_pages: list[ReceivedSpan] = []
    for page in page_spans:
        assert page.parent_span_id == job_span.span_id
        children = [s for s in spans if s.parent_span_id == page.span_id]
        # The provider HTTP call(s) with their status codes (old or new HTTP semantic conventions).
        statuses = [s.attributes.get(HTTP_STATUS) or s.attributes.get(HTTP_STATUS_OLD) for s in children]
        if page.attributes.get("apptsync.records_fetched") == 0 and page.attributes.get("apptsync.contacts"):
            # A page of the clients stream: the list is read once (under its first page), then sent
            # in pages; nothing to normalize.
            clients_pages.append(page)
        else:
            assert 200 in statuses, f"no provider HTTP call under page {page.attributes['apptsync.page_no']}"
            assert any(s.name == "normalize" for s in children)
        (produce,) = [s for s in children if s.kind == SPAN_KIND_PRODUCER and s.name == f"{pages_topic} send"]
        # The writer's consume span is a child of the fetcher's produce span.
        (consume,) = [
            s
            for s in spans
            if s.service == "apptsync-writer"
            and s.name == f"{pages_topic} process"
            and s.parent_span_id == produce.span_id
        ]
        assert consume.attributes["apptsync.page_no"] == page.attributes["apptsync.page_no"]
        # ... which produces the page's result, which the fetcher consumes.
        (result_send,) = [s for s in spans if s.parent_span_id == consume.span_id and s.kind == SPAN_KIND_PRODUCER]
        assert result_send.name == f"{results_topic} send"
        result_consume = one(spans, name=f"{results_topic} process", parent_span_id=result_send.span_id)
        assert (result_consume.service, result_consume.kind) == ("apptsync-fetcher", SPAN_KIND_CONSUMER)

    # A first import carries the clients stream first; its first page read the list from the provider.
    if clients_pages:
        first_clients = min(clients_pages, key=lambda p: int(str(p.attributes["apptsync.page_no"])))
        assert 200 in [s.attributes.get(HTTP_STATUS) or s.attributes.get(HTTP_STATUS_OLD)
                       for s in spans if s.parent_span_id == first_clients.span_id]

    # The writer's transaction and its SQL statements are in the trace.
    writes = [s for s in spans if s.service == "apptsync-writer" and s.name == "write pages"]
    assert writes
    for write in writes:
        assert by_id[write.parent_span_id].name == f"{pages_topic} process"
    assert any(
        s.attributes.get("db.system") == "postgresql" and s.parent_span_id in {w.span_id for w in writes} for s in spans
    )

    # Resource attributes from OTEL_RESOURCE_ATTRIBUTES reach every service's spans.
    assert job_span.attributes["apptsync.job_state"] == "SUCCEEDED"

    # Secrets: the canary and the API key appear in no span, no log line, no Kafka message.
    exported = system.receiver.raw_bytes
    logs = {path.name: path.read_bytes() for path in system.log_dir.glob("*.log")}
    assert {"gateway.log", "fetcher.log", "writer.log"} <= set(logs)
    messages = await read_topics_raw(
        system.bootstrap_servers,
        [
            pages_topic,
            results_topic,
            system.env["APPTSYNC_KAFKA_DEAD_LETTER_TOPIC"],
            system.env["APPTSYNC_KAFKA_JOB_EVENTS_TOPIC"],
        ],
    )
    assert sum(1 for topic, _value, _headers in messages if topic == pages_topic) == PAGES
    for secret in (CANARY, API_KEY):
        needle = secret.encode()
        assert needle not in exported, f"{secret!r} was exported on a span"
        for name, content in logs.items():
            if name != "simulator.log":  # the provider's own log is not ours
                assert needle not in content, f"{secret!r} appears in {name}"
        for topic, value, headers in messages:
            assert needle not in value, f"{secret!r} is in a message of {topic}"
            assert all(needle not in header_value for _name, header_value in headers)

    # Pages and results carry W3C trace context of the import's trace in their headers.
    for topic, _value, headers in messages:
        if topic in (pages_topic, results_topic):
            traceparents = [v.decode() for name, v in headers if name == "traceparent"]
            assert traceparents, f"a message of {topic} has no traceparent"
            assert traceparents[0].split("-")[1] == job.trace_id

    # Logs are JSON lines; the page and job events carry the job id and trace id.
    fetcher_events = [line for line in logs["fetcher.log"].decode().splitlines() if job.job_id in line]
    writer_events = [line for line in logs["writer.log"].decode().splitlines() if '"page written"' in line]
    assert any('"job started"' in line and job.trace_id in line for line in fetcher_events)
    assert any('"job finished"' in line and job.trace_id in line for line in fetcher_events)
    assert sum(1 for line in fetcher_events if '"page sent"' in line and job.trace_id in line) == PAGES
    assert sum(1 for line in writer_events if job.job_id in line and job.trace_id in line) == PAGES


async def test_an_unreachable_collector_never_breaks_an_import(system_without_collector: TracedSystem) -> None:
    job = await run_traced_import(system_without_collector)
    assert job.state == imports_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.counts.pages_written == job.counts.pages_fetched == PAGES
    assert len(job.trace_id) == 32  # spans are still made; only their export fails
