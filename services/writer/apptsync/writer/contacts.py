"""One contact per person within a tenant, across sources: normalizing and matching (pure).

A contact is seen as an *observation*: a client record of the clients stream, or the person an
appointment is for. Its *identities* are, in matching priority:

1. `email`: trimmed and case-folded (`Ada@Example.org ` -> `ada@example.org`);
2. `phone`: E.164 (`+14155550123`), parsed by `phonenumbers` in the page's default region (the
   connection's setting `phone_region`, else DEFAULT_PHONE_REGION); a number it cannot read as a
   possible number is no identity;
3. `client`: the provider's client id, scoped by source (`google_calendar:1234`);
4. `name`: only when a record has none of the three (Acuity's `/clients` has no id, and people book
   without an email or phone): the name with blanks collapsed, case-folded, scoped by source, so that
   listing a client again finds the same contact and that client's bookings find it too.

`resolve` applies observations in order against the identities already stored (README "Contacts"):

- An observation joins the contact owning its highest-priority identity; none owned: a new contact.
- Its identities that nobody owns are added to that contact (every identity a contact was seen with
  is kept; an identity belongs to one contact of the tenant).
- An identity owned by another contact means the two are one person (transitively: sharing any
  identity is enough, as the legacy import matched a booking by its phone whatever its email), and
  they are merged into the lower contact id (new contacts rank after stored ones, in order of
  creation).
- A merge moves the loser's identities to the winner; the store re-points its appointments (and so
  its payments, which belong to appointments) and deletes it.
- The contact's name, email and phone columns take the latest non-empty value observed that says
  something else (a re-spelling: other case or spacing, a phone's punctuation, keeps the stored text).

The result depends only on the stored identities and the observations' order, so a page applied
again changes nothing (every identity is owned already), and two writers of one tenant serialize on
a per-tenant lock in the store so each resolves against the other's committed result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import phonenumbers

# A phone number without a country code is read in this region unless the connection says otherwise.
DEFAULT_PHONE_REGION = "US"
IDENTITY_KINDS = ("email", "phone", "client", "name")

Identity = tuple[str, str]  # (kind, value)


def normalize_email(email: str) -> str | None:
    """The matching form of an email (trimmed, case-folded); None when it is not an address."""
    folded = email.strip().casefold()
    local, at, domain = folded.partition("@")
    return folded if at and local and domain and " " not in folded else None


# What a North American number may be written with besides its digits, when nothing else is there.
_NANP_PUNCTUATION = frozenset(" ()-.")
_NANP_REGIONS = frozenset({"US", "CA"})


def _plain_nanp_number(text: str, region: str) -> str | None:
    """The E.164 form `phonenumbers` gives a plainly written North American number ("(415) 555-0123",
    "1 415 555 0123", "+1.415.555.0123"), found without it; None for anything else (parsed by
    `phonenumbers`). Every phone of a first import is new to the memo below, and `phonenumbers` was
    5 % of the writer's CPU there. Only ten digits after an optional country code 1, the first of them
    2-9 (a 1 there would be read as a trunk prefix), and punctuation: such a number is always possible
    (NANP numbers have ten digits), so the result is exactly `phonenumbers`'s (tested against it)."""
    plus = text.startswith("+")
    body = text[1:] if plus else text
    if not plus and region not in _NANP_REGIONS:
        return None
    digits = []
    for character in body:
        if character.isdigit() and character.isascii():
            digits.append(character)
        elif character not in _NANP_PUNCTUATION:
            return None
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    elif plus or len(digits) != 10:
        return None
    if digits[0] in "01":
        return None
    return "+1" + "".join(digits)


# A client's phone comes back with every appointment of theirs, and parsing costs ~20 us: a bounded
# memo of the pure mapping (20,000 appointments of 5,000 clients: 11 % of the writer's CPU uncached).
@functools.lru_cache(maxsize=65_536)
def normalize_phone(phone: str, default_region: str = DEFAULT_PHONE_REGION) -> str | None:
    """The E.164 form of `phone` (`"(415) 555-0123"` in region US -> `"+14155550123"`); None when
    `phonenumbers` cannot parse it or it is not a possible number (too short or long for its
    country). Possible, not valid: numbers outside any assigned range (e.g. fictional 555 ones) still
    identify the person who gave them."""
    text = phone.strip()
    if not text:
        return None
    fast = _plain_nanp_number(text, (default_region or DEFAULT_PHONE_REGION).upper())
    if fast is not None:
        return fast
    try:
        number = phonenumbers.parse(text, (default_region or DEFAULT_PHONE_REGION).upper())
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@dataclass(frozen=True, slots=True)
class Observation:
    """A person as one record described them (any field may be empty)."""

    source: str
    name: str = ""
    email: str = ""
    phone: str = ""
    provider_client_id: str = ""
    # A client record of the clients stream rather than an appointment's person.
    listed_client: bool = False


def first_identity(observation: Observation, default_region: str = DEFAULT_PHONE_REGION) -> Identity | None:
    """The observation's highest-priority identity (`identities(...)[0]`), or None, without parsing
    the phone when there is an email (`phonenumbers` costs ~20 us a number: this runs for every row
    of every page, the full list only for the rows a batch writes)."""
    email = normalize_email(observation.email)
    if email is not None:
        return ("email", email)
    found = identities(observation, default_region)
    return found[0] if found else None


def identities(observation: Observation, default_region: str = DEFAULT_PHONE_REGION) -> tuple[Identity, ...]:
    """The observation's identities in matching priority (see the module docstring); empty: it
    matches no contact (an appointment is then stored with a null contact, invariant 8)."""
    found: list[Identity] = []
    email = normalize_email(observation.email)
    if email is not None:
        found.append(("email", email))
    phone = normalize_phone(observation.phone, default_region)
    if phone is not None:
        found.append(("phone", phone))
    client_id = observation.provider_client_id.strip()
    if client_id:
        found.append(("client", f"{observation.source}:{client_id}"))
    name = " ".join(observation.name.split()).casefold()
    if not found and name:
        found.append(("name", f"{observation.source}:{name}"))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class StoredContact:
    """A stored contact: its columns and every identity it owns."""

    contact_id: int
    name: str
    email: str
    phone: str
    identities: frozenset[Identity]


# A contact in a resolution: a stored id (int), or ("new", n) for the n-th contact created.
ContactRef = int | tuple[str, int]


def _rank(ref: ContactRef) -> tuple[int, int]:
    """Stored contacts first (by id), then new ones in order of creation: merges keep the lowest."""
    return (0, ref) if isinstance(ref, int) else (1, ref[1])


@dataclass(slots=True)
class _Person:
    name: str
    email: str
    phone: str
    identities: set[Identity]
    first_identity: Identity | None = None


@dataclass(slots=True)
class Resolution:
    """What the store writes for a batch's observations.

    - `contact_of`: per observation (by index), its contact (None: no identity, unmatched);
    - `new_contacts`: contacts to create, `("new", n)` -> (source, match_key, name, email, phone), the
      match key naming the contact's first identity (unique in the tenant, the RETURNING key);
    - `merges`: stored contact -> the stored contact it is merged into (final, no chains);
    - `identities`: identities to insert, each with its contact;
    - `updates`: stored contacts whose name / email / phone change, with the new values.
    """

    contact_of: list[ContactRef | None] = field(default_factory=list)
    new_contacts: dict[tuple[str, int], tuple[str, str, str, str, str]] = field(default_factory=dict)
    merges: dict[int, int] = field(default_factory=dict)
    identities: dict[Identity, ContactRef] = field(default_factory=dict)
    updates: dict[int, tuple[str, str, str]] = field(default_factory=dict)


def _name_form(name: str) -> str:
    return " ".join(name.split()).casefold()


def _email_form(email: str) -> str:
    return email.strip().casefold()


def _phone_form(phone: str) -> str:
    # The last ten digits: a country code or trunk prefix written or left out ("+1 555 010 2345",
    # "(555) 010-2345", "020 7946 0958" / "+44 20 7946 0958") is a re-spelling. Only the displayed
    # text depends on it (identities are E.164): two numbers that differ only before their last ten
    # digits would keep the older text, nothing else.
    return "".join(character for character in phone if character.isdigit())[-10:]


def _latest(current: str, observed: str, form: Callable[[str], str]) -> str:
    """The contact's value after `observed`: the observed text when it is not empty and says something
    else than `current`; a mere re-spelling (case, spacing, a phone's punctuation, as a client list
    and a booking form write one number differently) keeps the stored text, or every first import
    rewrote most contacts it had just created from the client list (57,044 of 98,635 measured)."""
    observed = observed.strip()
    if not observed or (current and form(observed) == form(current)):
        return current
    return observed


def match_key(identity: Identity) -> str:
    """The `contacts.match_key` of a contact created with `identity`: `person:<kind>:<value>`."""
    return f"person:{identity[0]}:{identity[1]}"


def resolve(
    observations: Sequence[tuple[Observation, tuple[Identity, ...]]],
    stored: Iterable[StoredContact],
) -> Resolution:
    """Resolves `observations` (each with its identities, see `identities`) in order against the
    `stored` contacts owning any of their identities (with all of each one's identities); see the
    module docstring for the rules. Pure and deterministic."""
    owner: dict[Identity, ContactRef] = {}
    people: dict[ContactRef, _Person] = {}
    stored_values: dict[int, tuple[str, str, str]] = {}
    for contact in stored:
        people[contact.contact_id] = _Person(contact.name, contact.email, contact.phone, set(contact.identities))
        stored_values[contact.contact_id] = (contact.name, contact.email, contact.phone)
        for identity in contact.identities:
            owner[identity] = contact.contact_id
    merged_into: dict[ContactRef, ContactRef] = {}
    sources: dict[tuple[str, int], str] = {}
    resolution = Resolution()
    created = 0

    def root(ref: ContactRef) -> ContactRef:
        while ref in merged_into:
            ref = merged_into[ref]
        return ref

    for observation, found in observations:
        if not found:
            resolution.contact_of.append(None)
            continue
        owners = [root(owner[identity]) for identity in found if identity in owner]
        if owners:
            current = owners[0]
        else:
            current = ("new", created)
            created += 1
            people[current] = _Person("", "", "", set(), first_identity=found[0])
            sources[current] = observation.source
        for other in dict.fromkeys(owners[1:]):
            other, current_root = root(other), root(current)
            if other == current_root:
                continue
            winner, loser = sorted((current_root, other), key=_rank)
            merged_into[loser] = winner
            gone = people.pop(loser)
            kept = people[winner]
            kept.identities |= gone.identities
            # The winner keeps its own values; the loser's fill what it lacks.
            kept.name, kept.email, kept.phone = (kept.name or gone.name, kept.email or gone.email,
                                                 kept.phone or gone.phone)
            current = winner
        current = root(current)
        person = people[current]
        for identity in found:
            if identity not in owner:
                owner[identity] = current
                person.identities.add(identity)
                resolution.identities[identity] = current
        person.name = _latest(person.name, observation.name, _name_form)
        person.email = _latest(person.email, observation.email, _email_form)
        person.phone = _latest(person.phone, observation.phone, _phone_form)
        resolution.contact_of.append(current)

    resolution.contact_of = [None if ref is None else root(ref) for ref in resolution.contact_of]
    resolution.identities = {identity: root(ref) for identity, ref in resolution.identities.items()}
    for loser in merged_into:
        if isinstance(loser, int):
            winner = root(loser)
            if not isinstance(winner, int):  # a stored contact never merges into a new one (rank)
                raise AssertionError("stored contact merged into a new one")
            resolution.merges[loser] = winner
            # The winner now owns the loser's identities (moved by the store, not inserted).
    for ref, person in people.items():
        if isinstance(ref, int):
            values = (person.name, person.email, person.phone)
            if values != stored_values.get(ref):
                resolution.updates[ref] = values
        else:
            first = person.first_identity
            if first is None:  # every new person is created with its first identity
                raise AssertionError("new contact without an identity")
            resolution.new_contacts[ref] = (sources[ref], match_key(first), person.name, person.email, person.phone)
    return resolution


def stored_contacts(
    columns: Mapping[int, tuple[str, str, str]], owned: Iterable[tuple[int, str, str]]
) -> list[StoredContact]:
    """StoredContact values from the store's two reads: contact id -> (name, email, phone), and the
    (contact id, kind, value) identity rows of those contacts."""
    by_contact: dict[int, set[Identity]] = {contact_id: set() for contact_id in columns}
    for contact_id, kind, value in owned:
        by_contact.setdefault(contact_id, set()).add((kind, value))
    return [
        StoredContact(contact_id, *columns.get(contact_id, ("", "", "")), frozenset(found))
        for contact_id, found in sorted(by_contact.items())
    ]
