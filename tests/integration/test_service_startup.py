"""Every service's start-up fails at each step in turn and leaves nothing open.

The gateway, fetcher, writer and webhook receiver open their parts in order on an exit stack
(apptsync.shared.lifecycle).
Against the real PostgreSQL and broker, each run gets `ServiceResources` whose factories open the real
thing and record it, except the one at the step under test, which raises. Afterwards every part that
was opened is closed again: pools closed, health servers no longer listening, Kafka clients stopped,
no task left behind. The same check after a clean start and an immediate stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from apptsync.fetcher.service import run_fetcher
from apptsync.gateway.server import run_gateway
from apptsync.gateway.webhooks import run_webhook_receiver
from apptsync.shared.credentials import Keyring
from apptsync.shared.db.migrator import migrate
from apptsync.shared.health import HealthEndpoint
from apptsync.shared.kafka import ensure_topics
from apptsync.shared.lifecycle import ServiceResources, opened_pool, served_health, started_producer, unstarted_consumer
from apptsync.shared.outbound import OutboundPolicy
from apptsync.shared.settings import (
    DatabaseSettings,
    FetcherSettings,
    GatewaySettings,
    KafkaSettings,
    WebhookSettings,
    WriterSettings,
)
from apptsync.writer.service import run_writer
from tests.containers.fixtures import BrokerContainer, free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")
RUN_TIMEOUT_SECONDS = 60.0
# The order each service opens its parts in (see its run function).
GATEWAY_STEPS = ("pool", "health")
FETCHER_STEPS = ("health", "pool", "topics", "producer", "downstream_producer", "consumer")
WRITER_STEPS = ("health", "topics", "pool", "producer", "downstream_producer", "consumer")
RECEIVER_STEPS = ("pool",)


class InjectedStartupFailure(Exception):
    """Raised by the factory of the step under test."""


@dataclass
class Ledger:
    """What the recording factories opened and closed."""

    fail_at: str | None
    opened: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    pools: list[asyncpg.Pool] = field(default_factory=list)
    health: list[HealthEndpoint] = field(default_factory=list)
    producers: list[AIOKafkaProducer] = field(default_factory=list)
    consumers: list[AIOKafkaConsumer] = field(default_factory=list)

    def step(self, name: str) -> None:
        if name == self.fail_at:
            raise InjectedStartupFailure(name)

    @contextlib.asynccontextmanager
    async def recorded(self, name: str, resource: AbstractAsyncContextManager[T], kept: list[Any]) -> AsyncIterator[T]:
        self.step(name)
        async with resource as value:
            self.opened.append(name)
            if value is not None:
                kept.append(value)
            try:
                yield value
            finally:
                self.closed.append(name)

    def resources(self) -> ServiceResources:
        async def topics(kafka: KafkaSettings) -> None:
            self.step("topics")
            await ensure_topics(kafka)

        def consumer(*args: Any, **kwargs: Any) -> AIOKafkaConsumer:
            self.step("consumer")
            created = unstarted_consumer(*args, **kwargs)
            self.consumers.append(created)
            return created

        return ServiceResources(
            health=lambda address: self.recorded("health", served_health(address), self.health),
            pool=lambda database, name: self.recorded("pool", opened_pool(database, name), self.pools),
            topics=topics,
            producer=lambda kafka, name: self.recorded("producer", started_producer(kafka, name), self.producers),
            consumer=consumer,
            downstream_producer=lambda kafka, name: self.recorded(
                "downstream_producer", started_producer(kafka, name, downstream=True), self.producers
            ),
        )

    def assert_nothing_left_open(self) -> None:
        assert sorted(self.opened) == sorted(self.closed), (self.opened, self.closed)
        assert all(pool.is_closing() for pool in self.pools)
        for endpoint in self.health:
            assert not port_accepts(endpoint.port), f"health endpoint on port {endpoint.port} still listens"
        # aiokafka has no public "stopped" flag; _closed is what its own stop() checks first.
        assert all(producer._closed for producer in self.producers)
        assert all(consumer._closed for consumer in self.consumers)
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert not others, others


def port_accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def kafka(broker: BrokerContainer) -> KafkaSettings:
    suffix = uuid.uuid4().hex[:10]
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers, pages_topic=f"startup-pages-{suffix}",
        page_results_topic=f"startup-results-{suffix}", dead_letter_topic=f"startup-dead-{suffix}",
        job_events_topic=f"startup-events-{suffix}", writer_group_id=f"startup-writer-{suffix}",
        topic_partitions=1, session_timeout_ms=1000, heartbeat_interval_ms=200, request_timeout_ms=10_000,
    )  # fmt: skip


@pytest.fixture
async def database(database_url: str, service_database_url: str) -> DatabaseSettings:
    connection = await asyncpg.connect(database_url)
    try:
        await migrate(connection)
    finally:
        await connection.close()
    return DatabaseSettings(url=service_database_url, pool_min_size=1, pool_max_size=4, command_timeout_seconds=10)


def opened_before(steps: tuple[str, ...], fail_at: str | None) -> list[str]:
    """The steps that open something (topics are only created, the consumer is started by the service
    itself) before `fail_at`, in order; all of them when nothing fails."""
    reached = steps if fail_at is None else steps[: steps.index(fail_at)]
    return [step for step in reached if step not in {"topics", "consumer"}]


async def started_and_stopped(
    run: Callable[[asyncio.Event, ServiceResources], Awaitable[None]], ledger: Ledger
) -> None:
    """Runs the service with `ledger`'s factories and a stop already requested: it either fails at the
    injected step or starts completely and drains at once."""
    stop = asyncio.Event()
    stop.set()
    if ledger.fail_at is None:
        await asyncio.wait_for(run(stop, ledger.resources()), RUN_TIMEOUT_SECONDS)
    else:
        with pytest.raises(InjectedStartupFailure):
            await asyncio.wait_for(run(stop, ledger.resources()), RUN_TIMEOUT_SECONDS)
    await asyncio.sleep(0)  # callbacks scheduled by the last close run before the check


@pytest.mark.parametrize("fail_at", [*GATEWAY_STEPS, None])
async def test_the_gateway_leaves_nothing_open(fail_at: str | None, database: DatabaseSettings) -> None:
    ledger = Ledger(fail_at)
    settings = GatewaySettings(
        listen_address=f"127.0.0.1:{free_port()}", health_address=f"127.0.0.1:{free_port()}", allow_unauthenticated=True
    )
    keyring = Keyring([("k1", bytes(32))])

    async def run(stop: asyncio.Event, resources: ServiceResources) -> None:
        await run_gateway(database, keyring, settings, outbound=OutboundPolicy(), stop=stop, resources=resources)

    await started_and_stopped(run, ledger)

    ledger.assert_nothing_left_open()
    assert ledger.opened == opened_before(GATEWAY_STEPS, fail_at)
    assert not port_accepts(int(settings.listen_address.rsplit(":", 1)[1]))


@pytest.mark.parametrize("fail_at", [*FETCHER_STEPS, None])
async def test_the_fetcher_leaves_nothing_open(
    fail_at: str | None, database: DatabaseSettings, kafka: KafkaSettings
) -> None:
    ledger = Ledger(fail_at)
    settings = FetcherSettings(health_address=f"127.0.0.1:{free_port()}", shared_budget_providers="")

    async def run(stop: asyncio.Event, resources: ServiceResources) -> None:
        keyring = Keyring([("k1", bytes(32))])
        await run_fetcher(database, kafka, settings, keyring, outbound=OutboundPolicy(), worker_id="startup-test",
                          stop=stop, resources=resources)  # fmt: skip

    await started_and_stopped(run, ledger)

    ledger.assert_nothing_left_open()
    assert ledger.opened == opened_before(FETCHER_STEPS, fail_at)


@pytest.mark.parametrize("fail_at", [*WRITER_STEPS, None])
async def test_the_writer_leaves_nothing_open(
    fail_at: str | None, database: DatabaseSettings, kafka: KafkaSettings
) -> None:
    ledger = Ledger(fail_at)
    writer = WriterSettings(health_address=f"127.0.0.1:{free_port()}")

    async def run(stop: asyncio.Event, resources: ServiceResources) -> None:
        await run_writer(database, kafka, writer, stop=stop, resources=resources)

    await started_and_stopped(run, ledger)

    ledger.assert_nothing_left_open()
    assert ledger.opened == opened_before(WRITER_STEPS, fail_at)


async def test_a_gateway_whose_port_is_taken_fails_and_leaves_nothing_open(database: DatabaseSettings) -> None:
    """A real failure at the last step (binding the API port), after the pool, the change hub and the
    health endpoint are open."""
    ledger = Ledger(None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = GatewaySettings(
            listen_address=f"127.0.0.1:{port}", health_address=f"127.0.0.1:{free_port()}", allow_unauthenticated=True
        )
        with pytest.raises(OSError, match="cannot bind"):
            await asyncio.wait_for(
                run_gateway(database, Keyring([("k1", bytes(32))]), settings, outbound=OutboundPolicy(),
                            stop=asyncio.Event(), resources=ledger.resources()),
                RUN_TIMEOUT_SECONDS,
            )
        await asyncio.sleep(0)

    ledger.assert_nothing_left_open()
    assert ledger.opened == ["pool", "health"]


@pytest.mark.parametrize("fail_at", [*RECEIVER_STEPS, None])
async def test_the_webhook_receiver_leaves_nothing_open(fail_at: str | None, database: DatabaseSettings) -> None:
    ledger = Ledger(fail_at)
    settings = WebhookSettings(listen_address=f"127.0.0.1:{free_port()}")

    async def run(stop: asyncio.Event, resources: ServiceResources) -> None:
        await run_webhook_receiver(database, Keyring([("k1", bytes(32))]), settings, stop=stop, resources=resources)

    await started_and_stopped(run, ledger)

    ledger.assert_nothing_left_open()
    assert ledger.opened == opened_before(RECEIVER_STEPS, fail_at)
    assert not port_accepts(int(settings.listen_address.rsplit(":", 1)[1]))


async def test_a_webhook_receiver_whose_port_is_taken_fails_and_leaves_nothing_open(
    database: DatabaseSettings,
) -> None:
    ledger = Ledger(None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = WebhookSettings(listen_address=f"127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(OSError, match="address already in use"):
            await asyncio.wait_for(
                run_webhook_receiver(
                    database, Keyring([("k1", bytes(32))]), settings, stop=asyncio.Event(), resources=ledger.resources()
                ),
                RUN_TIMEOUT_SECONDS,
            )
        await asyncio.sleep(0)

    ledger.assert_nothing_left_open()
    assert ledger.opened == ["pool"]
