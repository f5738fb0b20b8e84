"""Routes PageResults from Kafka to the jobs this fetcher process runs.

One consumer per process reads every partition of the results topic without a consumer group,
starting at the end when the process starts, and hands each result to the job that subscribed to it.
Results of jobs this process does not run are dropped: their fetcher reads its own, and a job resumed
here recovers results it missed from import_job_pages (see runner.py).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry import trace

from apptsync.shared.errors import PoisonMessageError
from apptsync.shared.kafka import kafka_errors
from apptsync.shared.messages.page_results import PageResult, decode_page_result
from apptsync.shared.telemetry.propagation import consumer_span

_log = logging.getLogger("apptsync.fetcher.results")
_tracer = trace.get_tracer("apptsync.fetcher")


class ResultRouter:
    def __init__(self, consumer: AIOKafkaConsumer, topic: str) -> None:
        self._consumer = consumer
        self._topic = topic
        self._inboxes: dict[str, asyncio.Queue[PageResult]] = {}

    async def start(self) -> None:
        """Starts the consumer positioned at the end of every partition.

        Guarantees: any result produced after start() returns is delivered to its subscriber.
        Raises BrokerUnavailableError when the broker cannot be reached."""
        async with kafka_errors():
            await self._consumer.start()
            partitions = None
            for _attempt in range(50):
                partitions = self._consumer.partitions_for_topic(self._topic)
                if partitions:
                    break
                await self._consumer.topics()  # refreshes metadata
                await asyncio.sleep(0.1)
            if not partitions:
                raise RuntimeError(f"topic {self._topic} has no partitions")
            assigned = [TopicPartition(self._topic, p) for p in sorted(partitions)]
            self._consumer.assign(assigned)
            await self._consumer.seek_to_end(*assigned)
            for tp in assigned:
                await self._consumer.position(tp)  # resolves the end offset now, not lazily later

    async def stop(self) -> None:
        await self._consumer.stop()

    def subscribe(self, job_id: str) -> asyncio.Queue[PageResult]:
        inbox: asyncio.Queue[PageResult] = asyncio.Queue()
        self._inboxes[job_id] = inbox
        return inbox

    def unsubscribe(self, job_id: str) -> None:
        self._inboxes.pop(job_id, None)

    async def run(self) -> None:
        """Delivers results until cancelled. A message that is not a PageResult is logged and skipped."""
        while True:
            async with kafka_errors():
                batches = await self._consumer.getmany(timeout_ms=500, max_records=1000)
            for records in batches.values():
                for record in records:
                    try:
                        result = decode_page_result(record.value or b"")
                    except PoisonMessageError as exc:
                        _log.warning("skipping an undecodable page result at offset %d: %s", record.offset, exc)
                        continue
                    counts = result.counts
                    inbox = self._inboxes.get(counts.job_id)
                    if inbox is not None:
                        # The last hop of a page's trace: fetcher -> writer -> back to this job.
                        with consumer_span(
                            _tracer,
                            topic=record.topic,
                            headers=record.headers,
                            partition=record.partition,
                            offset=record.offset,
                            attributes={
                                "apptsync.job_id": counts.job_id,
                                "apptsync.page_no": counts.page_no,
                                "apptsync.inserted": counts.inserted,
                                "apptsync.updated": counts.updated,
                                "apptsync.unchanged": counts.unchanged,
                                "apptsync.redelivered": result.redelivered,
                            },
                        ):
                            inbox.put_nowait(result)
