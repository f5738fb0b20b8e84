"""Contacts and revenue end to end (issue #14): a job imports the legacy-shaped Acuity account's
clients, appointments and payments through the real processes, and the mirror's contacts, paying
contacts and revenue equal the simulator's truth; after a partial refund at the provider (a negative
payment entry), the next full sync stores the refund and brings revenue down to the new truth."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from apptsync.shared.counts import counts_add_up
from apptsync.shared.db.pool import tenant_transaction
from apptsync.shared.timestamps import timestamp
from apptsync.v1 import imports_pb2
from tests.e2e.system import TENANT_ID, TERMINAL, RunningSystem

pytestmark = pytest.mark.e2e
CONNECTION_ID = "acuity-legacy"
LEGACY_ACCOUNT = "1100"  # the simulator's legacy-shaped account (650 clients, 17 paying, $5,856.00)

FIGURES = """
SELECT (SELECT count(*) FROM contacts) AS contacts_total,
       (SELECT count(*) FROM contact_revenue
        WHERE COALESCE((revenue_minor_by_currency ->> 'USD')::bigint, 0) > 0) AS paying_contacts,
       (SELECT COALESCE(sum(revenue_minor), 0)::bigint FROM contact_revenue_by_currency
        WHERE currency = 'USD') AS revenue_minor,
       (SELECT count(*) FROM appointments WHERE contact_id IS NULL) AS unlinked
"""


async def import_legacy(system: RunningSystem, window: imports_pb2.TimeWindow) -> imports_pb2.Job:
    response = await system.stub.StartImport(
        imports_pb2.StartImportRequest(
            tenant_id=TENANT_ID, source=imports_pb2.SOURCE_ACUITY, connection_id=CONNECTION_ID, window=window,
            options=imports_pb2.ImportOptions(page_size=100, stop_policy=imports_pb2.STOP_POLICY_NEVER),
        ),
        metadata=system.metadata,
        timeout=10,
    )
    job = response.job
    async for snapshot in system.stub.WatchJob(
        imports_pb2.WatchJobRequest(tenant_id=TENANT_ID, job_id=job.job_id), metadata=system.metadata, timeout=180
    ):
        job = snapshot
    assert job.state in TERMINAL, "WatchJob ended before the job did"
    return job


async def truth(simulator_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as client:
        response = await client.get(f"/_admin/acuity/truth/{LEGACY_ACCOUNT}/contacts", params={"currency": "USD"})
        response.raise_for_status()
        summary: dict[str, Any] = response.json()
        return summary


async def stored_figures(database_url: str) -> dict[str, int]:
    connection = await asyncpg.connect(database_url)
    try:
        async with tenant_transaction(connection, TENANT_ID):
            row = await connection.fetchrow(FIGURES)
    finally:
        await connection.close()
    assert row is not None
    return dict(row)


async def test_a_job_imports_clients_and_payments_and_the_figures_equal_the_truth(
    running_system: RunningSystem,
) -> None:
    system = running_system
    simulator_url = system.services.addresses.simulator_url
    await system.stub.PutConnection(
        imports_pb2.PutConnectionRequest(
            tenant_id=TENANT_ID, connection_id=CONNECTION_ID, source=imports_pb2.SOURCE_ACUITY,
            base_url=f"{simulator_url}/acuity/api/v1",
            credentials={"user_id": LEGACY_ACCOUNT, "api_key": f"acuity-key-{LEGACY_ACCOUNT}"},
            settings={"currency": "USD"},
        ),
        metadata=system.metadata,
        timeout=10,
    )
    now = datetime.now(UTC)
    window = imports_pb2.TimeWindow(start=timestamp(now - timedelta(days=90)), end=timestamp(now + timedelta(days=90)))

    first = await import_legacy(system, window)

    assert first.state == imports_pb2.JOB_STATE_SUCCEEDED, first.error
    assert counts_add_up(first.counts)
    assert first.counts.contacts_fetched == 650  # every listed client, booked or not
    assert first.counts.payments_fetched > 0
    expected = await truth(simulator_url)
    figures = await stored_figures(system.database_url)
    assert (figures["contacts_total"], figures["paying_contacts"], figures["revenue_minor"]) == (
        expected["contacts_total"], expected["paying_contacts"], expected["revenue_minor"]) == (650, 17, 585600)
    assert figures["unlinked"] == 0  # every booking found its person

    async with httpx.AsyncClient(base_url=simulator_url, timeout=30) as client:
        appointments = (await client.get(f"/_admin/acuity/accounts/{LEGACY_ACCOUNT}/appointments")).json()
        paying = next(a for a in appointments if float(a["amountPaid"]) > 10 and not a["canceled"])
        refund = await client.post(
            f"/_admin/acuity/accounts/{LEGACY_ACCOUNT}/appointments/{paying['id']}/payments",
            json={"amount": "-10.00"},
        )
        refund.raise_for_status()

    second = await import_legacy(system, window)

    assert second.state == imports_pb2.JOB_STATE_SUCCEEDED, second.error
    assert second.counts.updated >= 1  # the refunded booking (its amountPaid and payments changed)
    after = await truth(simulator_url)
    assert after["revenue_minor"] == expected["revenue_minor"] - 1000
    figures = await stored_figures(system.database_url)
    assert (figures["contacts_total"], figures["paying_contacts"], figures["revenue_minor"]) == (
        after["contacts_total"], after["paying_contacts"], after["revenue_minor"])
    connection = await asyncpg.connect(system.database_url)
    try:
        async with tenant_transaction(connection, TENANT_ID):
            entries = await connection.fetch(
                "SELECT amount_minor FROM payments WHERE tenant_id = $1 AND appointment_external_id = $2",
                uuid.UUID(TENANT_ID), str(paying["id"]))
    finally:
        await connection.close()
    amounts = sorted(e["amount_minor"] for e in entries)
    assert -1000 in amounts and sum(amounts) == round(float(paying["amountPaid"]) * 100) - 1000
