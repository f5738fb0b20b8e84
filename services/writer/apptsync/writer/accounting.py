"""The writer's pure core: decode a page, collapse duplicates, decide what to write, count honestly.

Nothing here does I/O. The store (`apptsync.writer.store`) runs the statements this module plans:

1. `decode_page` turns Kafka bytes into a `DecodedPage` (or raises PoisonMessageError), collapsing an
   external id repeated inside the page (the later copy wins, counted as `duplicate_in_page`).
2. `plan_batch` classifies every row of one or more consecutive pages against the stored versions
   (new / changed / unchanged / stale; a cancellation stub cancels a stored row or, for a key never
   stored, is counted as `unknown_deletion`), pages applied in order, and keeps one final version
   per key. A stored row marked deleted that is seen again is revived (a change).
3. `count_pages` turns the statements' outcome (inserted / updated / not written) back into per-page
   counts; `PageCounts` guarantees the accounting identity
   `inserted + updated + unchanged + stale + skipped == records_fetched`. A page that comes again
   with the same content (`content_digest`) replays its stored counts; with other content it is
   written again and `recount_rewrite` credits the keys its earlier version inserted.
4. `plan_contacts` lists, in batch order, the people the batch saw (the clients stream's records and
   the written rows' contacts) with their identities (`apptsync.writer.contacts`: case-folded email,
   E.164 phone, provider client id) for the store to resolve to one contact per person;
   `drop_refused_records` takes records PostgreSQL refused out of their pages, counted as dead
   letters, so the rest of the page lands.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from apptsync.shared.appointments import AppointmentStatus, Source
from apptsync.shared.errors import PoisonMessageError
from apptsync.shared.messages.appointment_pages import STATUS_FROM_PROTO, parse_appointment_page
from apptsync.shared.messages.page_results import (
    PageCounts,
    PageResult,
    SkipCounts,
    encode_page_result,
)
from apptsync.shared.timestamps import from_timestamp
from apptsync.v1 import pages_pb2
from apptsync.writer.contacts import DEFAULT_PHONE_REGION, Identity, Observation, first_identity, identities

CONTENT_HASH_BYTES = 32  # SHA-256, see apptsync.shared.appointments.content_hash
_SOURCES = frozenset(source.value for source in Source)


@dataclass(frozen=True, slots=True)
class PaymentRow:
    """One payment of an appointment as the `payments` columns store it (see pages.proto Payment)."""

    transaction_id: str
    amount_minor: int
    currency: str
    processor: str
    paid_at: datetime | None
    successful: bool
    refunded: bool


@dataclass(frozen=True, slots=True)
class AppointmentRow:
    """One appointment as the `appointments` columns store it (raw JSON still text)."""

    external_id: str
    # None only for a cancellation stub (`stub`), which carries no times.
    starts_at: datetime | None
    ends_at: datetime | None
    timezone: str
    status: str
    title: str
    appointment_type: str
    calendar: str
    contact_name: str
    contact_email: str
    contact_phone: str
    provider_client_id: str
    price_minor: int | None
    price_currency: str | None
    amount_paid_minor: int | None
    amount_paid_currency: str | None
    external_url: str
    raw_json: str
    content_hash: bytes
    observed_at: datetime
    # The first of `identities` as "kind:value"; None: the appointment is stored with a null contact.
    contact_key: str | None = None
    # A cancellation notice without times: cancels the stored row of its key, never inserted.
    stub: bool = False
    rescheduled_to_external_id: str = ""
    rescheduled_from_external_id: str = ""
    # Written as the appointment's complete payment list when payments_known (pages.proto).
    payments: tuple[PaymentRow, ...] = ()
    payments_known: bool = False

    @property
    def contact_unmatched(self) -> bool:
        """No usable email, phone or provider client id: stored with a null contact (invariant 8)."""
        return self.contact_key is None


def contact_key(found: Identity | None) -> str | None:
    """The key an appointment's contact is known by: its first identity as `kind:value` (the prefix
    keeps an email from matching a client id spelled the same); None when it has none."""
    return None if found is None else f"{found[0]}:{found[1]}"


@dataclass(frozen=True, slots=True)
class PageKey:
    """Identifies a page across deliveries: `(job_id, page_no)`."""

    job_id: str
    page_no: int


@dataclass(frozen=True, slots=True)
class DecodedPage:
    """A validated AppointmentPage. `rows` holds each external id once (its last copy in the page);
    `skipped` includes the duplicates collapsed here. Guarantees
    `len(rows) + skipped.total == records_fetched`."""

    job_id: str
    tenant_id: str
    external_source: str
    connection_id: str
    page_no: int
    records_fetched: int
    rows: tuple[AppointmentRow, ...]
    skipped: SkipCounts
    # The clients stream: listed clients with their identities (in page order).
    contacts: tuple[tuple[Observation, tuple[Identity, ...]], ...] = ()
    default_phone_region: str = DEFAULT_PHONE_REGION

    @property
    def key(self) -> PageKey:
        return PageKey(self.job_id, self.page_no)

    @property
    def contacts_fetched(self) -> int:
        return len(self.contacts)

    @property
    def payments_fetched(self) -> int:
        return sum(len(row.payments) for row in self.rows)

    @property
    def contacts_unmatched(self) -> int:
        return sum(1 for row in self.rows if row.contact_unmatched and not row.stub)

    @property
    def external_ids(self) -> list[str]:
        """The keys this page carried (a complete walk marks the rest of its window deleted)."""
        return [row.external_id for row in self.rows]

    @property
    def content_digest(self) -> bytes:
        """What the page says, independent of when it was fetched: equal digests mean a redelivery
        of the same content (replayed), different ones a page fetched again after the provider
        changed (written again)."""
        digest = hashlib.sha256(b"apptsync.page.v1")
        digest.update(repr((self.records_fetched, self.skipped.as_tuple())).encode())
        for row in self.rows:
            digest.update(row.external_id.encode())
            digest.update(b"\x00")
            digest.update(row.content_hash)
        # Only when there are some: a page without clients digests as before the clients stream.
        for observation, _ in self.contacts:
            digest.update(repr(("contact", observation.name, observation.email, observation.phone,
                                observation.provider_client_id)).encode())
        return digest.digest()


@dataclass(frozen=True, slots=True)
class RefusedRecord:
    """A record of a page that PostgreSQL refused (e.g. a constraint or data error): dead-lettered
    and counted as `skipped.dead_letter`, while the rest of its page was stored."""

    external_id: str
    error: str


@dataclass(frozen=True, slots=True)
class PageOutcome:
    """A page's counts, whether they were replayed from storage (a redelivery), and the records of the
    page that were refused (stored with the counts, so a replay reports them again)."""

    counts: PageCounts
    redelivered: bool
    refused: tuple[RefusedRecord, ...] = ()
    # Records of this page refused because the stored row was observed later (logged by the service).
    stale: tuple[StaleRecord, ...] = ()

    @property
    def key(self) -> PageKey:
        return PageKey(self.counts.job_id, self.counts.page_no)

    def encode(self) -> bytes:
        """The PageResult message of this outcome (see apptsync.shared.messages.page_results)."""
        return encode_page_result(PageResult(self.counts, redelivered=self.redelivered))


# --------------------------------------------------------------------------- decoding


def _canonical_uuid(value: str, name: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise PoisonMessageError(f"{name} {value!r} is not a UUID") from exc


def _money(
    message: pages_pb2.Appointment, name: Literal["price", "amount_paid"]
) -> tuple[int | None, str | None]:
    if not message.HasField(name):
        return None, None
    money: pages_pb2.Money = getattr(message, name)
    return money.amount_minor, money.currency


def _payment(message: pages_pb2.Payment, where: str) -> PaymentRow:
    if not message.transaction_id:
        raise PoisonMessageError(f"{where} has a payment without a transaction id")
    if not message.HasField("amount"):
        raise PoisonMessageError(f"{where} has payment {message.transaction_id!r} without an amount")
    return PaymentRow(
        transaction_id=message.transaction_id,
        amount_minor=message.amount.amount_minor,
        currency=message.amount.currency,
        processor=message.processor,
        paid_at=from_timestamp(message.paid_at) if message.HasField("paid_at") else None,
        successful=message.successful,
        refunded=message.refunded,
    )


def _row(message: pages_pb2.Appointment, index: int, source: str, region: str = DEFAULT_PHONE_REGION) -> AppointmentRow:
    where = f"appointment {index} ({message.external_id!r})"
    if not message.external_id:
        raise PoisonMessageError(f"appointment {index} has no external_id")
    if not message.HasField("observed_at"):
        raise PoisonMessageError(f"{where} has no observed_at")
    if not message.stub and not (message.HasField("starts_at") and message.HasField("ends_at")):
        raise PoisonMessageError(f"{where} has no starts_at or ends_at")
    status = STATUS_FROM_PROTO.get(message.status)
    if status is None:
        raise PoisonMessageError(f"{where} has status {message.status}")
    if message.stub and status is not AppointmentStatus.CANCELED:
        raise PoisonMessageError(f"{where} is a stub with status {status.value}: a stub only cancels")
    if len(message.content_hash) != CONTENT_HASH_BYTES:
        raise PoisonMessageError(f"{where} has a content hash of {len(message.content_hash)} bytes")
    price_minor, price_currency = _money(message, "price")
    paid_minor, paid_currency = _money(message, "amount_paid")
    contact = message.contact
    found = None if message.stub else first_identity(
        Observation(source=source, name=contact.name, email=contact.email, phone=contact.phone,
                    provider_client_id=contact.provider_client_id),
        region,
    )
    return AppointmentRow(
        external_id=message.external_id,
        starts_at=from_timestamp(message.starts_at) if message.HasField("starts_at") else None,
        ends_at=from_timestamp(message.ends_at) if message.HasField("ends_at") else None,
        timezone=message.timezone,
        status=status.value,
        title=message.title,
        appointment_type=message.appointment_type,
        calendar=message.calendar,
        contact_name=message.contact.name,
        contact_email=message.contact.email,
        contact_phone=message.contact.phone,
        provider_client_id=message.contact.provider_client_id,
        price_minor=price_minor,
        price_currency=price_currency,
        amount_paid_minor=paid_minor,
        amount_paid_currency=paid_currency,
        external_url=message.external_url,
        raw_json=message.raw_json,
        content_hash=message.content_hash,
        observed_at=from_timestamp(message.observed_at),
        contact_key=contact_key(found),
        stub=message.stub,
        rescheduled_to_external_id=message.rescheduled_to_external_id,
        rescheduled_from_external_id=message.rescheduled_from_external_id,
        payments=tuple(_payment(payment, where) for payment in message.payments),
        payments_known=message.payments_known,
    )


def collapse_duplicates(rows: Sequence[AppointmentRow]) -> tuple[tuple[AppointmentRow, ...], int]:
    """Each external id once, holding its last copy (at the position of its first); and how many
    copies were dropped."""
    by_external_id: dict[str, AppointmentRow] = {}
    for row in rows:
        by_external_id[row.external_id] = row
    return tuple(by_external_id.values()), len(rows) - len(by_external_id)


def decode_page(value: bytes | None) -> DecodedPage:
    """The validated page in a Kafka message value.

    Raises PoisonMessageError when the bytes are not an AppointmentPage, an id is malformed, an
    appointment lacks a required field, or the page's own accounting does not add up (appointments
    plus the fetcher's skips must equal records_fetched)."""
    page = parse_appointment_page(value)
    job_id = _canonical_uuid(page.job_id, "job_id")
    tenant_id = _canonical_uuid(page.tenant_id, "tenant_id")
    if page.external_source not in _SOURCES:
        raise PoisonMessageError(f"unknown external_source {page.external_source!r}")
    if page.page_no < 1:
        raise PoisonMessageError(f"page_no {page.page_no} is not positive")
    incoming = page.skipped
    incoming_skips = SkipCounts(
        out_of_window=incoming.out_of_window,
        invalid=incoming.invalid,
        dead_letter=incoming.dead_letter,
        duplicate_in_page=incoming.duplicate_in_page,
        unknown_deletion=incoming.unknown_deletion,
    )
    if min(incoming_skips.as_tuple()) < 0:
        raise PoisonMessageError("negative skip count")
    if len(page.appointments) + incoming_skips.total != page.records_fetched:
        raise PoisonMessageError(
            f"page accounting: {len(page.appointments)} appointments + {incoming_skips.total} skipped "
            f"!= {page.records_fetched} records fetched"
        )
    region = page.default_phone_region or DEFAULT_PHONE_REGION
    rows, duplicates = collapse_duplicates(
        [_row(a, i, page.external_source, region) for i, a in enumerate(page.appointments)]
    )
    listed = []
    for contact in page.contacts:
        observation = Observation(source=page.external_source, name=contact.name, email=contact.email,
                                  phone=contact.phone, provider_client_id=contact.provider_client_id,
                                  listed_client=True)
        listed.append((observation, identities(observation, region)))
    return DecodedPage(
        job_id=job_id,
        tenant_id=tenant_id,
        external_source=page.external_source,
        connection_id=page.connection_id,
        page_no=page.page_no,
        records_fetched=page.records_fetched,
        rows=rows,
        skipped=dataclasses.replace(incoming_skips, duplicate_in_page=incoming_skips.duplicate_in_page + duplicates),
        contacts=tuple(listed),
        default_phone_region=region,
    )


# --------------------------------------------------------------------------- classification


class Decision(enum.Enum):
    NEW = "new"              # no stored row: insert
    CHANGED = "changed"      # stored row older with another hash (or marked deleted): update
    UNCHANGED = "unchanged"  # stored row has the same content: write nothing
    STALE = "stale"          # stored row observed later than this copy: newer wins, write nothing
    CANCEL = "cancel"        # a stub for a stored row that is not canceled yet: cancel it
    UNKNOWN_STUB = "unknown_stub"  # a stub for a key never stored: nothing to cancel, count it

    @property
    def writes(self) -> bool:
        return self in (Decision.NEW, Decision.CHANGED, Decision.CANCEL)


_CANCELED = AppointmentStatus.CANCELED.value


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """What the writer compares a record with: the stored row, or the batch's own latest version."""

    content_hash: bytes
    observed_at: datetime
    status: str = "scheduled"
    deleted: bool = False


def classify(row: AppointmentRow, stored: StoredVersion | None) -> Decision:
    """What writing `row` over `stored` means; mirrors the statements' WHERE clauses.

    Same content is unchanged (even if observed earlier); otherwise an earlier observation is stale
    (newer wins). A row marked deleted that is seen again is a change (revived). A stub cancels a
    stored row unless it is canceled already."""
    if stored is None:
        return Decision.UNKNOWN_STUB if row.stub else Decision.NEW
    if not stored.deleted and stored.content_hash == row.content_hash:
        return Decision.UNCHANGED
    if stored.observed_at > row.observed_at:
        return Decision.STALE
    if row.stub and stored.status == _CANCELED and not stored.deleted:
        return Decision.UNCHANGED
    return Decision.CANCEL if row.stub else Decision.CHANGED


RowKey = tuple[str, str]  # (external_source, external_id) within one tenant


@dataclass(frozen=True, slots=True)
class RowWrite:
    """The final version of one key that the batch writes, with the page it came from."""

    page: DecodedPage
    row: AppointmentRow

    @property
    def key(self) -> RowKey:
        return (self.page.external_source, self.row.external_id)


@dataclass(frozen=True, slots=True)
class StaleRecord:
    """A record refused because the stored row was observed later (newer wins): logged with both times."""

    page: PageKey
    external_id: str
    stored_observed_at: datetime
    offered_observed_at: datetime


@dataclass(slots=True)
class BatchPlan:
    """What one transaction writes for consecutive pages of one tenant.

    `writes` holds one final full version per key to upsert (pages applied in order); `cancels` the
    keys whose final version is a stub (applied after the upsert); `writers_by_key` lists, per key,
    the indexes of the pages that changed it, in order; `unchanged_by_page`, `stale_by_page` and
    `unknown_stubs_by_page` count the rest of each page."""

    pages: tuple[DecodedPage, ...]
    writes: dict[RowKey, RowWrite] = field(default_factory=dict)
    cancels: dict[RowKey, RowWrite] = field(default_factory=dict)
    writers_by_key: dict[RowKey, list[int]] = field(default_factory=dict)
    unchanged_by_page: list[int] = field(default_factory=list)
    stale: list[StaleRecord] = field(default_factory=list)
    stale_by_page: list[int] = field(default_factory=list)
    unknown_stubs_by_page: list[int] = field(default_factory=list)


def keys_by_source(pages: Sequence[DecodedPage]) -> dict[str, list[str]]:
    """The distinct external ids of `pages`, grouped by external source (for the stored lookup)."""
    grouped: dict[str, dict[str, None]] = {}
    for page in pages:
        ids = grouped.setdefault(page.external_source, {})
        for row in page.rows:
            ids[row.external_id] = None
    return {source: list(ids) for source, ids in grouped.items()}


def plan_batch(pages: Sequence[DecodedPage], stored: Mapping[RowKey, StoredVersion]) -> BatchPlan:
    """Classifies every row of `pages` (in order) against `stored` as updated by the earlier pages.

    Raises ValueError when the pages belong to more than one tenant (one transaction, one tenant)."""
    if len({page.tenant_id for page in pages}) > 1:
        raise ValueError("a batch holds pages of one tenant only")
    count = len(pages)
    plan = BatchPlan(pages=tuple(pages), unchanged_by_page=[0] * count, stale_by_page=[0] * count,
                     unknown_stubs_by_page=[0] * count)
    # The latest version per key: stored, or a row of an earlier page that this batch writes.
    current: dict[RowKey, StoredVersion | AppointmentRow] = dict(stored)
    writes, cancels, writers_by_key = plan.writes, plan.cancels, plan.writers_by_key
    unchanged_by_page = plan.unchanged_by_page
    for index, page in enumerate(pages):
        source = page.external_source
        for row in page.rows:
            key = (source, row.external_id)
            known = current.get(key)
            # The common case inlined (it runs for every row of every batch): a full record, new, or
            # another content not observed earlier than a version that is not marked deleted.
            if not row.stub and (known is None or (
                known.content_hash != row.content_hash and known.observed_at <= row.observed_at
                and not getattr(known, "deleted", False)
            )):
                decision = Decision.NEW if known is None else Decision.CHANGED
            else:
                decision = classify(row, _version(known))
            if decision.writes:
                if row.stub:
                    cancels[key] = RowWrite(page, row)
                    current[key] = StoredVersion(row.content_hash, row.observed_at, _CANCELED)
                else:
                    writes[key] = RowWrite(page, row)
                    cancels.pop(key, None)
                    current[key] = row
                writers = writers_by_key.get(key)
                if writers is None:
                    writers_by_key[key] = [index]
                else:
                    writers.append(index)
            elif decision is Decision.STALE:
                assert known is not None  # noqa: S101 -- narrows the type; classify returns STALE only with a stored version
                plan.stale_by_page[index] += 1
                plan.stale.append(StaleRecord(page.key, row.external_id, known.observed_at, row.observed_at))
            elif decision is Decision.UNKNOWN_STUB:
                plan.unknown_stubs_by_page[index] += 1
            else:
                unchanged_by_page[index] += 1
    return plan


def _version(known: StoredVersion | AppointmentRow | None) -> StoredVersion | None:
    if known is None or isinstance(known, StoredVersion):
        return known
    return StoredVersion(known.content_hash, known.observed_at, known.status)


def count_pages(
    plan: BatchPlan, written: Mapping[RowKey, bool], canceled: Set[RowKey] = frozenset()
) -> list[PageCounts]:
    """Per-page counts once the statements ran. `written` maps each key the upsert wrote to True
    (inserted) or False (updated); `canceled` holds the keys the stub statement canceled; a key
    missing from both lost a race to an equal or newer row.

    Per key, the batch's first writer is credited with the insert, every later writer with an
    update; when the statements wrote nothing, every writer counts the row as unchanged.
    Raises AccountingError if the identity breaks."""
    inserted = [0] * len(plan.pages)
    updated = [0] * len(plan.pages)
    unchanged = list(plan.unchanged_by_page)
    for key, writers in plan.writers_by_key.items():
        outcome = written.get(key)
        if outcome is None and key in canceled:
            outcome = False
        for position, index in enumerate(writers):
            if outcome is None:
                unchanged[index] += 1
            elif outcome and position == 0:
                inserted[index] += 1
            else:
                updated[index] += 1
    return [
        PageCounts(
            job_id=page.job_id,
            page_no=page.page_no,
            records_fetched=page.records_fetched,
            inserted=inserted[i],
            updated=updated[i],
            unchanged=unchanged[i],
            stale=plan.stale_by_page[i],
            skipped=(
                dataclasses.replace(page.skipped, unknown_deletion=page.skipped.unknown_deletion
                                    + plan.unknown_stubs_by_page[i])
                if plan.unknown_stubs_by_page[i] else page.skipped
            ),
            contacts_unmatched=page.contacts_unmatched,
            contacts_fetched=page.contacts_fetched,
            payments_fetched=page.payments_fetched,
        )
        for i, page in enumerate(plan.pages)
    ]


def payment_refreshes(plan: BatchPlan) -> list[RowWrite]:
    """Rows the batch leaves unchanged that carry a known, non-empty payment list (the last copy per
    key): their payments are written too. The content hash does not cover payments (they are asked
    for only when the amount paid moved), so a row first stored before its payments were (an earlier
    version of apptsync, or a page that could not read them) gets them with the next sync that
    reads them. Stale copies are not: a newer version is stored."""
    stale = {(record.page, record.external_id) for record in plan.stale}
    refreshes: dict[RowKey, RowWrite] = {}
    for page in plan.pages:
        for row in page.rows:
            key = (page.external_source, row.external_id)
            if (row.payments_known and row.payments and key not in plan.writes and key not in plan.cancels
                    and (page.key, row.external_id) not in stale):
                refreshes[key] = RowWrite(page, row)
    return list(refreshes.values())


def inserted_keys(plan: BatchPlan, written: Mapping[RowKey, bool]) -> dict[PageKey, list[str]]:
    """Per page, the external ids it inserted (the first writer of a key the upsert inserted)."""
    by_page: dict[PageKey, list[str]] = {}
    for key, writers in plan.writers_by_key.items():
        if written.get(key):
            by_page.setdefault(plan.pages[writers[0]].key, []).append(key[1])
    return by_page


def outcome_by_key(
    plan: BatchPlan, index: int, written: Mapping[RowKey, bool], canceled: Set[RowKey] = frozenset()
) -> dict[str, str]:
    """For the page at `index` of `plan`, what happened to each external id it carries: "inserted",
    "updated", "unchanged", "stale" or "skipped" (a stub for a key never stored), as count_pages
    counted it."""
    page = plan.pages[index]
    stale_ids = {record.external_id for record in plan.stale if record.page == page.key}
    outcomes: dict[str, str] = {}
    for row in page.rows:
        key = (page.external_source, row.external_id)
        writers = plan.writers_by_key.get(key, [])
        if index in writers:
            outcome = written.get(key)
            if outcome is None and key in canceled:
                outcome = False
            if outcome is None:
                outcomes[row.external_id] = "unchanged"
            elif outcome and writers[0] == index:
                outcomes[row.external_id] = "inserted"
            else:
                outcomes[row.external_id] = "updated"
        elif row.external_id in stale_ids:
            outcomes[row.external_id] = "stale"
        elif row.stub and plan.unknown_stubs_by_page[index] and key not in plan.writers_by_key:
            outcomes[row.external_id] = "skipped"
        else:
            outcomes[row.external_id] = "unchanged"
    return outcomes


def recount_rewrite(
    counts: PageCounts, outcomes: Mapping[str, str], inserted_before: Set[str]
) -> tuple[PageCounts, list[str]]:
    """The counts of a page written again with other content than its earlier version, given each
    key's outcome in this version (`outcome_by_key`).

    Keys the earlier version inserted did not exist before the job, so they stay counted as inserted
    (moved from updated, unchanged or stale, wherever this version found them); returns the counts
    and the keys credited as inserted. A key the earlier version inserted that this version no longer
    carries is not counted again: a page's records are what it carries now."""
    moved = {"updated": 0, "unchanged": 0, "stale": 0}
    credited = []
    for external_id, outcome in outcomes.items():
        if outcome == "inserted":
            credited.append(external_id)
        elif outcome in moved and external_id in inserted_before:
            moved[outcome] += 1
            credited.append(external_id)
    return dataclasses.replace(
        counts,
        inserted=counts.inserted + sum(moved.values()),
        updated=counts.updated - moved["updated"],
        unchanged=counts.unchanged - moved["unchanged"],
        stale=counts.stale - moved["stale"],
    ), credited


# --------------------------------------------------------------------------- batch bookkeeping


@dataclass(frozen=True, slots=True)
class JobTotals:
    """The increments one transaction applies to an import_jobs row (negative for a page written
    again whose earlier version counted more)."""

    job_id: str
    pages_written: int
    records_fetched: int
    inserted: int
    updated: int
    unchanged: int
    stale: int
    skipped: SkipCounts
    contacts_unmatched: int
    contacts_fetched: int = 0
    payments_fetched: int = 0


def job_totals(counts: Sequence[PageCounts], replaced: Mapping[PageKey, PageCounts] | None = None) -> list[JobTotals]:
    """The per-job sums of `counts`, jobs in order of first appearance. A page in `replaced` was
    counted before: its earlier counts are subtracted and it adds no written page."""
    replaced = replaced or {}
    grouped: dict[str, list[int]] = {}
    for page in counts:
        sign_page = 0 if PageKey(page.job_id, page.page_no) in replaced else 1
        vector = [sign_page, page.records_fetched, page.inserted, page.updated, page.unchanged, page.stale,
                  *page.skipped.as_tuple(), page.contacts_unmatched, page.contacts_fetched, page.payments_fetched]
        earlier = replaced.get(PageKey(page.job_id, page.page_no))
        if earlier is not None:
            before = [0, earlier.records_fetched, earlier.inserted, earlier.updated, earlier.unchanged, earlier.stale,
                      *earlier.skipped.as_tuple(), earlier.contacts_unmatched, earlier.contacts_fetched,
                      earlier.payments_fetched]
            vector = [a - b for a, b in zip(vector, before, strict=True)]
        total = grouped.setdefault(page.job_id, [0] * len(vector))
        for i, value in enumerate(vector):
            total[i] += value
    return [
        JobTotals(
            job_id=job_id, pages_written=t[0], records_fetched=t[1], inserted=t[2], updated=t[3],
            unchanged=t[4], stale=t[5], skipped=SkipCounts(*t[6:11]), contacts_unmatched=t[11],
            contacts_fetched=t[12], payments_fetched=t[13],
        )
        for job_id, t in grouped.items()
    ]


def first_deliveries(pages: Sequence[DecodedPage]) -> list[DecodedPage]:
    """`pages` without repeats of a page key already seen earlier in the sequence."""
    seen: set[PageKey] = set()
    unique = []
    for page in pages:
        if page.key not in seen:
            seen.add(page.key)
            unique.append(page)
    return unique


def assemble_outcomes(
    pages: Sequence[DecodedPage],
    fresh_counts: Mapping[PageKey, PageCounts],
    stored_counts: Mapping[PageKey, PageCounts],
    refused: Mapping[PageKey, Sequence[RefusedRecord]] | None = None,
) -> list[PageOutcome]:
    """One outcome per delivered page, in delivery order: the first delivery of a page written in
    this batch reports its fresh counts; any other delivery replays stored counts (redelivered).
    Each outcome carries the page's refused records from `refused`.

    Raises PoisonMessageError for a page with neither (recorded under another tenant)."""
    outcomes = []
    reported: set[PageKey] = set()
    refused = refused or {}
    for page in pages:
        key = page.key
        records = tuple(refused.get(key, ()))
        if key in fresh_counts and key not in reported:
            outcomes.append(PageOutcome(fresh_counts[key], redelivered=False, refused=records))
        elif key in fresh_counts:
            outcomes.append(PageOutcome(fresh_counts[key], redelivered=True, refused=records))
        elif key in stored_counts:
            outcomes.append(PageOutcome(stored_counts[key], redelivered=True, refused=records))
        else:
            raise PoisonMessageError(f"page {key.job_id}/{key.page_no} is recorded for another tenant")
        reported.add(key)
    return outcomes


# --------------------------------------------------------------------------- contacts and refusals


@dataclass(frozen=True, slots=True)
class ContactPlan:
    """The people a batch saw, in batch order, for `apptsync.writer.contacts.resolve`: each page's
    listed clients, then the contacts of the rows the batch writes from that page. `write_index`
    maps a written row's key to its observation (rows without identities have none)."""

    observations: tuple[tuple[Observation, tuple[Identity, ...]], ...]
    write_index: Mapping[RowKey, int]

    @property
    def all_identities(self) -> list[Identity]:
        """Every distinct identity of the batch (the stored lookup's keys), in first-seen order."""
        return list(dict.fromkeys(identity for _, found in self.observations for identity in found))


def plan_contacts(pages: Sequence[DecodedPage], writes: Iterable[RowWrite]) -> ContactPlan:
    """The ContactPlan of a batch: `pages` (for their listed clients) and the rows it writes."""
    by_page: dict[PageKey, list[RowWrite]] = {}
    for write in writes:
        if write.row.contact_key is not None:  # no contact (stubs never have one)
            by_page.setdefault(write.page.key, []).append(write)
    observations: list[tuple[Observation, tuple[Identity, ...]]] = []
    write_index: dict[RowKey, int] = {}
    for page in pages:
        observations.extend(found for found in page.contacts if found[1])
        for write in by_page.pop(page.key, ()):
            write_index[write.key] = len(observations)
            observations.append(_observed(write))
    for leftover in by_page.values():  # writes of pages not in `pages` (callers pass the batch's pages)
        for write in leftover:
            write_index[write.key] = len(observations)
            observations.append(_observed(write))
    return ContactPlan(tuple(observations), write_index)


def _observed(write: RowWrite) -> tuple[Observation, tuple[Identity, ...]]:
    """The written row's person with all its identities (parsed here, for written rows only)."""
    row, page = write.row, write.page
    observation = Observation(page.external_source, row.contact_name, row.contact_email, row.contact_phone,
                              row.provider_client_id)
    return observation, identities(observation, page.default_phone_region)


RecordKey = tuple[PageKey, str]  # (page, external id)


def drop_refused_records(
    pages: Sequence[DecodedPage], refused: Mapping[RecordKey, str]
) -> list[DecodedPage]:
    """`pages` without the refused records, each counted as `skipped.dead_letter` of its page, so
    `len(rows) + skipped.total == records_fetched` still holds."""
    kept_pages = []
    for page in pages:
        kept = tuple(row for row in page.rows if (page.key, row.external_id) not in refused)
        dropped = len(page.rows) - len(kept)
        if not dropped:
            kept_pages.append(page)
            continue
        skipped = page.skipped
        kept_pages.append(dataclasses.replace(
            page, rows=kept,
            skipped=dataclasses.replace(skipped, dead_letter=skipped.dead_letter + dropped),
        ))
    return kept_pages


def refused_page_counts(page: DecodedPage) -> PageCounts:
    """The counts of a page PostgreSQL refused as a whole: every record it carried is a dead letter."""
    return PageCounts(
        job_id=page.job_id,
        page_no=page.page_no,
        records_fetched=page.records_fetched,
        inserted=0,
        updated=0,
        unchanged=0,
        skipped=dataclasses.replace(page.skipped, dead_letter=page.skipped.dead_letter + len(page.rows)),
        contacts_unmatched=0,
    )
