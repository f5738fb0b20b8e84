"""The system under end-to-end test: gateway, fetcher, writer and simulator as real processes against
the testcontainers PostgreSQL and broker. Each test gets its own database, topics and consumer group."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from apptsync.cli.devstack import ServiceSet
from apptsync.gateway.auth import token_digest
from apptsync.v1 import imports_pb2_grpc

TENANT_ID = "3f2a9c1e-6b7d-4e8f-9a0b-1c2d3e4f5a6b"
OTHER_TENANT_ID = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
TENANT_TOKEN = "e2e-tenant-token"


@dataclass
class RunningSystem:
    services: ServiceSet
    stub: imports_pb2_grpc.ImportServiceAsyncStub
    database_url: str
    metadata: tuple[tuple[str, str], ...]


def system_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """Settings that isolate one test: its own topics and consumer group, fast group rejoin."""
    suffix = uuid.uuid4().hex[:8]
    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(
        json.dumps(
            {
                "tokens": [
                    {"name": "e2e", "sha256": token_digest(TENANT_TOKEN), "tenants": [TENANT_ID]},
                ]
            }
        )
    )
    env = {
        "APPTSYNC_KAFKA_PAGES_TOPIC": f"e2e-{suffix}.pages",
        "APPTSYNC_KAFKA_PAGE_RESULTS_TOPIC": f"e2e-{suffix}.page-results",
        "APPTSYNC_KAFKA_DEAD_LETTER_TOPIC": f"e2e-{suffix}.dead-letters",
        "APPTSYNC_KAFKA_JOB_EVENTS_TOPIC": f"e2e-{suffix}.job-events",
        "APPTSYNC_KAFKA_WRITER_GROUP_ID": f"e2e-{suffix}.writer",
        "APPTSYNC_KAFKA_SESSION_TIMEOUT_MS": "1000",
        "APPTSYNC_KAFKA_HEARTBEAT_INTERVAL_MS": "200",
        "APPTSYNC_GATEWAY_AUTH_TOKENS_FILE": str(tokens_file),
        "APPTSYNC_FETCHER_POLL_INTERVAL_SECONDS": "0.5",
        "APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT": "600",
    }
    env.update(overrides)
    return env


async def count_job_and_connection_rows(database_url: str) -> tuple[int, int]:
    """(import_jobs rows, connections rows) of every tenant, read as the owner: a rejected call must
    leave both unchanged."""
    connection = await asyncpg.connect(database_url)
    try:
        jobs = await connection.fetchval("SELECT count(*) FROM import_jobs")
        connections = await connection.fetchval("SELECT count(*) FROM connections")
    finally:
        await connection.close()
    return int(jobs), int(connections)
