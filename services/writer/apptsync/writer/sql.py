"""The writer's SQL and the pure builders of its arguments (column arrays for set-based statements).

Every statement takes the tenant as `$1` and filters or writes by it: the seam where row-level
security (`app.tenant_id`, set by `SET_TRANSACTION_SCOPE` in
`apptsync.shared.db.pool.tenant_transaction`) will take over.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apptsync.shared.messages.page_results import PageCounts, SkipCounts
from apptsync.writer.accounting import (
    JobTotals,
    PageKey,
    RefusedRecord,
    RowKey,
    RowWrite,
)
from apptsync.writer.contacts import ContactRef, Identity, Resolution

# Transaction-local settings: the tenant for row-level security, and a plan made for each execution's
# own arguments: a generic plan cached while `appointments` was small kept scanning the tenant's
# whole index range once the table had grown (measured: 55 ms instead of 0.7 ms at 5,000 rows).
SET_TRANSACTION_SCOPE = (
    "SELECT set_config('app.tenant_id', $1, true), set_config('plan_cache_mode', 'force_custom_plan', true)"
)

# Claims pages for this transaction. A page someone recorded before is not returned (redelivery);
# a concurrent claim of the same page waits here until the first transaction ends.
CLAIM_PAGES = """
INSERT INTO import_job_pages AS p (
    job_id, page_no, tenant_id, records_fetched, inserted, updated, unchanged,
    skipped_out_of_window, skipped_invalid, skipped_dead_letter, skipped_duplicate_in_page,
    contacts_unmatched)
SELECT c.job_id, c.page_no, $1::uuid, 0, 0, 0, 0, 0, 0, 0, 0, 0
FROM unnest($2::uuid[], $3::integer[]) AS c(job_id, page_no)
ON CONFLICT (job_id, page_no) DO NOTHING
RETURNING p.job_id::text AS job_id, p.page_no
"""

PAGE_COUNT_COLUMNS = """records_fetched, inserted, updated, unchanged, stale, skipped_out_of_window, skipped_invalid,
    skipped_dead_letter, skipped_duplicate_in_page, skipped_unknown_deletion, contacts_unmatched, contacts_fetched,
    payments_fetched"""

# The stored results of redelivered pages, with what tells a redelivery of the same content (same
# digest: replay) from a page fetched again with other content (written again).
SELECT_PAGE_COUNTS = f"""
SELECT p.job_id::text AS job_id, p.page_no, {PAGE_COUNT_COLUMNS}, p.content_digest, p.inserted_ids
FROM import_job_pages AS p
JOIN unnest($2::uuid[], $3::integer[]) AS c(job_id, page_no)
  ON p.job_id = c.job_id AND p.page_no = c.page_no
WHERE p.tenant_id = $1::uuid
"""  # noqa: S608 -- the interpolated text is this module's constant column list, not input

# One probe of the unique index per key (a nested loop that LIMIT keeps from being flattened into a
# hash join). The plainer `external_id = ANY($3)` was planned, before the table's first ANALYZE, as an
# index scan on (tenant_id, external_source) filtering every row of the tenant: 10 ms per page at
# 20,000 rows and growing, against a flat 0.5 ms here.
# The tenant and source are InitPlan parameters, `(SELECT $1::uuid)`, whose values the planner does
# not see: it estimates the rows of "a tenant" from the number of distinct tenants instead of the
# statistics of this one. With the values visible, a tenant the last ANALYZE had not seen (any first
# import, which outgrows autovacuum) is estimated at ~0 rows; every index on (tenant_id, ...) then
# costs the same single row, the tie went to the newest index (appointments_by_start, then
# appointments_by_connection_start), and each probe read the tenant's whole range in it. Measured
# (tests/integration/writer/test_writer_lookup_plans.py, 20,000 other tenants' rows analyzed, 800
# keys not stored yet): 36 buffers per key at 800 tenant rows, 279 at 6,400; production saw 95.8
# million index entries read for a 20,000-row tenant. Hidden, the other indexes are estimated at
# rows / distinct tenants rows against the unique index's one: 2 buffers per key at either size.
# The source is hidden too: a source new to the statistics would otherwise bring back the tie for
# appointments_by_connection_start. What is left is a table averaging under two rows per tenant.
SELECT_STORED_VERSIONS = """
SELECT k.external_id, s.content_hash, s.observed_at, s.status, s.deleted_at IS NOT NULL AS deleted
FROM unnest($3::text[]) AS k(external_id)
CROSS JOIN LATERAL (
    SELECT a.content_hash, a.observed_at, a.status, a.deleted_at
    FROM appointments AS a
    WHERE a.tenant_id = (SELECT $1::uuid) AND a.external_source = (SELECT $2::text)
      AND a.external_id = k.external_id
    LIMIT 1
) AS s
"""

# Contact resolution (apptsync.writer.contacts) runs under this lock, per tenant, to the end of the
# transaction: two writers of one tenant would otherwise each create a contact for the same new
# person (an identity that does not exist yet cannot be row-locked), or merge crosswise. Ordered row
# locks cannot cover rows that do not exist yet; retrying on the identities' unique violation would
# make the result depend on timing. Writers of other tenants never wait. A savepoint rollback
# (refused-record isolation) keeps the lock, which is what the retry needs.
LOCK_TENANT_CONTACTS = "SELECT pg_advisory_xact_lock(hashtextextended('apptsync.contacts:' || $1::text, 0))"

# The stored contacts owning any of the batch's identities ($2 kinds, $3 values), each with every
# identity it owns (one row per identity) and its columns. Probes of the primary keys per identity and
# contact, the tenant hidden from the planner as in SELECT_STORED_VERSIONS (below): with its value
# visible, a tenant the statistics had not seen yet was estimated at ~0 rows and the contacts were
# found by scanning the tenant's range of contacts_tenant_match_key (measured by
# tests/integration/writer/test_writer_lookup_plans.py: 40 buffers per key at 800 contacts, 130 at
# 6,400; hidden: a flat 10 at either size, three primary-key probes).
SELECT_CONTACTS_BY_IDENTITY = """
WITH hit AS MATERIALIZED (
    SELECT DISTINCT i.contact_id
    FROM unnest($2::text[], $3::text[]) AS k(kind, value)
    CROSS JOIN LATERAL (
        SELECT s.contact_id FROM contact_identities AS s
        WHERE s.tenant_id = (SELECT $1::uuid) AND s.kind = k.kind AND s.value = k.value
        LIMIT 1
    ) AS i
)
SELECT c.contact_id, c.name, c.email, c.phone, i.kind, i.value
FROM hit
CROSS JOIN LATERAL (
    SELECT c.contact_id, c.name, c.email, c.phone FROM contacts AS c
    WHERE c.contact_id = hit.contact_id AND c.tenant_id = (SELECT $1::uuid)
    LIMIT 1
) AS c
LEFT JOIN LATERAL (
    SELECT s.kind, s.value FROM contact_identities AS s
    WHERE s.tenant_id = (SELECT $1::uuid) AND s.contact_id = hit.contact_id
) AS i ON true
ORDER BY c.contact_id
"""

# New contacts; match_key ('person:<kind>:<value>' of the identity it was created with) is unique
# in the tenant and tells the caller which id each got.
INSERT_CONTACTS = """
INSERT INTO contacts AS c (tenant_id, external_source, match_key, name, email, phone, provider_client_id)
SELECT $1::uuid, n.external_source, n.match_key, n.name, n.email, n.phone, ''
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
    AS n(external_source, match_key, name, email, phone)
RETURNING c.match_key, c.contact_id
"""

# A merge (README "Contacts"): the loser's identities and appointments go to the winner (its
# payments follow its appointments), then the loser is deleted. Three statements, in this order, so
# the delete trigger (unlink_deleted_contacts) finds no appointment left to unlink.
MERGE_IDENTITIES = """
UPDATE contact_identities AS i SET contact_id = m.winner
FROM unnest($2::bigint[], $3::bigint[]) AS m(loser, winner)
WHERE i.tenant_id = $1::uuid AND i.contact_id = m.loser
"""
MERGE_APPOINTMENTS = """
UPDATE appointments AS a SET contact_id = m.winner
FROM unnest($2::bigint[], $3::bigint[]) AS m(loser, winner)
WHERE a.tenant_id = $1::uuid AND a.contact_id = m.loser
"""
DELETE_MERGED_CONTACTS = """
DELETE FROM contacts AS c
WHERE c.tenant_id = $1::uuid AND c.contact_id = ANY($2::bigint[])
"""

INSERT_IDENTITIES = """
INSERT INTO contact_identities (tenant_id, kind, value, contact_id)
SELECT $1::uuid, n.kind, n.value, n.contact_id
FROM unnest($2::text[], $3::text[], $4::bigint[]) AS n(kind, value, contact_id)
ON CONFLICT DO NOTHING
"""

UPDATE_CONTACTS = """
UPDATE contacts AS c SET name = u.name, email = u.email, phone = u.phone, updated_at = now()
FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[]) AS u(contact_id, name, email, phone)
WHERE c.tenant_id = $1::uuid AND c.contact_id = u.contact_id
  AND (c.name, c.email, c.phone) IS DISTINCT FROM (u.name, u.email, u.phone)
"""

# The payments of written appointments whose list is known (Appointment.payments_known): the
# appointments' stored payments not in the list are gone at the provider ($2 sources, $3 appointment
# ids, $4 '<source>:<transaction id>' of those kept)...
DELETE_ABSENT_PAYMENTS = """
DELETE FROM payments AS p
USING unnest($2::text[], $3::text[]) AS k(external_source, appointment_external_id)
WHERE p.tenant_id = $1::uuid AND p.external_source = k.external_source
  AND p.appointment_external_id = k.appointment_external_id
  AND (p.external_source || ':' || p.transaction_id) <> ALL($4::text[])
"""
# ...and the listed ones are upserted by transaction id (an unchanged payment is not rewritten).
UPSERT_PAYMENTS = """
INSERT INTO payments AS p (tenant_id, external_source, transaction_id, appointment_external_id, amount_minor,
    currency, processor, paid_at, successful, refunded, last_job_id)
SELECT $1::uuid, r.external_source, r.transaction_id, r.appointment_external_id, r.amount_minor, r.currency,
    r.processor, r.paid_at, r.successful, r.refunded, r.last_job_id
FROM unnest($2::apptsync_payment_row[]) AS r
ON CONFLICT (tenant_id, external_source, transaction_id) DO UPDATE SET
    appointment_external_id = EXCLUDED.appointment_external_id, amount_minor = EXCLUDED.amount_minor,
    currency = EXCLUDED.currency, processor = EXCLUDED.processor, paid_at = EXCLUDED.paid_at,
    successful = EXCLUDED.successful, refunded = EXCLUDED.refunded, last_job_id = EXCLUDED.last_job_id,
    updated_at = now()
WHERE (p.appointment_external_id, p.amount_minor, p.currency, p.processor, p.paid_at, p.successful, p.refunded)
    IS DISTINCT FROM (EXCLUDED.appointment_external_id, EXCLUDED.amount_minor, EXCLUDED.currency,
                      EXCLUDED.processor, EXCLUDED.paid_at, EXCLUDED.successful, EXCLUDED.refunded)
"""

# Only new and changed rows reach the appointment statements below (SELECT_STORED_VERSIONS and
# plan_batch filter the rest out first). The WHERE guards against a concurrent writer that stored the
# same or a newer version since we read: RETURNING then omits the row.
_ON_CONFLICT_NEWER_WINS = """
ON CONFLICT (tenant_id, external_source, external_id) DO UPDATE SET
    contact_id = EXCLUDED.contact_id,
    connection_id = EXCLUDED.connection_id,
    starts_at = EXCLUDED.starts_at,
    ends_at = EXCLUDED.ends_at,
    timezone = EXCLUDED.timezone,
    status = EXCLUDED.status,
    title = EXCLUDED.title,
    appointment_type = EXCLUDED.appointment_type,
    calendar = EXCLUDED.calendar,
    contact_name = EXCLUDED.contact_name,
    contact_email = EXCLUDED.contact_email,
    contact_phone = EXCLUDED.contact_phone,
    provider_client_id = EXCLUDED.provider_client_id,
    price_minor = EXCLUDED.price_minor,
    price_currency = EXCLUDED.price_currency,
    amount_paid_minor = EXCLUDED.amount_paid_minor,
    amount_paid_currency = EXCLUDED.amount_paid_currency,
    external_url = EXCLUDED.external_url,
    raw = EXCLUDED.raw,
    content_hash = EXCLUDED.content_hash,
    observed_at = EXCLUDED.observed_at,
    last_job_id = EXCLUDED.last_job_id,
    rescheduled_to_external_id = EXCLUDED.rescheduled_to_external_id,
    rescheduled_from_external_id = EXCLUDED.rescheduled_from_external_id,
    deleted_at = NULL,
    updated_at = now()
WHERE (a.content_hash IS DISTINCT FROM EXCLUDED.content_hash OR a.deleted_at IS NOT NULL)
  AND a.observed_at <= EXCLUDED.observed_at
RETURNING a.external_source, a.external_id, (a.xmax = 0) AS inserted
"""

# The rows a batch writes, as one array of apptsync_appointment_row (0006_writer_row_types.sql), as
# appointments of tenant $1. Against one array per column (`unnest($2::text[], ...)`, 24 of them) the
# writer's client CPU per row of a first load fell from ~50 us to ~31 us (A/B on one server; asyncpg
# checks each array element against collections.abc, not the fields of a composite element), together
# with the plain insert. contact_id comes from the contact resolution that ran before in the same
# transaction, under the tenant's contacts lock (null: no identity, invariant 8).
_INSERT_ROWS = """
INSERT INTO appointments AS a (
    tenant_id, external_source, external_id, connection_id, starts_at, ends_at, timezone, status,
    title, appointment_type, calendar, contact_name, contact_email, contact_phone, provider_client_id,
    price_minor, price_currency, amount_paid_minor, amount_paid_currency, external_url, raw,
    content_hash, observed_at, last_job_id, rescheduled_to_external_id, rescheduled_from_external_id, contact_id)
SELECT $1::uuid, r.external_source, r.external_id, r.connection_id, r.starts_at, r.ends_at, r.timezone,
    r.status, r.title, r.appointment_type, r.calendar, r.contact_name, r.contact_email, r.contact_phone,
    r.provider_client_id, r.price_minor, r.price_currency, r.amount_paid_minor, r.amount_paid_currency,
    r.external_url, r.raw::jsonb, r.content_hash, r.observed_at, r.last_job_id,
    r.rescheduled_to_external_id, r.rescheduled_from_external_id, r.contact_id
FROM unnest($2::apptsync_appointment_row[]) AS r
"""

# Rows the stored-version lookup did not find: a plain INSERT, no ON CONFLICT (measured ~6 us per row
# cheaper: no speculative insertion). A concurrent writer that inserted one of the keys since the lookup
# makes it fail with a unique violation; the store then redoes the batch with UPSERT_APPOINTMENTS.
INSERT_NEW_APPOINTMENTS = _INSERT_ROWS

# Any mix of new and changed rows; RETURNING tells inserted from updated.
UPSERT_APPOINTMENTS = _INSERT_ROWS + _ON_CONFLICT_NEWER_WINS

# Cancellation stubs (a provider's notice that a record was cancelled or deleted, without times):
# cancel the stored row of the key, keep its times and payload, and revive it if it was marked
# deleted (the provider still knows it, as cancelled). Newer wins as for the upsert; a key never
# stored is not here (plan_batch counted it). Runs after the upsert of the same batch.
CANCEL_APPOINTMENTS = """
UPDATE appointments AS a SET
    status = 'canceled',
    content_hash = c.content_hash,
    observed_at = c.observed_at,
    last_job_id = c.last_job_id,
    deleted_at = NULL,
    updated_at = now()
FROM unnest($2::text[], $3::text[], $4::bytea[], $5::timestamptz[], $6::uuid[])
    AS c(external_source, external_id, content_hash, observed_at, last_job_id)
WHERE a.tenant_id = (SELECT $1::uuid) AND a.external_source = c.external_source AND a.external_id = c.external_id
  AND (a.status <> 'canceled' OR a.deleted_at IS NOT NULL)
  AND a.observed_at <= c.observed_at
RETURNING a.external_source, a.external_id
"""

# The refused records of freshly written pages; a redelivered page reads them back.
RECORD_DEAD_LETTERS = """
INSERT INTO import_job_dead_letters (job_id, page_no, external_id, tenant_id, error)
SELECT d.job_id, d.page_no, d.external_id, $1::uuid, d.error
FROM unnest($2::uuid[], $3::integer[], $4::text[], $5::text[]) AS d(job_id, page_no, external_id, error)
ON CONFLICT DO NOTHING
"""

SELECT_DEAD_LETTERS = """
SELECT d.job_id::text AS job_id, d.page_no, d.external_id, d.error
FROM import_job_dead_letters AS d
JOIN unnest($2::uuid[], $3::integer[]) AS c(job_id, page_no)
  ON d.job_id = c.job_id AND d.page_no = c.page_no
WHERE d.tenant_id = $1::uuid
ORDER BY d.job_id, d.page_no, d.external_id
"""

# The page's keys travel as JSON array text: unnest() of a two-dimensional array would flatten it.
RECORD_PAGE_COUNTS = """
UPDATE import_job_pages AS p SET
    records_fetched = c.records_fetched, inserted = c.inserted, updated = c.updated,
    unchanged = c.unchanged, stale = c.stale, skipped_out_of_window = c.skipped_out_of_window,
    skipped_invalid = c.skipped_invalid, skipped_dead_letter = c.skipped_dead_letter,
    skipped_duplicate_in_page = c.skipped_duplicate_in_page,
    skipped_unknown_deletion = c.skipped_unknown_deletion, contacts_unmatched = c.contacts_unmatched,
    contacts_fetched = c.contacts_fetched, payments_fetched = c.payments_fetched,
    external_ids = ARRAY(SELECT jsonb_array_elements_text(c.external_ids::jsonb)),
    inserted_ids = ARRAY(SELECT jsonb_array_elements_text(c.inserted_ids::jsonb)),
    content_digest = c.content_digest, written_at = now()
FROM unnest($2::uuid[], $3::integer[], $4::integer[], $5::integer[], $6::integer[], $7::integer[],
            $8::integer[], $9::integer[], $10::integer[], $11::integer[], $12::integer[], $13::integer[],
            $14::integer[], $15::text[], $16::text[], $17::bytea[], $18::integer[], $19::integer[])
    AS c(job_id, page_no, records_fetched, inserted, updated, unchanged, stale, skipped_out_of_window,
         skipped_invalid, skipped_dead_letter, skipped_duplicate_in_page, skipped_unknown_deletion,
         contacts_unmatched, external_ids, inserted_ids, content_digest, contacts_fetched, payments_fetched)
WHERE p.job_id = c.job_id AND p.page_no = c.page_no AND p.tenant_id = $1::uuid
"""

# Only the transaction that records pages changes these counters (see 0001_initial.sql), and only
# while the job runs: a page result that arrives after the job ended (it failed waiting for it) is
# kept in the ledger but leaves the ended job's counts, and its JobFinished event, as they were.
# Returns every job of the tenant named, with whether it was still active.
ADD_JOB_COUNTERS = """
WITH c AS (
    SELECT * FROM unnest($2::uuid[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
                         $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[],
                         $14::bigint[], $15::bigint[], $16::bigint[])
        AS c(job_id, pages_written, records_fetched, inserted, updated, unchanged, stale, skipped_out_of_window,
             skipped_invalid, skipped_dead_letter, skipped_duplicate_in_page, skipped_unknown_deletion,
             contacts_unmatched, contacts_fetched, payments_fetched)
), added AS (
    UPDATE import_jobs AS j SET
        pages_written = j.pages_written + c.pages_written,
        records_fetched = j.records_fetched + c.records_fetched,
        inserted = j.inserted + c.inserted,
        updated = j.updated + c.updated,
        unchanged = j.unchanged + c.unchanged,
        stale = j.stale + c.stale,
        skipped_out_of_window = j.skipped_out_of_window + c.skipped_out_of_window,
        skipped_invalid = j.skipped_invalid + c.skipped_invalid,
        skipped_dead_letter = j.skipped_dead_letter + c.skipped_dead_letter,
        skipped_duplicate_in_page = j.skipped_duplicate_in_page + c.skipped_duplicate_in_page,
        skipped_unknown_deletion = j.skipped_unknown_deletion + c.skipped_unknown_deletion,
        contacts_unmatched = j.contacts_unmatched + c.contacts_unmatched,
        contacts_fetched = j.contacts_fetched + c.contacts_fetched,
        payments_fetched = j.payments_fetched + c.payments_fetched,
        updated_at = now()
    FROM c
    WHERE j.job_id = c.job_id AND j.tenant_id = $1::uuid AND j.state IN ('QUEUED', 'RUNNING')
    RETURNING j.job_id
)
SELECT j.job_id::text AS job_id, j.job_id IN (SELECT job_id FROM added) AS active
FROM import_jobs AS j JOIN c ON j.job_id = c.job_id
WHERE j.tenant_id = $1::uuid
"""


def page_key_arguments(keys: Sequence[PageKey]) -> tuple[list[str], list[int]]:
    """`(job_ids, page_nos)` arrays for CLAIM_PAGES and SELECT_PAGE_COUNTS."""
    return [key.job_id for key in keys], [key.page_no for key in keys]


def appointment_rows(writes: Sequence[RowWrite], contact_ids: Mapping[RowKey, int]) -> list[tuple[Any, ...]]:
    """The `apptsync_appointment_row` values of `writes` (INSERT_NEW_APPOINTMENTS / UPSERT_APPOINTMENTS'
    `$2`), fields in the type's order, raw JSON as text; `contact_ids` maps a write's key to its
    resolved contact (absent: a null contact)."""
    rows = []
    for write in writes:
        page, row = write.page, write.row
        source = page.external_source
        contact_key = row.contact_key
        rows.append((
            source, row.external_id, page.connection_id, row.starts_at, row.ends_at, row.timezone, row.status,
            row.title, row.appointment_type, row.calendar, row.contact_name, row.contact_email,
            row.contact_phone, row.provider_client_id, row.price_minor, row.price_currency,
            row.amount_paid_minor, row.amount_paid_currency, row.external_url, row.raw_json, row.content_hash,
            row.observed_at, page.job_id, contact_key, contact_ids.get(write.key),
            row.rescheduled_to_external_id, row.rescheduled_from_external_id,
        ))
    return rows


def cancel_arguments(tenant_id: str, cancels: Sequence[RowWrite]) -> tuple[Any, ...]:
    """The CANCEL_APPOINTMENTS arguments for the batch's final stubs."""
    return (
        tenant_id,
        [write.page.external_source for write in cancels],
        [write.row.external_id for write in cancels],
        [write.row.content_hash for write in cancels],
        [write.row.observed_at for write in cancels],
        [write.page.job_id for write in cancels],
    )


def identity_arguments(tenant_id: str, found: Sequence[Identity]) -> tuple[Any, ...]:
    """The SELECT_CONTACTS_BY_IDENTITY arguments: the tenant, the identities' kinds and values."""
    return tenant_id, [kind for kind, _ in found], [value for _, value in found]


def contact_id_of(ref: ContactRef, created: Mapping[tuple[str, int], int]) -> int:
    """The stored id of a resolution's contact reference (`created`: INSERT_CONTACTS' new ids)."""
    return ref if isinstance(ref, int) else created[ref]


def new_contact_arguments(tenant_id: str, resolution: Resolution) -> tuple[Any, ...]:
    """The INSERT_CONTACTS arguments for the resolution's new contacts (in their order)."""
    values = list(resolution.new_contacts.values())
    return (tenant_id, *([value[i] for value in values] for i in range(5)))


def merge_arguments(tenant_id: str, resolution: Resolution) -> tuple[Any, ...]:
    """MERGE_IDENTITIES / MERGE_APPOINTMENTS arguments: the tenant, the losers, their winners."""
    losers = sorted(resolution.merges)
    return tenant_id, losers, [resolution.merges[loser] for loser in losers]


def contact_update_arguments(tenant_id: str, resolution: Resolution) -> tuple[Any, ...]:
    """UPDATE_CONTACTS arguments for the stored contacts whose columns change."""
    ids = sorted(resolution.updates)
    return (tenant_id, ids, *([resolution.updates[i][column] for i in ids] for column in range(3)))


def new_identity_arguments(
    tenant_id: str, resolution: Resolution, created: Mapping[tuple[str, int], int]
) -> tuple[Any, ...]:
    """INSERT_IDENTITIES arguments for the identities the resolution adds."""
    found = list(resolution.identities.items())
    return (tenant_id, [kind for (kind, _), _ in found], [value for (_, value), _ in found],
            [contact_id_of(ref, created) for _, ref in found])


def payment_arguments(tenant_id: str, writes: Sequence[RowWrite]) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """(DELETE_ABSENT_PAYMENTS, UPSERT_PAYMENTS) arguments for the written rows whose payment list is
    known; None when there are none. A transaction id repeated in the batch is written once (the
    last copy): one statement cannot update a row twice."""
    known = [write for write in writes if write.row.payments_known]
    if not known:
        return None
    rows: dict[tuple[str, str], tuple[Any, ...]] = {}
    for write in known:
        source = write.page.external_source
        for payment in write.row.payments:
            rows[(source, payment.transaction_id)] = (
                source, write.row.external_id, payment.transaction_id, payment.amount_minor, payment.currency,
                payment.processor, payment.paid_at, payment.successful, payment.refunded, write.page.job_id,
            )
    delete = (
        tenant_id,
        [write.page.external_source for write in known],
        [write.row.external_id for write in known],
        [f"{source}:{transaction_id}" for source, transaction_id in rows],
    )
    return delete, (tenant_id, list(rows.values()))


def dead_letter_arguments(
    tenant_id: str, refused: Sequence[tuple[PageKey, RefusedRecord]]
) -> tuple[Any, ...]:
    """The RECORD_DEAD_LETTERS arguments for refused records of their pages."""
    return (
        tenant_id,
        [key.job_id for key, _ in refused],
        [key.page_no for key, _ in refused],
        [record.external_id for _, record in refused],
        [record.error for _, record in refused],
    )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One page as the ledger records it: its counts, the keys it carried and inserted, its digest."""

    counts: PageCounts
    external_ids: Sequence[str]
    inserted_ids: Sequence[str]
    content_digest: bytes


def record_page_counts_arguments(tenant_id: str, entries: Sequence[LedgerEntry]) -> tuple[Any, ...]:
    """The RECORD_PAGE_COUNTS arguments for `entries`."""
    counts = [entry.counts for entry in entries]
    return (
        tenant_id,
        [c.job_id for c in counts],
        [c.page_no for c in counts],
        [c.records_fetched for c in counts],
        [c.inserted for c in counts],
        [c.updated for c in counts],
        [c.unchanged for c in counts],
        [c.stale for c in counts],
        [c.skipped.out_of_window for c in counts],
        [c.skipped.invalid for c in counts],
        [c.skipped.dead_letter for c in counts],
        [c.skipped.duplicate_in_page for c in counts],
        [c.skipped.unknown_deletion for c in counts],
        [c.contacts_unmatched for c in counts],
        [json.dumps(list(entry.external_ids)) for entry in entries],
        [json.dumps(list(entry.inserted_ids)) for entry in entries],
        [entry.content_digest for entry in entries],
        [c.contacts_fetched for c in counts],
        [c.payments_fetched for c in counts],
    )


def job_counter_arguments(tenant_id: str, totals: Sequence[JobTotals]) -> tuple[Any, ...]:
    """The ADD_JOB_COUNTERS arguments for `totals`."""
    return (
        tenant_id,
        [t.job_id for t in totals],
        [t.pages_written for t in totals],
        [t.records_fetched for t in totals],
        [t.inserted for t in totals],
        [t.updated for t in totals],
        [t.unchanged for t in totals],
        [t.stale for t in totals],
        *([t.skipped.as_tuple()[i] for t in totals] for i in range(5)),
        [t.contacts_unmatched for t in totals],
        [t.contacts_fetched for t in totals],
        [t.payments_fetched for t in totals],
    )


def page_counts_from_record(record: Any) -> PageCounts:
    """PageCounts from a SELECT_PAGE_COUNTS row (anything indexable by column name)."""
    return PageCounts(
        job_id=record["job_id"],
        page_no=record["page_no"],
        records_fetched=record["records_fetched"],
        inserted=record["inserted"],
        updated=record["updated"],
        unchanged=record["unchanged"],
        stale=record["stale"],
        skipped=SkipCounts(
            out_of_window=record["skipped_out_of_window"],
            invalid=record["skipped_invalid"],
            dead_letter=record["skipped_dead_letter"],
            duplicate_in_page=record["skipped_duplicate_in_page"],
            unknown_deletion=record["skipped_unknown_deletion"],
        ),
        contacts_unmatched=record["contacts_unmatched"],
        contacts_fetched=record["contacts_fetched"],
        payments_fetched=record["payments_fetched"],
    )



def page_key_from_record(record: Any) -> PageKey:
    """The page of a CLAIM_PAGES or SELECT_DEAD_LETTERS row."""
    return PageKey(record["job_id"], record["page_no"])


def dead_letter_from_record(record: Any) -> tuple[PageKey, RefusedRecord]:
    """A refused record of its page from a SELECT_DEAD_LETTERS row."""
    return page_key_from_record(record), RefusedRecord(record["external_id"], record["error"])
