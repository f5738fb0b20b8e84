"""`apptsync demo`: the embedded stack, two real imports, and a check of the database against the source.

Everything runs through the real code paths: the simulator serves an Acuity-shaped API over HTTP, the
fetcher pages it with httpx and produces to the Tansu broker, the writer upserts into PostgreSQL, and
the demo talks to the gateway over gRPC only, like any client. The demo's state directory is wiped
first, so the first import always starts from an empty database.
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from apptsync.cli.client import message_dict
from apptsync.cli.devstack import DevStack
from apptsync.shared.counts import counts_add_up, skipped_total
from apptsync.shared.db.pool import tenant_transaction
from apptsync.shared.timestamps import timestamp
from apptsync.v1 import imports_pb2, imports_pb2_grpc

DEMO_TENANT_ID = "5e1d7c3a-9f2b-4c61-8a47-0d3e2b1c9a10"
DEMO_CONNECTION_ID = "demo-acuity"
# The simulator's demo account (see apptsync.simulator).
DEMO_ACUITY_USER_ID = "1001"
DEMO_ACUITY_API_KEY = "demo-acuity-key"
DEMO_APPOINTMENTS = 2000
DEMO_WINDOW_DAYS = 90
_TERMINAL = {imports_pb2.JOB_STATE_SUCCEEDED, imports_pb2.JOB_STATE_FAILED, imports_pb2.JOB_STATE_CANCELED}


@dataclass(frozen=True)
class Verification:
    database_rows: int
    source_records_in_window: int
    missing_from_database: int
    unexpected_in_database: int
    duplicate_keys: int

    @property
    def exact(self) -> bool:
        return (
            self.database_rows == self.source_records_in_window
            and not self.missing_from_database
            and not self.unexpected_in_database
            and not self.duplicate_keys
        )


async def run_demo(
    state_dir: Path, *, as_json: bool, now: datetime | None = None, fast_unsafe_postgres: bool = False
) -> int:
    """Runs the demo; returns 0 when both imports behaved and the database matches the source.
    PostgreSQL runs durable unless `fast_unsafe_postgres` (see DevStack)."""
    console = Console(stderr=True)
    moment = now or datetime.now(UTC)
    window_start, window_end = moment - timedelta(days=DEMO_WINDOW_DAYS), moment + timedelta(days=DEMO_WINDOW_DAYS)
    shutil.rmtree(state_dir, ignore_errors=True)
    console.print("[bold]apptsync demo[/]: starting PostgreSQL, the broker, the provider simulator and the services")
    extra_env = {
        "APPTSYNC_SIMULATOR_APPOINTMENTS_PER_TENANT": str(DEMO_APPOINTMENTS),
        "APPTSYNC_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "APPTSYNC_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
    }
    async with DevStack(
        state_dir, gateway_port=None, extra_env=extra_env, fast_unsafe_postgres=fast_unsafe_postgres
    ) as stack:
        addresses = stack.addresses
        console.print(
            f"  gateway {addresses.gateway_address}, simulator {addresses.simulator_url}, logs {stack.log_dir}"
        )
        async with grpc.aio.insecure_channel(addresses.gateway_address) as channel:
            stub = imports_pb2_grpc.ImportServiceStub(channel)
            await stub.PutConnection(
                imports_pb2.PutConnectionRequest(
                    tenant_id=DEMO_TENANT_ID,
                    connection_id=DEMO_CONNECTION_ID,
                    source=imports_pb2.SOURCE_ACUITY,
                    base_url=f"{addresses.simulator_url}/acuity/api/v1",
                    credentials={"user_id": DEMO_ACUITY_USER_ID, "api_key": DEMO_ACUITY_API_KEY},
                ),
                timeout=10,
            )
            window = imports_pb2.TimeWindow(start=timestamp(window_start), end=timestamp(window_end))
            first = await _import(stub, console, window, "first import (empty database)")
            second = await _import(stub, console, window, "same import again (nothing new: stops early)")
        verification = await _verify(addresses.database_url, addresses.simulator_url, window_start, window_end)

    _print_jobs(console, first, second)
    ok = _print_checks(console, first, second, verification)
    if as_json:
        print(json.dumps({"first_job": message_dict(first), "second_job": message_dict(second)}, indent=2))
    return 0 if ok else 1


async def _import(
    stub: imports_pb2_grpc.ImportServiceAsyncStub, console: Console, window: imports_pb2.TimeWindow, label: str
) -> imports_pb2.Job:
    response = await stub.StartImport(
        imports_pb2.StartImportRequest(
            tenant_id=DEMO_TENANT_ID,
            source=imports_pb2.SOURCE_ACUITY,
            connection_id=DEMO_CONNECTION_ID,
            window=window,
            idempotency_key=f"demo-{uuid.uuid4().hex[:12]}",
        ),
        timeout=10,
    )
    job = response.job
    with Progress(
        TextColumn("  {task.description:<48}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(label, total=None, detail="queued")
        async for snapshot in stub.WatchJob(imports_pb2.WatchJobRequest(tenant_id=DEMO_TENANT_ID, job_id=job.job_id)):
            job = snapshot
            c = job.counts
            progress.update(
                task,
                total=max(c.pages_fetched, 1),
                completed=c.pages_written,
                detail=f"pages {c.pages_written}/{c.pages_fetched}  records {c.records_fetched}  inserted {c.inserted}",
            )
            if job.state in _TERMINAL:
                break
    return job


async def _verify(database_url: str, simulator_url: str, start: datetime, end: datetime) -> Verification:
    """Compares the stored appointments with the simulator's full data set inside the window."""
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as client:
        response = await client.get(f"/_admin/acuity/accounts/{DEMO_ACUITY_USER_ID}/appointments")
        response.raise_for_status()
        records = response.json()
    source_ids = {
        str(r["id"]) for r in records if start <= datetime.strptime(r["datetime"], "%Y-%m-%dT%H:%M:%S%z") < end
    }
    connection = await asyncpg.connect(database_url)
    try:
        # The services' role sees a tenant's rows only inside a transaction scoped to it (row-level security).
        async with tenant_transaction(connection, DEMO_TENANT_ID):
            rows = await connection.fetch(
                "SELECT external_id FROM appointments WHERE tenant_id = $1 AND external_source = 'acuity'",
                uuid.UUID(DEMO_TENANT_ID),
            )
    finally:
        await connection.close()
    stored = [row["external_id"] for row in rows]
    stored_ids = set(stored)
    return Verification(
        database_rows=len(stored),
        source_records_in_window=len(source_ids),
        missing_from_database=len(source_ids - stored_ids),
        unexpected_in_database=len(stored_ids - source_ids),
        duplicate_keys=len(stored) - len(stored_ids),
    )


def _print_jobs(console: Console, *jobs: imports_pb2.Job) -> None:
    table = Table(title="import jobs", title_justify="left")
    table.add_column("")
    for index, _job in enumerate(jobs, start=1):
        table.add_column(f"import {index}", justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("state", [imports_pb2.JobState.Name(j.state).removeprefix("JOB_STATE_") for j in jobs]),
        ("pages fetched / written", [f"{j.counts.pages_fetched} / {j.counts.pages_written}" for j in jobs]),
        ("records fetched", [str(j.counts.records_fetched) for j in jobs]),
        ("inserted", [str(j.counts.inserted) for j in jobs]),
        ("updated", [str(j.counts.updated) for j in jobs]),
        ("unchanged", [str(j.counts.unchanged) for j in jobs]),
        (
            "skipped",
            [
                str(skipped_total(j.counts))
                for j in jobs
            ],
        ),
        ("stop reason", [j.stop_reason for j in jobs]),
        ("seconds", [f"{_seconds(j):.2f}" for j in jobs]),
    ]
    for name, values in rows:
        table.add_row(name, *values)
    console.print(table)


def _seconds(job: imports_pb2.Job) -> float:
    if not job.HasField("finished_at"):
        return 0.0
    return (job.finished_at.ToDatetime() - job.created_at.ToDatetime()).total_seconds()


def _print_checks(console: Console, first: imports_pb2.Job, second: imports_pb2.Job, check: Verification) -> bool:
    c1, c2 = first.counts, second.counts
    checks = [
        (
            "first import SUCCEEDED and inserted rows",
            first.state == imports_pb2.JOB_STATE_SUCCEEDED and c1.inserted > 0,
        ),
        (
            "first import's counts add up to the records fetched",
            counts_add_up(c1),
        ),
        (
            "second import SUCCEEDED with 0 inserted",
            second.state == imports_pb2.JOB_STATE_SUCCEEDED and c2.inserted == 0,
        ),
        (
            # The coming days are always walked; the stop rule starts at the first page beyond them.
            "second import walked the near term, then stopped at the first page beyond it",
            second.stop_reason == f"page {c2.pages_fetched} had no new records" and c2.pages_fetched < c1.pages_fetched,
        ),
        (
            f"database rows ({check.database_rows}) = simulator records in the window "
            f"({check.source_records_in_window}), none missing, none extra, no duplicates",
            check.exact,
        ),
        ("rows inserted by the first import = database rows", c1.inserted == check.database_rows),
    ]
    for text, passed in checks:
        console.print(("[green]✓[/] " if passed else "[red]✗[/] ") + text)
    ok = all(passed for _, passed in checks)
    if not ok:
        print("demo checks failed", file=sys.stderr)
    return ok
