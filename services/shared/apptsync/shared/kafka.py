"""Kafka clients for every apptsync process (aiokafka), configured one way, failing one way.

- `create_producer` / `create_consumer` build unstarted aiokafka clients from `KafkaSettings`
  (`producer_config` / `consumer_config` are the pure parts, for tests and for readers).
- `ensure_topics` creates apptsync's topics (`apptsync_topics`) if they are missing.
- `translate_kafka_error` / `kafka_errors()` map aiokafka failures onto the error tree:
  BrokerUnavailableError (retriable) or PermanentError.
- Headers are `list[tuple[str, bytes]]` (aiokafka's shape); `text_headers` / `header_text` convert.

Settings that differ between Apache Kafka and the Tansu test broker (idempotent producer, group
session timeouts) come from `KafkaSettings`; nothing here reads the environment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalGenerationError,
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    RebalanceInProgressError,
    TopicAlreadyExistsError,
    UnknownError,
    UnknownMemberIdError,
    for_code,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition

from apptsync.shared.errors import ApptsyncError, BrokerUnavailableError, PermanentError
from apptsync.shared.settings import KafkaSettings

Headers = list[tuple[str, bytes]]

# Small enough not to delay a lone result noticeably, large enough to batch a burst of pages.
PRODUCER_LINGER_MS = 5
# Pages of ~100 records with raw JSON reach a few hundred KB; 8 MiB leaves room for large pages.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
ENSURE_TOPICS_ATTEMPTS = 5
ENSURE_TOPICS_BACKOFF_SECONDS = 0.5
# Longest wait for one offset commit (see commit_offsets).
COMMIT_TIMEOUT_SECONDS = 30.0


def producer_config(settings: KafkaSettings, *, client_id: str, downstream: bool = False) -> dict[str, Any]:
    """Keyword arguments of `AIOKafkaProducer`: acks from all replicas, compression and idempotence
    as configured, a short linger so bursts share a request.

    Compression is per producer in aiokafka, hence per topic here: `downstream` producers (job events,
    change events: topics other teams' clients read) use `downstream_compression_type` (gzip or none,
    built into every client), the others `compression_type` (zstd by default: apptsync's own pages)."""
    compression = settings.downstream_compression_type if downstream else settings.compression_type
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": client_id,
        "acks": "all",
        "compression_type": None if compression == "none" else compression,
        "enable_idempotence": settings.enable_idempotence,
        "linger_ms": PRODUCER_LINGER_MS,
        "max_request_size": MAX_REQUEST_BYTES,
        "request_timeout_ms": settings.request_timeout_ms,
    }


def consumer_config(
    settings: KafkaSettings, *, group_id: str | None, client_id: str, group_instance_id: str | None = None
) -> dict[str, Any]:
    """Keyword arguments of `AIOKafkaConsumer`: manual commits only, a group starts at the earliest
    offset (nothing produced before the first join is lost), read_committed isolation; static
    membership when `group_instance_id` is given (only with a group)."""
    if group_instance_id is not None and group_id is None:
        raise ValueError("a group instance id needs a group id")
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": client_id,
        "group_id": group_id,
        "group_instance_id": group_instance_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest" if group_id is not None else "latest",
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "request_timeout_ms": settings.request_timeout_ms,
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": MAX_REQUEST_BYTES,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
    }


def create_producer(settings: KafkaSettings, *, client_id: str, downstream: bool = False) -> AIOKafkaProducer:
    """An unstarted producer (`await producer.start()` inside `kafka_errors()`; `stop()` when done);
    `downstream` for the topics downstream services read (see producer_config)."""
    return AIOKafkaProducer(**producer_config(settings, client_id=client_id, downstream=downstream))


def create_consumer(
    settings: KafkaSettings,
    *topics: str,
    group_id: str | None,
    client_id: str,
    group_instance_id: str | None = None,
) -> AIOKafkaConsumer:
    """An unstarted consumer subscribed to `topics` (none: assign partitions yourself).

    Offsets are never committed automatically: commit exact offsets after the effect is durable.
    """
    config = consumer_config(settings, group_id=group_id, client_id=client_id, group_instance_id=group_instance_id)
    return AIOKafkaConsumer(*topics, **config)


def is_retriable_kafka_error(exc: BaseException) -> bool:
    """True when the same Kafka operation may succeed later (broker down, timeout, leader moving, or
    a broker error it did not name: every apptsync produce and commit is safe to repeat, and a
    broker that just lost and re-created its topics answers UNKNOWN_SERVER_ERROR for a while)."""
    if isinstance(exc, KafkaTimeoutError | OSError | UnknownError):
        return True
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False))
    return False


def translate_kafka_error(exc: BaseException) -> ApptsyncError:
    """BrokerUnavailableError for a retriable aiokafka failure, else PermanentError.

    Use as `raise translate_kafka_error(exc) from exc`; an ApptsyncError is returned unchanged."""
    if isinstance(exc, ApptsyncError):
        return exc
    message = f"{type(exc).__name__}: {exc}"
    if is_retriable_kafka_error(exc):
        return BrokerUnavailableError(message)
    return PermanentError(message)


@asynccontextmanager
async def kafka_errors() -> AsyncIterator[None]:
    """Translates aiokafka (and socket) errors raised inside the block via `translate_kafka_error`."""
    try:
        yield
    except (KafkaError, ConsumerStoppedError, OSError) as exc:
        raise translate_kafka_error(exc) from exc


# The producer's default partitioner (murmur2 of the key, as Kafka's Java client): send_keyed picks
# the partition itself and must agree with every other producer of the topic.
_PARTITIONER = DefaultPartitioner()


async def send_keyed(producer: AIOKafkaProducer, topic: str, messages: Sequence[tuple[bytes, bytes]]) -> None:
    """Sends `(key, value)` messages in order and returns once the broker acknowledged every one.

    They go out as one batch per partition (another when one fills), each message to the partition
    the default partitioner gives its key, so a key keeps its partition and its order. Not `send` per
    message: its per-call cost, most of it the span the Kafka instrumentation opens for every message,
    was ~60 % of the change relay's CPU (py-spy), and the relay's messages belong to no trace.
    Raises BrokerUnavailableError (retriable) or PermanentError."""
    if not messages:
        return
    async with kafka_errors():
        partitions = sorted(await producer.partitions_for(topic))
        open_batches: dict[int, Any] = {}  # partition -> aiokafka BatchBuilder
        acknowledgements: list[asyncio.Future[Any]] = []
        for key, value in messages:
            partition = _PARTITIONER(key, partitions, partitions)
            batch = open_batches.get(partition)
            if batch is not None and batch.append(key=key, value=value, timestamp=None) is not None:
                continue
            if batch is not None:  # full: send it, start the partition's next one
                acknowledgements.append(await producer.send_batch(batch, topic, partition=partition))
            batch = open_batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise PermanentError(f"a message of {len(value)} bytes does not fit in a batch of {topic}")
        for partition, batch in open_batches.items():
            acknowledgements.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*acknowledgements)


async def commit_offsets(
    consumer: AIOKafkaConsumer,
    offsets: Mapping[TopicPartition, int],
    *,
    timeout_seconds: float = COMMIT_TIMEOUT_SECONDS,
) -> bool:
    """Commits `offsets` (the next offset to read, per partition) for the consumer's group.

    Returns False, committing nothing, when the group rebalanced meanwhile: the partitions' new
    owner reads those messages again, which idempotent consumers tolerate. Raises
    BrokerUnavailableError when the commit does not complete within `timeout_seconds` (aiokafka
    retries a retriable commit error forever, e.g. UnknownTopicOrPartition after a broker lost its
    topics: unbounded, that would stop the consumer for good), PermanentError for other failures."""
    if not offsets:
        return True
    try:
        async with asyncio.timeout(timeout_seconds):
            await consumer.commit(dict(offsets))
    except TimeoutError as exc:
        raise BrokerUnavailableError(f"offset commit did not complete within {timeout_seconds:g} s") from exc
    except (
        CommitFailedError,
        IllegalGenerationError,
        IllegalStateError,
        RebalanceInProgressError,
        UnknownMemberIdError,
    ):
        return False
    except (KafkaError, ConsumerStoppedError, OSError) as exc:
        raise translate_kafka_error(exc) from exc
    return True


def apptsync_topics(settings: KafkaSettings) -> tuple[str, ...]:
    """The topics apptsync creates itself: pages, page results, dead letters, job events, change events."""
    return (
        settings.pages_topic,
        settings.page_results_topic,
        settings.dead_letter_topic,
        settings.job_events_topic,
        settings.change_events_topic,
    )


async def ensure_topics(
    settings: KafkaSettings,
    *,
    topics: Iterable[str] | None = None,
    attempts: int = ENSURE_TOPICS_ATTEMPTS,
    backoff_seconds: float = ENSURE_TOPICS_BACKOFF_SECONDS,
) -> None:
    """Creates `topics` (default: `apptsync_topics(settings)`) with `settings.topic_partitions`
    partitions where missing. Idempotent and safe to race: an existing topic is left as it is.

    Retries a retriable failure up to `attempts` times, `backoff_seconds` apart (doubling), then
    raises BrokerUnavailableError; raises PermanentError for anything else the broker refuses.
    """
    wanted = list(dict.fromkeys(apptsync_topics(settings) if topics is None else topics))
    delay_seconds = backoff_seconds
    for attempt in range(1, attempts + 1):
        try:
            await _create_missing_topics(settings, wanted)
            return
        except BrokerUnavailableError:
            if attempt == attempts:
                raise
        await asyncio.sleep(delay_seconds)
        delay_seconds *= 2


async def _create_missing_topics(settings: KafkaSettings, wanted: list[str]) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        client_id="apptsync-admin",
        request_timeout_ms=settings.request_timeout_ms,
    )
    async with kafka_errors():
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [topic for topic in wanted if topic not in existing]
            if not missing:
                return
            response = await admin.create_topics(
                [
                    NewTopic(topic, settings.topic_partitions, settings.topic_replication_factor)
                    for topic in missing
                ]
            )
            for topic_error in response.topic_errors:
                error_code = topic_error[1]
                if error_code in (0, TopicAlreadyExistsError.errno):
                    continue
                error_type = for_code(error_code)
                raise error_type(f"creating topic {topic_error[0]!r}: {topic_error[2] or ''}")
        finally:
            await admin.close()


def text_headers(values: Mapping[str, str | int]) -> Headers:
    """Kafka headers from text values (UTF-8), in the mapping's order."""
    return [(name, str(value).encode("utf-8")) for name, value in values.items()]


def header_text(headers: Iterable[tuple[str, bytes]] | None, name: str) -> str | None:
    """The last value of header `name` as text (undecodable bytes replaced), or None if absent."""
    found: str | None = None
    for key, value in headers or ():
        if key == name:
            found = value.decode("utf-8", errors="replace")
    return found
