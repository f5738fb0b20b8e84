"""The one lifecycle every apptsync service runs in.

    async with AsyncExitStack() as stack:
        health = await stack.enter_async_context(resources.health(settings.health_address))
        pool = await stack.enter_async_context(resources.pool(database, "apptsync-NAME"))
        await resources.topics(kafka)
        producer = await stack.enter_async_context(resources.producer(kafka, "apptsync-NAME"))
        events = await stack.enter_async_context(resources.downstream_producer(kafka, "apptsync-NAME-events"))
        ...                          # the service's own parts, each closed by a callback on the stack
        serve until `stop` is set    # SIGTERM/SIGINT in the CLI
        stop intake, drain, commit   # the service's own order (see each service's docstring)
    # every resource closed in reverse order: after the run, and equally when start-up fails at any step

Each resource is an async context manager that closes what it opened also when it was entered only
partly (a client whose start failed is stopped). `ServiceResources` bundles the factories so a test
can replace one with a failing or recording one (tests/integration/test_service_startup.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from apptsync.shared.db.pool import create_pool
from apptsync.shared.health import HealthEndpoint, health_enabled
from apptsync.shared.kafka import create_consumer, create_producer, ensure_topics, kafka_errors
from apptsync.shared.settings import DatabaseSettings, KafkaSettings


@asynccontextmanager
async def served_health(address: str) -> AsyncIterator[HealthEndpoint | None]:
    """A started gRPC health endpoint on `address` (NOT_SERVING until told), stopped on exit; None when
    the address's port is 0 (no endpoint). Raises OSError when the address cannot be bound."""
    if not health_enabled(address):
        yield None
        return
    endpoint = HealthEndpoint(address)
    try:
        await endpoint.start()
        yield endpoint
    finally:
        await endpoint.stop()


@asynccontextmanager
async def opened_pool(database: DatabaseSettings, application_name: str) -> AsyncIterator[asyncpg.Pool]:
    """An open connection pool (see `create_pool` for what it raises), closed on exit."""
    pool = await create_pool(database, application_name=application_name)
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def started_producer(
    kafka: KafkaSettings, client_id: str, *, downstream: bool = False
) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer, stopped (after its pending sends) on exit, also when starting it failed;
    `downstream` for the topics other services read (their own compression, see kafka.producer_config).
    Raises BrokerUnavailableError / PermanentError when it cannot start."""
    producer = create_producer(kafka, client_id=client_id, downstream=downstream)
    try:
        async with kafka_errors():
            await producer.start()
        yield producer
    finally:
        await producer.stop()


def started_downstream_producer(kafka: KafkaSettings, client_id: str) -> AbstractAsyncContextManager[AIOKafkaProducer]:
    """`started_producer` for the topics downstream services read (job events, change events)."""
    return started_producer(kafka, client_id, downstream=True)


def unstarted_consumer(
    kafka: KafkaSettings, *topics: str, group_id: str | None, client_id: str, group_instance_id: str | None = None
) -> AIOKafkaConsumer:
    """An unstarted consumer (see `create_consumer`); the service starts it its own way and puts its
    stop on the exit stack first."""
    return create_consumer(kafka, *topics, group_id=group_id, client_id=client_id, group_instance_id=group_instance_id)


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    """Cancels `task` and waits until it is done (a clean-up step: no task outlives its service)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class ServiceResources:
    """How a service opens what it runs on; production uses the defaults, tests inject failing or
    recording factories to check that nothing stays open."""

    health: Callable[[str], AbstractAsyncContextManager[HealthEndpoint | None]] = served_health
    pool: Callable[[DatabaseSettings, str], AbstractAsyncContextManager[asyncpg.Pool]] = opened_pool
    topics: Callable[[KafkaSettings], Awaitable[None]] = ensure_topics
    producer: Callable[[KafkaSettings, str], AbstractAsyncContextManager[AIOKafkaProducer]] = started_producer
    consumer: Callable[..., AIOKafkaConsumer] = unstarted_consumer
    # For job events and change events: the topics downstream services read.
    downstream_producer: Callable[[KafkaSettings, str], AbstractAsyncContextManager[AIOKafkaProducer]] = (
        started_downstream_producer
    )


DEFAULT_RESOURCES = ServiceResources()
