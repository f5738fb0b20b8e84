"""`apptsync demo`: the embedded stack, two real imports, and a check of the database against the source.

The tenant is shaped like the one the legacy import served (the simulator's Acuity account 1100: 650
clients, 2,000 appointments, 99 of them ahead, 17 paying contacts, $5,856.00): besides the
appointments, the demo checks the contacts, paying contacts and revenue the mirror holds against the
simulator's truth (`/_admin/acuity/truth/1100/contacts`), and measures the payment requests.

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
# The simulator's legacy-shaped account (see apptsync.simulator._legacy_account).
DEMO_ACUITY_USER_ID = "1100"
DEMO_ACUITY_API_KEY = "acuity-key-1100"
DEMO_CURRENCY = "USD"
DEMO_APPOINTMENTS = 2000
DEMO_WINDOW_DAYS = 90
_TERMINAL = {imports_pb2.JOB_STATE_SUCCEEDED, imports_pb2.JOB_STATE_FAILED, imports_pb2.JOB_STATE_CANCELED}


@dataclass(frozen=True)
class ContactFigures:
    """What the legacy summary showed, as the mirror holds it and as the simulator states it."""

    contacts_total: int
    contacts_expected: int
    paying_contacts: int
    paying_contacts_expected: int
    revenue_minor: int
    revenue_expected_minor: int
    currency: str
    # The request cost of payments: one request per appointment whose amountPaid is not zero.
    appointments_in_window: int
    payment_requests: int
    provider_requests_first_import: int

    @property
    def exact(self) -> bool:
        return (self.contacts_total, self.paying_contacts, self.revenue_minor) == (
            self.contacts_expected, self.paying_contacts_expected, self.revenue_expected_minor)

    def payment_requests_per_1000_appointments(self) -> float:
        return 1000 * self.payment_requests / max(self.appointments_in_window, 1)

    def to_json(self) -> dict[str, object]:
        per_1000 = self.payment_requests_per_1000_appointments()
        return {
            "contacts_total": self.contacts_total,
            "contacts_expected": self.contacts_expected,
            "paying_contacts": self.paying_contacts,
            "paying_contacts_expected": self.paying_contacts_expected,
            "revenue_minor": self.revenue_minor,
            "revenue_expected_minor": self.revenue_expected_minor,
            "currency": self.currency,
            "appointments_in_window": self.appointments_in_window,
            "payment_requests": self.payment_requests,
            "payment_requests_per_1000_appointments": round(per_1000, 1),
            # Acuity's budget is 10 requests/s per source IP (the fetcher spends 10 per 1.1 s).
            "payment_seconds_per_1000_appointments_at_budget": round(per_1000 * 1.1 / 10, 1),
            "provider_requests_first_import": self.provider_requests_first_import,
        }


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
                    settings={"currency": DEMO_CURRENCY},
                ),
                timeout=10,
            )
            window = imports_pb2.TimeWindow(start=timestamp(window_start), end=timestamp(window_end))
            await _provider_requests(addresses.simulator_url, reset=True)
            first = await _import(stub, console, window, "first import (empty database)")
            first_requests = await _provider_requests(addresses.simulator_url)
            second = await _import(stub, console, window, "same import again (nothing new: stops early)")
        verification = await _verify(addresses.database_url, addresses.simulator_url, window_start, window_end)
        figures = await _contact_figures(
            addresses.database_url, addresses.simulator_url, window_start, window_end, first_requests
        )

    _print_jobs(console, first, second)
    ok = _print_checks(console, first, second, verification)
    ok = _print_contact_checks(console, figures) and ok
    if as_json:
        print(json.dumps({"first_job": message_dict(first), "second_job": message_dict(second),
                          "contacts": figures.to_json()}, indent=2))
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


async def _provider_requests(simulator_url: str, *, reset: bool = False) -> int:
    """Requests the simulated Acuity served since the last reset (`reset`: start counting afresh)."""
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as client:
        response = await (client.delete if reset else client.get)("/_admin/acuity/counters")
        response.raise_for_status()
        return int(response.json()["requests"])


# What the mirror holds for the tenant: its contacts, those whose revenue is above zero, and the
# revenue of every stored appointment (payments minus refunds, invariant 13), in the demo currency.
_CONTACT_FIGURES = """
SELECT (SELECT count(*) FROM contacts) AS contacts_total,
       (SELECT count(*) FROM contact_revenue
        WHERE COALESCE((revenue_minor_by_currency ->> $1)::bigint, 0) > 0) AS paying_contacts,
       (SELECT COALESCE(sum(p.amount_minor) FILTER (WHERE p.successful AND NOT p.refunded), 0)::bigint
        FROM payments AS p
        JOIN appointments AS a ON a.tenant_id = p.tenant_id AND a.external_source = p.external_source
         AND a.external_id = p.appointment_external_id
        WHERE p.currency = $1 AND a.deleted_at IS NULL) AS revenue_minor
"""


async def _contact_figures(
    database_url: str, simulator_url: str, start: datetime, end: datetime, first_requests: int
) -> ContactFigures:
    """The contacts, paying contacts and revenue stored for the demo tenant beside the simulator's truth."""
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as client:
        truth = await client.get(f"/_admin/acuity/truth/{DEMO_ACUITY_USER_ID}/contacts",
                                 params={"currency": DEMO_CURRENCY})
        truth.raise_for_status()
        expected = truth.json()
        listed = await client.get(f"/_admin/acuity/accounts/{DEMO_ACUITY_USER_ID}/appointments")
        listed.raise_for_status()
    in_window = [r for r in listed.json() if start <= datetime.strptime(r["datetime"], "%Y-%m-%dT%H:%M:%S%z") < end]
    connection = await asyncpg.connect(database_url)
    try:
        async with tenant_transaction(connection, DEMO_TENANT_ID):
            stored = await connection.fetchrow(_CONTACT_FIGURES, DEMO_CURRENCY)
    finally:
        await connection.close()
    assert stored is not None  # noqa: S101 -- an aggregate query always returns its row
    return ContactFigures(
        contacts_total=stored["contacts_total"],
        contacts_expected=int(expected["contacts_total"]),
        paying_contacts=stored["paying_contacts"],
        paying_contacts_expected=int(expected["paying_contacts"]),
        revenue_minor=stored["revenue_minor"],
        revenue_expected_minor=int(expected["revenue_minor"]),
        currency=DEMO_CURRENCY,
        appointments_in_window=len(in_window),
        payment_requests=sum(1 for r in in_window if str(r.get("amountPaid", "0")) not in ("0", "0.00", "")),
        provider_requests_first_import=first_requests,
    )


def _print_contact_checks(console: Console, figures: ContactFigures) -> bool:
    f = figures
    checks = [
        (f"contacts ({f.contacts_total}) = the simulator's people ({f.contacts_expected})",
         f.contacts_total == f.contacts_expected),
        (f"paying contacts ({f.paying_contacts}) = the simulator's ({f.paying_contacts_expected})",
         f.paying_contacts == f.paying_contacts_expected),
        (f"revenue ({f.revenue_minor / 100:,.2f} {f.currency}) = the simulator's "
         f"({f.revenue_expected_minor / 100:,.2f} {f.currency}): payments minus refunds",
         f.revenue_minor == f.revenue_expected_minor),
    ]
    for text, passed in checks:
        console.print(("[green]✓[/] " if passed else "[red]✗[/] ") + text)
    console.print(
        f"  payments cost {f.payment_requests} requests for {f.appointments_in_window} appointments "
        f"({f.payment_requests_per_1000_appointments():.1f} per 1,000 appointments, "
        f"{f.payment_requests_per_1000_appointments() * 1.1 / 10:.1f} s of Acuity's 10 requests/s budget); "
        f"the first import made {f.provider_requests_first_import} requests in all"
    )
    ok = all(passed for _, passed in checks)
    if not ok:
        print("demo contact checks failed", file=sys.stderr)
    return ok


def _print_jobs(console: Console, *jobs: imports_pb2.Job) -> None:
    table = Table(title="import jobs", title_justify="left")
    table.add_column("")
    for index, _job in enumerate(jobs, start=1):
        table.add_column(f"import {index}", justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("state", [imports_pb2.JobState.Name(j.state).removeprefix("JOB_STATE_") for j in jobs]),
        ("pages fetched / written", [f"{j.counts.pages_fetched} / {j.counts.pages_written}" for j in jobs]),
        ("records fetched", [str(j.counts.records_fetched) for j in jobs]),
        ("clients fetched", [str(j.counts.contacts_fetched) for j in jobs]),
        ("payments fetched", [str(j.counts.payments_fetched) for j in jobs]),
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
