"""commit_offsets is bounded: aiokafka retries a retriable commit error forever (e.g.
UnknownTopicOrPartition after the broker lost its topics), which would stop a consumer for good."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from apptsync.shared.errors import BrokerUnavailableError
from apptsync.shared.kafka import commit_offsets

pytestmark = pytest.mark.unit
PARTITION = TopicPartition("apptsync.pages", 2)


class CommitThatNeverCompletes:
    def __init__(self) -> None:
        self.attempted: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.attempted.append(offsets)
        await asyncio.Event().wait()


class CommitThatCompletes:
    def __init__(self) -> None:
        self.committed: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(offsets)


def as_consumer(fake: Any) -> AIOKafkaConsumer:
    return cast(AIOKafkaConsumer, fake)


async def test_a_commit_that_never_completes_is_a_retriable_broker_error() -> None:
    fake = CommitThatNeverCompletes()
    with pytest.raises(BrokerUnavailableError, match="offset commit did not complete"):
        await commit_offsets(as_consumer(fake), {PARTITION: 7}, timeout_seconds=0.01)
    assert fake.attempted == [{PARTITION: 7}]


async def test_a_commit_that_completes_returns_true() -> None:
    fake = CommitThatCompletes()
    assert await commit_offsets(as_consumer(fake), {PARTITION: 7}, timeout_seconds=5)
    assert fake.committed == [{PARTITION: 7}]
