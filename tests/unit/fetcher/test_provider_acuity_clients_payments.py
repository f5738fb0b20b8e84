"""Acuity's clients stream and payments: the payloads as Acuity documents them, and the session's
requests (only appointments with a non-zero amountPaid ask for their payments)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from apptsync.fetcher.providers import InMemoryConnectionStateStore, StoredPayments, open_session
from apptsync.fetcher.providers.acuity._clients_payments import acuity_clients, acuity_payments
from apptsync.shared.appointments import AppointmentStatus, CanonicalAppointment, Contact, Money, Payment, Source
from apptsync.shared.errors import ProviderRejectedError
from tests.unit.fetcher.test_provider_acuity_session import (
    BASIC,
    FETCHED_AT,
    WINDOW,
    FakeAcuity,
    acuity_record,
    drain,
    make_http,
    session,
)

pytestmark = pytest.mark.unit

# GET /appointments/{id}/payments as Acuity documents it: transactionID, created, processor, amount
# (a decimal string in the account's currency).
PAYMENTS: list[dict[str, object]] = [
    {"transactionID": "ch_1Aa2Bb", "created": "2024-03-10T09:12:44-0600", "processor": "stripe", "amount": "300.00"},
    {"transactionID": "re_1Cc3Dd", "created": "2024-03-12T16:00:00-0600", "processor": "stripe", "amount": "-75.00"},
]
# GET /clients: firstName, lastName, email, phone, notes, and no id.
CLIENTS: list[object] = [
    {"firstName": "Ann", "lastName": "Lee", "email": "Ann.Lee@Example.com", "phone": "(512) 555-0147", "notes": ""},
    {"firstName": "Bo", "lastName": "", "email": "", "phone": "", "notes": "walk-in"},
    {"firstName": "", "lastName": "", "email": "", "phone": "", "notes": "nobody"},
    "not an object",
]


LISTED: list[dict[str, object]] = [c for c in CLIENTS[:2] if isinstance(c, dict)]


def test_acuity_amount_strings_become_minor_units_and_a_refund_is_negative() -> None:
    payments = acuity_payments(PAYMENTS, "USD")  # type: ignore[arg-type]

    assert payments == (
        Payment("ch_1Aa2Bb", Money(30000, "USD"), "stripe",
                datetime(2024, 3, 10, 9, 12, 44, tzinfo=UTC) + timedelta(hours=6)),
        Payment("re_1Cc3Dd", Money(-7500, "USD"), "stripe", datetime(2024, 3, 12, 22, tzinfo=UTC)),
    )
    assert sum(p.revenue_minor for p in payments) == 22500


@pytest.mark.parametrize(
    "answer",
    [{"payments": []}, [{"created": "2024-03-10T09:12:44-0600", "amount": "1.00"}],
     [{"transactionID": "x", "amount": "a lot"}], ["x"]],
)
def test_an_unreadable_payments_answer_leaves_the_stored_payments(answer: object) -> None:
    assert acuity_payments(answer, "USD") is None  # type: ignore[arg-type]


def test_clients_keep_their_order_and_entries_naming_nobody_are_left_out() -> None:
    assert acuity_clients(CLIENTS) == [  # type: ignore[arg-type]
        Contact(name="Ann Lee", email="ann.lee@example.com", phone="(512) 555-0147"), Contact(name="Bo")]
    assert acuity_clients({"clients": []}) == []  # not the documented list


async def test_the_clients_stream_comes_first_in_pages_without_records_then_the_appointments() -> None:
    records = [acuity_record(n, date(2024, 3, 10 + n)) for n in range(1, 4)]
    records[0]["amountPaid"] = "225.00"
    fake = FakeAcuity(records, clients=LISTED * 6, payments={"1": PAYMENTS})  # 12 clients, page size 10
    http = make_http(fake)

    pages = await drain(session(http))
    await http.aclose()

    assert [len(page.contacts) for page in pages[:2]] == [10, 2]
    assert all(page.records_fetched == 0 and not page.appointments for page in pages[:2])
    appointments = [a for page in pages[2:] for a in page.appointments if isinstance(a, CanonicalAppointment)]
    paid = {a.external_id: a for a in appointments}
    assert [p.amount.amount_minor for p in paid["1"].payments] == [30000, -7500] and paid["1"].payments_known
    assert paid["2"].payments == () and paid["2"].payments_known  # amountPaid "0.00": nothing asked
    asked = [r.url.path for r in fake.requests if r.url.path.endswith("/payments")]
    assert asked == ["/api/v1/appointments/1/payments"]
    assert [r.url.path for r in fake.requests].count("/api/v1/clients") == 1


async def test_a_session_without_clients_lists_none() -> None:
    fake = FakeAcuity([acuity_record(1, date(2024, 3, 11))], clients=LISTED)
    http = make_http(fake)

    pages = await drain(session(http, clients=False))
    await http.aclose()

    assert [len(page.contacts) for page in pages] == [0]
    assert all(not r.url.path.endswith("/clients") for r in fake.requests)


async def test_a_job_resumed_in_the_clients_stream_continues_after_the_clients_it_sent() -> None:
    fake = FakeAcuity([], clients=LISTED * 6)
    http = make_http(fake)
    first = session(http)
    await first.next_page()
    cursor = first.cursor()

    rest = await drain(session(http, cursor=cursor))
    await http.aclose()

    assert cursor == {"clients_offset": 10, "appointments": None}
    assert [len(page.contacts) for page in rest] == [2]


async def test_payments_the_mirror_holds_with_the_same_amount_paid_are_not_asked_again() -> None:
    records = [acuity_record(n, date(2024, 3, 10 + n)) for n in range(1, 5)]
    for record, paid in zip(records, ("225.00", "50.00", "80.00", "0.00"), strict=True):
        record["amountPaid"] = paid
    state = InMemoryConnectionStateStore()
    state.stored_money = {
        "1": StoredPayments(22500, 2),  # held as it is: no request, the list left unknown
        "2": StoredPayments(8000, 1),  # amountPaid moved (a refund): asked again
        "3": StoredPayments(8000, 0),  # held without entries (stored before payments were): asked
    }
    fake = FakeAcuity(records, payments={"1": PAYMENTS, "2": PAYMENTS[:1], "3": PAYMENTS[:1]})
    http = make_http(fake)

    pages = await drain(open_session(Source.ACUITY, http=http, connection=BASIC, window=WINDOW, page_size=10,
                                     cursor=None, clock=lambda: FETCHED_AT, state=state))
    await http.aclose()

    asked = sorted(r.url.path for r in fake.requests if r.url.path.endswith("/payments"))
    assert asked == ["/api/v1/appointments/2/payments", "/api/v1/appointments/3/payments"]
    known = {a.external_id: a.payments_known for page in pages for a in page.appointments
             if isinstance(a, CanonicalAppointment)}
    assert known == {"1": False, "2": True, "3": True, "4": True}


def test_payments_are_not_part_of_the_content_hash() -> None:
    """Whether they were asked for varies between syncs of one record; its raw JSON shows every change."""
    base = CanonicalAppointment(
        external_id="1", starts_at=datetime(2024, 3, 10, tzinfo=UTC), ends_at=datetime(2024, 3, 10, 1, tzinfo=UTC),
        timezone="UTC", status=AppointmentStatus.SCHEDULED, observed_at=datetime(2024, 3, 10, tzinfo=UTC),
        raw_json='{"id": 1, "amountPaid": "225.00"}')
    fetched = dataclasses.replace(base, payments=acuity_payments(PAYMENTS, "USD") or (), payments_known=True)  # type: ignore[arg-type]
    assert fetched.content_hash == base.content_hash


async def test_a_page_asks_for_its_payments_together_and_one_failure_fails_the_page_with_the_error_tree() -> None:
    records = [acuity_record(n, date(2024, 3, 10 + n)) for n in range(1, 7)]
    for record in records:
        record["amountPaid"] = "300.00"
    fake = FakeAcuity(records, payments={str(n): PAYMENTS[:1] for n in range(1, 7)})

    def payments_of_4_fail(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/4/payments"):
            return httpx.Response(404, json={"status_code": 404, "error": "not_found", "message": "Not found"})
        return fake(request)

    http = make_http(payments_of_4_fail)
    with pytest.raises(ProviderRejectedError, match="404"):
        await drain(session(http, clients=False))
    await http.aclose()
    asked = [r.url.path for r in fake.requests if r.url.path.endswith("/payments")]
    assert "/api/v1/appointments/1/payments" in asked  # the others were asked beside it, not after it


async def test_every_paying_appointment_of_a_page_gets_its_own_payments_in_the_page_order() -> None:
    records = [acuity_record(n, date(2024, 3, 10 + n)) for n in range(1, 7)]
    for n, record in enumerate(records, start=1):
        record["amountPaid"] = "0.00" if n % 3 == 0 else f"{n}00.00"
    fake = FakeAcuity(records, payments={
        str(n): [{"transactionID": f"ch_{n}", "created": "2024-03-10T09:12:44-0600", "processor": "stripe",
                  "amount": f"{n}00.00"}] for n in range(1, 7)})
    http = make_http(fake)

    pages = await drain(session(http, clients=False))
    await http.aclose()

    appointments = [a for page in pages for a in page.appointments if isinstance(a, CanonicalAppointment)]
    assert {a.external_id: [p.transaction_id for p in a.payments] for a in appointments} == {
        "1": ["ch_1"], "2": ["ch_2"], "3": [], "4": ["ch_4"], "5": ["ch_5"], "6": []}
    assert all(a.payments_known for a in appointments)
