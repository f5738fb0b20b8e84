"""One contact per person: normalizing identities and resolving observations (apptsync.writer.contacts)."""

from __future__ import annotations

import random

import phonenumbers
import pytest

from apptsync.writer.contacts import (
    ContactRef,
    Observation,
    StoredContact,
    _plain_nanp_number,
    first_identity,
    identities,
    match_key,
    normalize_email,
    normalize_phone,
    resolve,
    stored_contacts,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("email", "expected"),
    [(" Ada@Example.ORG ", "ada@example.org"), ("STRASSE@Beispiel.de", "strasse@beispiel.de"),
     ("not-an-email", None), ("@example.org", None), ("", None), ("a b@example.org", None)],
)
def test_emails_are_trimmed_and_case_folded(email: str, expected: str | None) -> None:
    assert normalize_email(email) == expected


@pytest.mark.parametrize(
    ("phone", "region", "expected"),
    [
        ("(415) 555-0123", "US", "+14155550123"),
        ("+1 415-555-0123", "DE", "+14155550123"),  # an international number ignores the region
        ("030 123456", "DE", "+4930123456"),
        ("0044 20 7946 0958", "DE", "+442079460958"),
        ("415.555.0123", "", "+14155550123"),  # no region: the default (US)
        ("12", "US", None),  # not a possible number
        ("call me", "US", None),
        ("", "US", None),
    ],
)
def test_phones_become_e164_in_the_default_region(phone: str, region: str, expected: str | None) -> None:
    assert normalize_phone(phone, region) == expected


def test_identities_come_in_matching_priority_and_a_name_only_without_the_others() -> None:
    full = Observation("acuity", "Ada Lovelace", "ADA@example.org", "(415) 555-0123", "77")
    assert identities(full) == (("email", "ada@example.org"), ("phone", "+14155550123"), ("client", "acuity:77"))
    assert identities(Observation("acuity", name="  Ada   LOVELACE ", listed_client=True)) == (
        ("name", "acuity:ada lovelace"),)
    assert identities(Observation("acuity", name="Ada Lovelace")) == (("name", "acuity:ada lovelace"),)
    assert identities(Observation("acuity", name="Ada", email="ada@example.org")) == (("email", "ada@example.org"),)
    assert identities(Observation("acuity", name="  ")) == ()


def observed(*observations: Observation) -> list[tuple[Observation, tuple[tuple[str, str], ...]]]:
    return [(observation, identities(observation)) for observation in observations]


def test_a_person_seen_by_email_in_one_source_and_by_phone_in_another_is_one_contact() -> None:
    resolution = resolve(observed(
        Observation("acuity", "Ada", "ada@example.org", "(415) 555-0123"),
        Observation("calendly", "Ada L.", phone="+1 415 555 0123"),
        Observation("calendly", "", "ADA@EXAMPLE.ORG"),
    ), [])

    assert resolution.contact_of == [("new", 0)] * 3
    assert list(resolution.new_contacts) == [("new", 0)]
    assert resolution.new_contacts[("new", 0)] == (
        "acuity", "person:email:ada@example.org", "Ada L.", "ada@example.org", "(415) 555-0123")  # latest wins,
    # unless it only spells the value it replaces otherwise (the email's case, the phone's country code)
    assert set(resolution.identities) == {("email", "ada@example.org"), ("phone", "+14155550123")}


def test_an_observation_linking_two_stored_contacts_merges_them_into_the_lower_id() -> None:
    stored = [StoredContact(7, "Ada", "ada@example.org", "", frozenset({("email", "ada@example.org")})),
              StoredContact(3, "", "", "4155550123", frozenset({("phone", "+14155550123"), ("client", "g:9")}))]

    resolution = resolve(observed(Observation("acuity", "Ada", "ada@example.org", "415 555 0123")), stored)

    assert resolution.merges == {7: 3}
    assert resolution.contact_of == [3]
    assert resolution.new_contacts == {} and resolution.identities == {}  # every identity was owned
    assert resolution.updates == {3: ("Ada", "ada@example.org", "4155550123")}  # the phone only re-spelled


def test_sharing_any_identity_makes_one_person_transitively() -> None:
    stored = [StoredContact(1, "Ada", "ada@example.org", "+14155550123",
                            frozenset({("email", "ada@example.org"), ("phone", "+14155550123")}))]

    resolution = resolve(observed(Observation("acuity", "Bob", "bob@example.org", "+14155550123")), stored)

    assert resolution.merges == {}
    assert resolution.contact_of == [1]  # the phone matched, as the legacy import matched it
    assert resolution.identities == {("email", "bob@example.org"): 1}


def test_new_contacts_linked_later_in_the_batch_merge_into_the_first_created() -> None:
    resolution = resolve(observed(
        Observation("acuity", email="ada@example.org"),
        Observation("calendly", phone="+14155550123"),
        Observation("google_calendar", email="ada@example.org", phone="+14155550123"),
    ), [])

    assert list(resolution.new_contacts) == [("new", 0)]
    assert resolution.contact_of == [("new", 0)] * 3
    assert resolution.identities == {("email", "ada@example.org"): ("new", 0), ("phone", "+14155550123"): ("new", 0)}


def test_resolving_again_against_the_result_changes_nothing() -> None:
    batch = observed(Observation("acuity", "Ada", "ada@example.org", "+14155550123", "5"),
                     Observation("calendly", "Bob", phone="+14155550199"))
    first = resolve(batch, [])
    ids: dict[ContactRef, int] = {("new", 0): 10, ("new", 1): 11}
    owned = [(ids[ref], kind, value) for (kind, value), ref in first.identities.items()]
    columns = {ids[ref]: values[2:] for ref, values in first.new_contacts.items()}

    again = resolve(batch, stored_contacts(columns, owned))

    assert again.contact_of == [10, 11]
    assert (again.new_contacts, again.merges, again.identities, again.updates) == ({}, {}, {}, {})


def test_an_observation_without_identities_has_no_contact() -> None:
    resolution = resolve(observed(Observation("acuity", name=" ", phone="12")), [])
    assert resolution.contact_of == [None] and resolution.new_contacts == {}


def test_match_keys_name_the_first_identity() -> None:
    assert match_key(("phone", "+14155550123")) == "person:phone:+14155550123"


@pytest.mark.parametrize(
    "observation",
    [Observation("acuity", "Ada", "ADA@example.org", "+14155550123", "7"),
     Observation("acuity", "Ada", "", "4155550123"), Observation("acuity", "Ada", provider_client_id="7"),
     Observation("acuity", "Ada"), Observation("acuity")],
)
def test_the_first_identity_is_the_first_of_all_of_them(observation: Observation) -> None:
    found = identities(observation)
    assert first_identity(observation) == (found[0] if found else None)


def test_a_re_spelled_value_keeps_the_stored_text_and_a_different_one_replaces_it() -> None:
    ada = StoredContact(7, "Ada Lovelace", "ada@example.org", "(415) 555-0123",
                        frozenset({("email", "ada@example.org"), ("phone", "+14155550123")}))
    same_person_respelled = Observation("acuity", "ada  LOVELACE", " Ada@Example.org", "+1 415.555.0123")
    assert resolve(observed(same_person_respelled), [ada]).updates == {}

    moved = Observation("acuity", "Ada King", "ada@example.org", "(415) 555-0199")
    assert resolve(observed(moved), [ada]).updates == {7: ("Ada King", "ada@example.org", "(415) 555-0199")}


def _phonenumbers_e164(text: str, region: str) -> str | None:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def test_the_plain_north_american_shortcut_answers_what_phonenumbers_answers() -> None:
    rng = random.Random(20261207)
    formats = ("({}) {}-{}", "{}.{}.{}", "{} {} {}", "+1 {} {} {}", "1-{}-{}-{}", "+1({}){}{}", "{}{}{}", "1{}{}{}")
    taken = 0
    for _ in range(4_000):
        if rng.random() < 0.5:
            digits = "".join(rng.choice("0123456789") for _ in range(10))
            text = rng.choice(formats).format(digits[:3], digits[3:6], digits[6:])
        else:  # anything else built from the same characters: mostly left to phonenumbers
            text = "".join(rng.choice("0123456789 ()-.+x") for _ in range(rng.randint(1, 16))).strip() or "0"
        region = rng.choice(("US", "CA", "GB", "DE"))
        assert normalize_phone(text, region) == _phonenumbers_e164(text, region), (text, region)
        taken += _plain_nanp_number(text, region) is not None
    assert taken > 500  # the shortcut did answer the plainly written North American numbers
