"""Pure parts of contacts and refusals: match keys, contact planning, dropping refused records."""

from __future__ import annotations

from datetime import timedelta

import pytest

from apptsync.shared.appointments import Contact
from apptsync.shared.errors import PoisonMessageError
from apptsync.shared.messages.appointment_pages import parse_appointment_page
from apptsync.writer.accounting import (
    StoredVersion,
    decode_page,
    drop_refused_records,
    payment_refreshes,
    plan_batch,
    plan_contacts,
    refused_page_counts,
)
from apptsync.writer.intake import record_page_value
from tests.unit.writer.page_builders import T0, appointment, page

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("email", "phone", "client_id", "expected"),
    [
        (" Ada@Example.ORG ", "+49 30 123456", "c1", "email:ada@example.org"),
        ("not-an-email", "+49 (30) 123-456", "c1", "phone:+4930123456"),
        ("", "(415) 555-0123", "", "phone:+14155550123"),  # the page's default region (US)
        ("", "12", " c-7 ", "client:acuity:c-7"),  # too few digits to identify anyone
        ("", "", "", None),
        ("   ", " - ", "  ", None),
    ],
)
def test_the_contact_key_is_email_then_phone_then_client_id(
    email: str, phone: str, client_id: str, expected: str | None
) -> None:
    decoded = decode_page(page([appointment(
        "a", contact=Contact(email=email, phone=phone, provider_client_id=client_id))]).SerializeToString())

    assert decoded.rows[0].contact_key == expected


def test_unmatched_rows_are_counted_and_the_batch_lists_its_people_in_order() -> None:
    decoded = decode_page(page([
        appointment("a", contact=Contact(name="Ada", email="ada@example.org", phone="+4930123456")),
        appointment("b", contact=Contact(name="", email="ADA@example.org")),
        appointment("c", contact=Contact(name=" ", phone="12")),  # nothing to match by
    ]).SerializeToString())
    plan = plan_batch([decoded], {})

    contacts = plan_contacts([decoded], plan.writes.values())

    assert decoded.contacts_unmatched == 1
    assert [found for _, found in contacts.observations] == [
        (("email", "ada@example.org"), ("phone", "+4930123456")), (("email", "ada@example.org"),)]
    assert contacts.write_index == {("acuity", "a"): 0, ("acuity", "b"): 1}
    assert contacts.all_identities == [("email", "ada@example.org"), ("phone", "+4930123456")]


def test_dropped_records_become_dead_letters_and_the_identity_holds() -> None:
    decoded = decode_page(page([appointment("a"), appointment("b"), appointment("c")],
                               skipped_out_of_window=2).SerializeToString())

    (kept,) = drop_refused_records([decoded], {(decoded.key, "b"): "invalid json"})

    assert [row.external_id for row in kept.rows] == ["a", "c"]
    assert (kept.skipped.dead_letter, kept.skipped.out_of_window) == (1, 2)
    assert len(kept.rows) + kept.skipped.total == kept.records_fetched == 5
    refused = refused_page_counts(decoded)
    assert (refused.skipped.dead_letter, refused.inserted, refused.records_fetched) == (3, 0, 5)


def test_a_refused_record_is_copied_alone_as_a_one_record_page() -> None:
    value = page([appointment("a"), appointment("b", version=1), appointment("b", version=2)],
                 skipped_invalid=1).SerializeToString()

    single = parse_appointment_page(record_page_value(value, "b"))

    assert [a.title for a in single.appointments] == ["Session v2"]  # the copy the writer tried to store
    assert (single.records_fetched, single.skipped.invalid) == (1, 0)
    with pytest.raises(PoisonMessageError):
        record_page_value(value, "missing")


def test_unchanged_rows_with_a_known_payment_list_refresh_their_payments_stale_ones_do_not() -> None:
    stored_page = decode_page(page([appointment("a", payments=(("t1", 100),)), appointment("b")]).SerializeToString())
    stored = {(stored_page.external_source, row.external_id): StoredVersion(row.content_hash, row.observed_at)
              for row in stored_page.rows}
    older = T0 - timedelta(hours=1)
    again = decode_page(page([
        appointment("a", payments=(("t1", 100),)),  # unchanged, payments known: refreshed
        appointment("b"),  # unchanged, payments not asked for: nothing
        appointment("c", payments=(("t3", 300),)),  # new: written with the row, not a refresh
        appointment("d", payments=()),  # known empty: nothing to refresh
    ]).SerializeToString())
    stale = decode_page(page([appointment("a", version=9, observed_at=older, payments=(("t9", 900),))],
                             page_no=2).SerializeToString())

    plan = plan_batch([again, stale], stored)

    assert [write.row.external_id for write in payment_refreshes(plan)] == ["a"]
    assert payment_refreshes(plan)[0].page.page_no == 1
