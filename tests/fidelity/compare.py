"""Comparing a tenant's mirror with the simulator's truth, field by field (pure).

Rules (the truth's contract is documented in apptsync.simulator._truth):
- only records starting inside the comparison window count (the sync window, less a margin, so a
  record crossing its edge while the run goes on is not judged);
- a record the provider deleted may be absent (never seen); when present its row must be marked
  deleted (`deleted_at` set); nothing else of it is judged;
- a record the provider reports only as a stub (a Google deletion) may be absent; when present its
  status and deleted mark are judged;
- every other record must have exactly one row equal in status, deleted mark, start, end, price,
  amount paid, contact email and phone, and reschedule link;
- a row with no record of the provider at all is a divergence too."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

# What a stored row holds when the schema lacks a column (the comparison says so instead of a value).
MISSING_COLUMN = "<no such column>"
ABSENT = "<no row>"


@dataclass(frozen=True, slots=True)
class Expected:
    provider: str
    external_id: str
    status: str
    deleted: bool
    stub: bool
    starts_at: datetime
    ends_at: datetime
    price: str  # "4500 USD" or "" (minor units and currency in one comparable text)
    amount_paid: str
    contact_email: str
    contact_phone: str
    rescheduled_to: str

    @classmethod
    def from_truth(cls, provider: str, record: Mapping[str, object]) -> Expected:
        """One record of `GET /_admin/{provider}/truth/{account}`. Raises KeyError, ValueError."""
        return cls(
            provider=provider,
            external_id=str(record["external_id"]),
            status=str(record["status"]),
            deleted=record["deleted"] is True,
            stub=record["stub"] is True,
            starts_at=datetime.fromisoformat(str(record["starts_at"])),
            ends_at=datetime.fromisoformat(str(record["ends_at"])),
            price=money(record["price_minor"], record["price_currency"]),
            amount_paid=money(record["amount_paid_minor"], record["amount_paid_currency"]),
            contact_email=str(record["contact_email"]),
            contact_phone=str(record["contact_phone"]),
            rescheduled_to=str(record["rescheduled_to_external_id"] or ""),
        )


@dataclass(frozen=True, slots=True)
class Stored:
    """One `appointments` row. `deleted` / `rescheduled_to` are None when the schema has no
    `deleted_at` / `rescheduled_to_external_id` column."""

    provider: str
    external_id: str
    status: str
    deleted: bool | None
    starts_at: datetime
    ends_at: datetime
    price: str
    amount_paid: str
    contact_email: str
    contact_phone: str
    rescheduled_to: str | None


@dataclass(frozen=True, slots=True)
class Divergence:
    provider: str
    external_id: str
    field: str
    expected: str
    stored: str

    def line(self) -> str:
        return f"{self.provider} {self.external_id}: {self.field} expected {self.expected!r}, stored {self.stored!r}"


def money(minor: object, currency: object) -> str:
    return "" if minor is None or currency is None else f"{minor} {currency}"


@dataclass(frozen=True, slots=True)
class Window:
    """Records starting in [start, end) are judged."""

    start: datetime
    end: datetime

    def holds(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


def compare(expected: Iterable[Expected], stored: Iterable[Stored], window: Window) -> list[Divergence]:
    """Every divergence, sorted by (provider, external id, field)."""
    rows: dict[tuple[str, str], list[Stored]] = {}
    for row in stored:
        rows.setdefault((row.provider, row.external_id), []).append(row)
    known: set[tuple[str, str]] = set()
    divergences: list[Divergence] = []
    for record in expected:
        key = (record.provider, record.external_id)
        known.add(key)
        found = rows.get(key, [])
        if len(found) > 1:
            divergences.append(Divergence(*key, "rows", "1", str(len(found))))
        if not window.holds(record.starts_at) and not any(window.holds(r.starts_at) for r in found):
            continue
        divergences += judge(record, found[0] if found else None)
    for key, found in rows.items():
        if key not in known and any(window.holds(r.starts_at) for r in found):
            divergences.append(Divergence(*key, "row", "no such record at the provider", "present"))
    return sorted(divergences, key=lambda d: (d.provider, d.external_id, d.field))


def judge(record: Expected, row: Stored | None, *, ignore_deleted: bool = False) -> list[Divergence]:
    """The divergences of one record's row (None: no row). `ignore_deleted`: the deleted mark is not
    judged (a frequent sync cannot know a deletion; only a walk to the end can)."""
    key = (record.provider, record.external_id)
    if row is None:
        if record.deleted or record.stub:
            return []
        return [Divergence(*key, "row", "present", ABSENT)]
    if record.deleted:
        if ignore_deleted or row.deleted:
            return []
        return [Divergence(*key, "deleted", "True", MISSING_COLUMN if row.deleted is None else "False")]
    pairs: list[tuple[str, str, str]] = [("status", record.status, row.status)]
    if not ignore_deleted:
        pairs.append(("deleted", "False", str(bool(row.deleted))))
    if not record.stub:
        pairs += [
            ("starts_at", record.starts_at.isoformat(), row.starts_at.isoformat()),
            ("ends_at", record.ends_at.isoformat(), row.ends_at.isoformat()),
            ("price", record.price, row.price),
            ("amount_paid", record.amount_paid, row.amount_paid),
            ("contact_email", record.contact_email, row.contact_email),
            ("contact_phone", record.contact_phone, row.contact_phone),
        ]
        if row.rescheduled_to is not None or record.rescheduled_to:
            have = MISSING_COLUMN if row.rescheduled_to is None else row.rescheduled_to
            pairs.append(("rescheduled_to_external_id", record.rescheduled_to, have))
    return [Divergence(*key, name, want, have) for name, want, have in pairs if want != have]


Key = tuple[str, str]  # (provider, external id)


def missed_changes(
    keys: Iterable[Key], expected: Mapping[Key, Expected], stored: Mapping[Key, Stored]
) -> list[Divergence]:
    """For each changed record (provider, external id), its first divergence when its row does not
    show the change yet (the deleted mark aside); [] when every change is in the mirror."""
    missed = []
    for key in keys:
        record = expected.get(key)
        if record is None:
            continue
        found = judge(record, stored.get(key), ignore_deleted=True)
        if found:
            missed.append(found[0])
    return missed
