"""Contacts (invariants 8 and 12) and per-contact revenue (invariant 13) against a real PostgreSQL.

Each test names the mechanism it guards; removing that mechanism makes it fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from apptsync.shared.appointments import AppointmentStatus, CanonicalAppointment, Contact, Money, Payment
from apptsync.writer.accounting import DecodedPage, decode_page
from apptsync.writer.store import write_pages
from tests.integration.writer.writer_database import job_counters, padded
from tests.unit.writer.page_builders import T0, TENANT, page

pytestmark = pytest.mark.integration

CreateJob = Callable[..., Awaitable[str]]
# The revenue view's "last visit" is relative to now(): these are safely in the past / future.
PAST = datetime.now(UTC) - timedelta(days=30)
FUTURE = datetime.now(UTC) + timedelta(days=30)


def booking(external_id: str, contact: Contact, *, starts_at: datetime = PAST,
            payments: tuple[Payment, ...] | None = None,
            status: AppointmentStatus = AppointmentStatus.COMPLETED, version: int = 0,
            observed_at: datetime = T0) -> CanonicalAppointment:
    """A booking; `payments`: its known payment list (None: not asked for)."""
    return dataclasses.replace(
        padded(external_id, version=version, observed_at=observed_at, contact=contact),
        starts_at=starts_at, ends_at=starts_at + timedelta(minutes=45), status=status,
        payments=payments or (), payments_known=payments is not None,
    )


def paid(transaction_id: str, amount_minor: int, currency: str = "USD", *, successful: bool = True) -> Payment:
    return Payment(transaction_id, Money(amount_minor, currency), "stripe", successful=successful)


def one_page(job_id: str, appointments: list[CanonicalAppointment], page_no: int = 1, *,
             source: str = "acuity", contacts: tuple[Contact, ...] = ()) -> DecodedPage:
    return decode_page(page(appointments, page_no=page_no, job_id=job_id, external_source=source,
                            contacts=contacts).SerializeToString())


async def contact_of(connection: asyncpg.Connection) -> dict[str, int | None]:
    rows = await connection.fetch("SELECT external_id, contact_id FROM appointments ORDER BY external_id")
    return {row["external_id"]: row["contact_id"] for row in rows}


async def revenue(connection: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    rows = await connection.fetch(
        """SELECT email, appointments, last_visit_at, revenue_minor_by_currency AS paid, paying
           FROM contact_revenue ORDER BY email""")
    return {
        row["email"]: {"appointments": row["appointments"], "last_visit_at": row["last_visit_at"],
                       "paid": json.loads(row["paid"]), "paying": row["paying"]}
        for row in rows
    }


async def identities_of(connection: asyncpg.Connection) -> dict[tuple[str, str], int]:
    rows = await connection.fetch("SELECT kind, value, contact_id FROM contact_identities")
    return {(row["kind"], row["value"]): row["contact_id"] for row in rows}


async def test_contacts_match_by_email_phone_client_id_or_name_and_unmatched_rows_are_kept(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards the identities (case-folded email, E.164 phone, client id, else the name), their
    transitive matching and the null contact of unmatched bookings: without them bookings are
    dropped or split per spelling."""
    job = await create_job(TENANT)
    appointments = [
        booking("a1", Contact(name="Ada", email="Ada@Example.org ")),
        booking("a2", Contact(name="Ada L.", email="ada@example.org", phone="+49 30 1234567")),
        booking("b1", Contact(name="Bob", phone="+49 (30) 123-4567")),  # Ada's phone: Ada (transitively)
        booking("c1", Contact(name="Cy", provider_client_id="client-77")),
        booking("c2", Contact(name="", provider_client_id=" client-77")),
        booking("n1", Contact(name="Nobody")),  # only a name: matched by it
        booking("n2", Contact()),  # nothing to match by
    ]

    (outcome,) = await write_pages(connection, [one_page(job, appointments)])

    assert (outcome.counts.inserted, outcome.counts.contacts_unmatched) == (7, 1)
    assert (await job_counters(connection, job))["contacts_unmatched"] == 1
    links = await contact_of(connection)
    assert links["a1"] == links["a2"] == links["b1"] is not None
    assert links["c1"] == links["c2"] is not None and links["c1"] != links["a1"]
    assert links["n1"] is not None and links["n2"] is None
    contacts = await connection.fetch("SELECT match_key, name, phone FROM contacts ORDER BY contact_id")
    assert [(c["match_key"], c["name"]) for c in contacts] == [
        ("person:email:ada@example.org", "Bob"),  # the latest non-empty name observed
        ("person:client:acuity:client-77", "Cy"),  # an empty name in a later booking does not erase it
        ("person:name:acuity:nobody", "Nobody"),
    ]
    assert await identities_of(connection) == {
        ("email", "ada@example.org"): links["a1"], ("phone", "+49301234567"): links["a1"],
        ("client", "acuity:client-77"): links["c1"], ("name", "acuity:nobody"): links["n1"]}
    # The booking keeps what the provider said about it, whatever the contact row says.
    assert await connection.fetchval("SELECT contact_email FROM appointments WHERE external_id = 'a1'") == \
        "Ada@Example.org "


async def test_a_person_seen_by_email_in_one_source_and_by_phone_in_another_is_one_contact(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards the tenant-wide contact (invariant 12): per source, or by one derived key, Ada's
    Acuity booking (email and phone) and her Calendly booking (phone only, typed differently) are
    two people."""
    await write_pages(connection, [one_page(await create_job(TENANT), [
        booking("acuity-1", Contact(name="Ada", email="ADA@example.org", phone="(415) 555-0123"))])])
    await write_pages(connection, [one_page(await create_job(TENANT), [
        booking("calendly-1", Contact(name="Ada Lovelace", phone="+1 415 555 0123"))], source="calendly")])

    links = await contact_of(connection)
    assert links["acuity-1"] == links["calendly-1"] is not None
    assert await connection.fetchval("SELECT count(*) FROM contacts") == 1


async def test_listed_clients_are_contacts_without_appointments_and_their_bookings_find_them(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards the clients stream: a page of contacts and no records stores every listed client (by
    email, phone, else name, as Acuity's /clients has no id), counted as contacts_fetched."""
    job = await create_job(TENANT)
    clients = (Contact(name="Ann Lee", email="ann@example.org"), Contact(name="Bo Diaz", phone="512.555.0147"),
               Contact(name="Cleo  Park"))
    (listed,) = await write_pages(connection, [one_page(job, [], contacts=clients)])
    (booked,) = await write_pages(connection, [one_page(job, [
        booking("x1", Contact(name="B. Diaz", phone="+1 512 555 0147")),
        booking("x2", Contact(name="cleo park"))], page_no=2)])

    assert (listed.counts.records_fetched, listed.counts.contacts_fetched) == (0, 3)
    assert booked.counts.contacts_fetched == 0
    assert await connection.fetchval("SELECT contacts_fetched FROM import_jobs WHERE job_id = $1", job) == 3
    assert await connection.fetchval("SELECT count(*) FROM contacts") == 3
    links = await contact_of(connection)
    names = {row["contact_id"]: row["name"] for row in await connection.fetch("SELECT contact_id, name FROM contacts")}
    # A new name replaces the listed one; a mere re-spelling of it (case, spacing) keeps the listed text.
    assert (names[links["x1"]], names[links["x2"]]) == ("B. Diaz", "Cleo  Park")


async def test_two_stored_contacts_found_to_be_one_person_merge_into_the_lower_id(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards the merge: identities and appointments move to the lower id, the higher one is deleted,
    and payments follow their appointments into the winner's revenue."""
    await write_pages(connection, [one_page(await create_job(TENANT), [
        booking("e1", Contact(name="Ada", email="ada@example.org"), payments=(paid("t-e1", 30000),))])])
    await write_pages(connection, [one_page(await create_job(TENANT), [
        booking("p1", Contact(name="", phone="+14155550123"), payments=(paid("t-p1", 5000),))],
        source="calendly")])
    before = await contact_of(connection)
    assert before["e1"] != before["p1"]
    low = min(before["e1"] or 0, before["p1"] or 0)

    await write_pages(connection, [one_page(await create_job(TENANT), [
        booking("g1", Contact(name="Ada L.", email="ada@example.org", phone="415-555-0123"))],
        source="google_calendar")])

    assert set((await contact_of(connection)).values()) == {low}
    assert await connection.fetchval("SELECT array_agg(contact_id) FROM contacts") == [low]
    assert set((await identities_of(connection)).values()) == {low}
    assert len(await identities_of(connection)) == 2  # every identity seen is kept
    assert (await revenue(connection))["ada@example.org"]["paid"] == {"USD": 35000}


async def test_redelivery_and_reimport_change_no_contact(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards idempotence: the same page again (replayed) or the same content in a new job writes no
    contact, identity or payment."""
    appointments = [booking(f"r{i}", Contact(name=f"P{i % 3}", email=f"p{i % 3}@example.org"),
                            payments=(paid(f"t{i}", 100 * i),)) for i in range(9)]
    first = one_page(await create_job(TENANT), appointments, contacts=(Contact(name="Lone", phone="5125550100"),))
    await write_pages(connection, [first])
    state = """SELECT (SELECT array_agg(xmin::text ORDER BY contact_id) FROM contacts),
                      (SELECT array_agg(xmin::text ORDER BY value) FROM contact_identities),
                      (SELECT array_agg(xmin::text ORDER BY transaction_id) FROM payments)"""
    versions = await connection.fetchrow(state)

    (again,) = await write_pages(connection, [first])
    (rerun,) = await write_pages(connection, [one_page(await create_job(TENANT), appointments)])

    assert again.redelivered and rerun.counts.unchanged == 9
    assert await connection.fetchrow(state) == versions
    assert await connection.fetchval("SELECT count(*) FROM contacts") == 4


async def test_concurrent_writers_of_one_tenant_make_one_contact_per_person(
    connection: asyncpg.Connection, create_job: CreateJob, database_url: str
) -> None:
    """Guards the per-tenant contacts lock: two writers seeing the same new people at once would each
    create them (an identity not stored yet cannot be row-locked) or merge crosswise."""
    people = [Contact(name=f"P{i}", email=f"p{i}@example.org", phone=f"+1512555{i:04d}") for i in range(40)]
    by_email = [booking(f"m{i}", Contact(name=p.name, email=p.email)) for i, p in enumerate(people)]
    by_phone = [booking(f"n{i}", Contact(name=p.name, phone=p.phone)) for i, p in enumerate(people)]
    by_both = [booking(f"o{i}", p) for i, p in enumerate(people)]
    jobs = [await create_job(TENANT) for _ in range(3)]
    connections = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(
            write_pages(conn, [one_page(job, rows, source=source)])
            for conn, job, rows, source in zip(connections, jobs, [by_email, by_phone, by_both],
                                               ["acuity", "calendly", "google_calendar"], strict=True)
        ))
    finally:
        for conn in connections:
            await conn.close()

    links = await contact_of(connection)
    assert await connection.fetchval("SELECT count(*) FROM contacts") == 40
    for i in range(40):
        assert links[f"m{i}"] == links[f"n{i}"] == links[f"o{i}"] is not None
    assert len(await identities_of(connection)) == 80


async def test_revenue_is_successful_payments_minus_refunds_and_stays_right_under_reimport(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards the revenue view (invariant 13): computed from the stored payments, so a re-import
    cannot double it; a refund entry subtracts; an unsuccessful payment adds nothing; a canceled and
    refunded booking adds nothing; a payment list given again replaces the stored one."""
    ada = Contact(name="Ada", email="ada@example.org")
    bookings = [
        booking("v1", ada, starts_at=PAST, payments=(paid("t1", 4500, "EUR"),)),
        booking("v2", ada, starts_at=PAST + timedelta(days=7), payments=(paid("t2", 3000, "EUR"),)),
        booking("v3", ada, starts_at=PAST + timedelta(days=8), payments=(paid("t3", 2000),)),
        booking("v4", ada, starts_at=PAST + timedelta(days=9), status=AppointmentStatus.CANCELED,
                payments=(paid("t4", 7000), paid("t4-refund", -7000))),
        booking("v5", ada, starts_at=FUTURE, status=AppointmentStatus.SCHEDULED,
                payments=(paid("t5", 999, successful=False),)),
    ]
    await write_pages(connection, [one_page(await create_job(TENANT), bookings)])
    expected = {"appointments": 5, "last_visit_at": PAST + timedelta(days=8), "paid": {"EUR": 7500, "USD": 2000},
                "paying": True}
    assert (await revenue(connection))["ada@example.org"] == expected

    await write_pages(connection, [one_page(await create_job(TENANT), bookings)])  # identical re-import
    assert (await revenue(connection))["ada@example.org"] == expected

    refunded = booking("v2", ada, starts_at=PAST + timedelta(days=7), version=1, observed_at=T0 + timedelta(hours=1),
                       payments=(paid("t2", 3000, "EUR"), paid("t2-refund", -3000, "EUR")))
    visited = booking("v5", ada, starts_at=PAST + timedelta(days=20), version=1, observed_at=T0 + timedelta(hours=1),
                      payments=(paid("t5", 1000),))
    await write_pages(connection, [one_page(await create_job(TENANT), [refunded, visited])])
    assert (await revenue(connection))["ada@example.org"] == {
        "appointments": 5, "last_visit_at": PAST + timedelta(days=20), "paid": {"EUR": 4500, "USD": 3000},
        "paying": True}
    assert await connection.fetchval("SELECT amount_minor FROM payments WHERE transaction_id = 't5'") == 1000


async def test_deleting_a_contact_unlinks_its_appointments_and_keeps_them(
    connection: asyncpg.Connection, create_job: CreateJob
) -> None:
    """Guards the contacts_deleted trigger (what ON DELETE SET NULL would do without a foreign key):
    a deleted contact leaves no dangling contact_id, and the bookings stay."""
    ada, bob = Contact(name="Ada", email="ada@example.org"), Contact(name="Bob", email="bob@example.org")
    await write_pages(connection, [one_page(await create_job(TENANT), [booking("d1", ada), booking("d2", bob)])])

    await connection.execute("DELETE FROM contacts WHERE match_key = 'person:email:ada@example.org'")

    links = await contact_of(connection)
    assert links["d1"] is None
    assert links["d2"] == await connection.fetchval("SELECT contact_id FROM contacts")
