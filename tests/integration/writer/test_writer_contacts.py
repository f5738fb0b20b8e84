"""Contacts (invariant 8) and per-contact revenue against a real PostgreSQL.

Each test names the mechanism it guards; removing that mechanism makes it fail.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from apptsync.shared.appointments import AppointmentStatus, CanonicalAppointment, Contact, Money
from apptsync.writer.accounting import DecodedPage, decode_page
from apptsync.writer.store import write_pages
from tests.integration.writer.writer_database import job_counters, padded
from tests.unit.writer.page_builders import T0, TENANT, page

pytestmark = pytest.mark.integration

CreateJob = Callable[..., Awaitable[str]]
# The revenue view's "last visit" is relative to now(): these are safely in the past / future.
PAST = datetime.now(UTC) - timedelta(days=30)
FUTURE = datetime.now(UTC) + timedelta(days=30)


def booking(external_id: str, contact: Contact, *, starts_at: datetime = PAST, paid: Money | None = None,
            status: AppointmentStatus = AppointmentStatus.COMPLETED, version: int = 0,
            observed_at: datetime = T0) -> CanonicalAppointment:
    return dataclasses.replace(
        padded(external_id, version=version, observed_at=observed_at, contact=contact),
        starts_at=starts_at, ends_at=starts_at + timedelta(minutes=45), amount_paid=paid, status=status,
    )


def one_page(job_id: str, appointments: list[CanonicalAppointment], page_no: int = 1) -> DecodedPage:
    return decode_page(page(appointments, page_no=page_no, job_id=job_id).SerializeToString())


async def contact_of(connection: asyncpg.Connection) -> dict[str, int | None]:
    rows = await connection.fetch("SELECT external_id, contact_id FROM appointments ORDER BY external_id")
    return {row["external_id"]: row["contact_id"] for row in rows}


async def revenue(connection: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    rows = await connection.fetch(
        """SELECT email, appointments, last_visit_at, amount_paid_minor_by_currency AS paid
           FROM contact_revenue ORDER BY email""")
    return {
        row["email"]: {"appointments": row["appointments"], "last_visit_at": row["last_visit_at"],
                       "paid": json.loads(row["paid"])}
        for row in rows
    }


async def test_contacts_match_by_email_then_phone_then_client_id_and_unmatched_rows_are_kept(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards the match key (normalized email > phone > client id), the set-based contact upsert and
    the null contact of unmatched bookings: without them bookings are dropped or split per spelling."""
    job = await create_job(TENANT)
    appointments = [
        booking("a1", Contact(name="Ada", email="Ada@Example.org ")),
        booking("a2", Contact(name="Ada L.", email="ada@example.org", phone="+49 30 1234567")),
        booking("b1", Contact(name="Bob", phone="+49 (30) 123-4567")),  # phone only: a contact of its own
        booking("c1", Contact(name="Cy", provider_client_id="client-77")),
        booking("c2", Contact(name="", provider_client_id=" client-77")),
        booking("n1", Contact(name="Nobody")),  # nothing to match by
        booking("n2", Contact()),
    ]

    (outcome,) = await write_pages(connection, [one_page(job, appointments)])

    assert (outcome.counts.inserted, outcome.counts.contacts_unmatched) == (7, 2)
    assert (await job_counters(connection, job))["contacts_unmatched"] == 2
    links = await contact_of(connection)
    assert links["a1"] == links["a2"] is not None
    assert links["c1"] == links["c2"] is not None
    assert links["b1"] is not None and links["b1"] not in (links["a1"], links["c1"])
    assert links["n1"] is None and links["n2"] is None
    contacts = await connection.fetch("SELECT match_key, name, phone FROM contacts ORDER BY match_key")
    assert [(c["match_key"], c["name"]) for c in contacts] == [
        ("client:client-77", "Cy"),  # an empty name in a later booking does not erase the known one
        ("email:ada@example.org", "Ada L."),
        ("phone:+49301234567", "Bob"),
    ]
    # The booking keeps what the provider said about it, whatever the contact row says.
    assert await connection.fetchval("SELECT contact_email FROM appointments WHERE external_id = 'a1'") == \
        "Ada@Example.org "


async def test_an_identical_reimport_touches_no_contact_and_a_change_relinks(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards "contacts only for written rows": an unchanged re-import must not lock or rewrite contacts."""
    appointments = [booking(f"r{i}", Contact(name=f"P{i % 3}", email=f"p{i % 3}@example.org")) for i in range(9)]
    await write_pages(connection, [one_page(await create_job(TENANT), appointments)])
    versions = await connection.fetch("SELECT contact_id, xmin::text AS xmin FROM contacts ORDER BY contact_id")

    (rerun,) = await write_pages(connection, [one_page(await create_job(TENANT), appointments)])

    assert rerun.counts.unchanged == 9
    assert await connection.fetch("SELECT contact_id, xmin::text AS xmin FROM contacts ORDER BY contact_id") == \
        versions
    moved = booking("r0", Contact(name="New", email="new@example.org"), version=1, observed_at=T0 + timedelta(1))
    (change,) = await write_pages(connection, [one_page(await create_job(TENANT), [moved])])
    assert change.counts.updated == 1
    new_contact = await connection.fetchval("SELECT contact_id FROM contacts WHERE match_key = 'email:new@example.org'")
    assert (await contact_of(connection))["r0"] == new_contact


async def test_revenue_per_contact_stays_right_under_reimport_and_update(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards the revenue view being computed from stored rows: a maintained total would double on the
    re-import (a redelivery of the same bookings) or miss the update."""
    ada = Contact(name="Ada", email="ada@example.org")
    bookings = [
        booking("v1", ada, starts_at=PAST, paid=Money(4500, "EUR")),
        booking("v2", ada, starts_at=PAST + timedelta(days=7), paid=Money(3000, "EUR")),
        booking("v3", ada, starts_at=PAST + timedelta(days=8), paid=Money(2000, "USD")),
        # canceled and future bookings count as appointments but are no visit
        booking("v4", ada, starts_at=PAST + timedelta(days=9), status=AppointmentStatus.CANCELED),
        booking("v5", ada, starts_at=FUTURE, status=AppointmentStatus.SCHEDULED),
    ]
    await write_pages(connection, [one_page(await create_job(TENANT), bookings)])
    expected = {"appointments": 5, "last_visit_at": PAST + timedelta(days=8), "paid": {"EUR": 7500, "USD": 2000}}
    assert (await revenue(connection))["ada@example.org"] == expected

    await write_pages(connection, [one_page(await create_job(TENANT), bookings)])  # identical re-import
    assert (await revenue(connection))["ada@example.org"] == expected

    refunded = booking("v2", ada, starts_at=PAST + timedelta(days=7), paid=Money(0, "EUR"), version=1,
                       observed_at=T0 + timedelta(hours=1))
    visited = booking("v5", ada, starts_at=PAST + timedelta(days=20), paid=Money(1000, "USD"), version=1,
                      observed_at=T0 + timedelta(hours=1))
    await write_pages(connection, [one_page(await create_job(TENANT), [refunded, visited])])
    assert (await revenue(connection))["ada@example.org"] == {
        "appointments": 5, "last_visit_at": PAST + timedelta(days=20), "paid": {"EUR": 4500, "USD": 3000}}


async def test_deleting_a_contact_unlinks_its_appointments_and_keeps_them(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards the contacts_deleted trigger (what ON DELETE SET NULL would do without a foreign key):
    a deleted contact leaves no dangling contact_id, and the bookings stay."""
    ada, bob = Contact(name="Ada", email="ada@example.org"), Contact(name="Bob", email="bob@example.org")
    await write_pages(connection, [one_page(await create_job(TENANT), [booking("d1", ada), booking("d2", bob)])])

    await connection.execute("DELETE FROM contacts WHERE match_key = 'email:ada@example.org'")

    links = await contact_of(connection)
    assert links["d1"] is None
    assert links["d2"] == await connection.fetchval("SELECT contact_id FROM contacts")
