"""The writer's SQL and the pure builders of its arguments (column arrays for set-based statements).

Every statement takes the tenant as `$1` and filters or writes by it: the seam where row-level
security (`app.tenant_id`, set by `store.tenant_transaction`) will take over.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apptsync.shared.messages.page_results import PageCounts, SkipCounts
from apptsync.writer.accounting import (
    ContactWrite,
    JobTotals,
    PageKey,
    RefusedRecord,
    RowWrite,
)

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
    skipped_dead_letter, skipped_duplicate_in_page, skipped_unknown_deletion, contacts_unmatched"""

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

# The contacts of the rows a batch writes (plan_contacts: one per key), before the appointments that
# link to them. A provider sending an empty field does not erase what another booking told us; an
# unchanged contact is not updated. Contacts stored with exactly what the merge would give are left
# out before the upsert: ON CONFLICT DO UPDATE ... WHERE locks, and writes WAL for, every conflicting
# row even when its WHERE is false, and on a first load most of a batch's contacts were stored by an
# earlier batch (measured, 756 contacts of which 689 stored: WAL per batch 67 KB -> 28-32 KB, the
# statement 15.6 ms -> 10.5-12.3 ms). One probe of the unique index per contact: LIMIT keeps the
# planner from the hash join over all the tenant's contacts that it chose for NOT EXISTS.
# Returns the contact id of every key it knows (the probe's, or the upsert's RETURNING), so the
# appointments carry their contact_id instead of probing contacts once more per row (measured ~7 us
# per row of a first load). A key missing from the result (a concurrent insert of the same contact,
# left as it was) is resolved by the appointment insert itself (_INSERT_ROWS).
UPSERT_CONTACTS = """
WITH m AS MATERIALIZED (
    SELECT r.external_source, r.match_key, r.name, r.email, r.phone, r.provider_client_id,
        s.contact_id,
        s.match_key IS NULL
        OR (s.name, s.email, s.phone, s.provider_client_id) IS DISTINCT FROM (
           COALESCE(NULLIF(r.name, ''), s.name), COALESCE(NULLIF(r.email, ''), s.email),
           COALESCE(NULLIF(r.phone, ''), s.phone), COALESCE(NULLIF(r.provider_client_id, ''), s.provider_client_id))
        AS needs_write
    FROM unnest($2::apptsync_contact_row[]) AS r
    LEFT JOIN LATERAL (
        SELECT s.contact_id, s.match_key, s.name, s.email, s.phone, s.provider_client_id
        FROM contacts AS s
        WHERE s.tenant_id = $1::uuid AND s.external_source = r.external_source AND s.match_key = r.match_key
        LIMIT 1
    ) AS s ON true
), w AS (
    INSERT INTO contacts AS c (tenant_id, external_source, match_key, name, email, phone, provider_client_id)
    SELECT $1::uuid, m.external_source, m.match_key, m.name, m.email, m.phone, m.provider_client_id
    FROM m
    WHERE m.needs_write
    ON CONFLICT (tenant_id, external_source, match_key) DO UPDATE SET
        name = COALESCE(NULLIF(EXCLUDED.name, ''), c.name),
        email = COALESCE(NULLIF(EXCLUDED.email, ''), c.email),
        phone = COALESCE(NULLIF(EXCLUDED.phone, ''), c.phone),
        provider_client_id = COALESCE(NULLIF(EXCLUDED.provider_client_id, ''), c.provider_client_id),
        updated_at = now()
    WHERE (c.name, c.email, c.phone, c.provider_client_id) IS DISTINCT FROM (
        COALESCE(NULLIF(EXCLUDED.name, ''), c.name), COALESCE(NULLIF(EXCLUDED.email, ''), c.email),
        COALESCE(NULLIF(EXCLUDED.phone, ''), c.phone),
        COALESCE(NULLIF(EXCLUDED.provider_client_id, ''), c.provider_client_id))
    RETURNING c.external_source, c.match_key, c.contact_id
)
SELECT m.external_source, m.match_key, m.contact_id FROM m WHERE m.contact_id IS NOT NULL
UNION ALL
SELECT w.external_source, w.match_key, w.contact_id FROM w
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
# with the plain insert and the contact ids below. contact_id comes from UPSERT_CONTACTS; a row whose
# contact key it did not return probes contacts itself (its statement snapshot sees a contact that a
# concurrent transaction committed after UPSERT_CONTACTS looked).
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
    r.rescheduled_to_external_id, r.rescheduled_from_external_id,
    CASE WHEN r.contact_id IS NOT NULL THEN r.contact_id
         WHEN r.contact_key IS NOT NULL THEN (
             SELECT ct.contact_id FROM contacts AS ct
             WHERE ct.tenant_id = $1::uuid AND ct.external_source = r.external_source
               AND ct.match_key = r.contact_key)
    END
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
    external_ids = ARRAY(SELECT jsonb_array_elements_text(c.external_ids::jsonb)),
    inserted_ids = ARRAY(SELECT jsonb_array_elements_text(c.inserted_ids::jsonb)),
    content_digest = c.content_digest, written_at = now()
FROM unnest($2::uuid[], $3::integer[], $4::integer[], $5::integer[], $6::integer[], $7::integer[],
            $8::integer[], $9::integer[], $10::integer[], $11::integer[], $12::integer[], $13::integer[],
            $14::integer[], $15::text[], $16::text[], $17::bytea[])
    AS c(job_id, page_no, records_fetched, inserted, updated, unchanged, stale, skipped_out_of_window,
         skipped_invalid, skipped_dead_letter, skipped_duplicate_in_page, skipped_unknown_deletion,
         contacts_unmatched, external_ids, inserted_ids, content_digest)
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
                         $14::bigint[])
        AS c(job_id, pages_written, records_fetched, inserted, updated, unchanged, stale, skipped_out_of_window,
             skipped_invalid, skipped_dead_letter, skipped_duplicate_in_page, skipped_unknown_deletion,
             contacts_unmatched)
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


def appointment_rows(writes: Sequence[RowWrite], contact_ids: Mapping[tuple[str, str], int]) -> list[tuple[Any, ...]]:
    """The `apptsync_appointment_row` values of `writes` (INSERT_NEW_APPOINTMENTS / UPSERT_APPOINTMENTS'
    `$2`), fields in the type's order, raw JSON as text; `contact_ids` maps (external_source, contact
    key) to a stored contact (a key it lacks is looked up by the statement)."""
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
            row.observed_at, page.job_id, contact_key,
            None if contact_key is None else contact_ids.get((source, contact_key)),
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


def contact_arguments(tenant_id: str, contacts: Sequence[ContactWrite]) -> tuple[Any, ...]:
    """The UPSERT_CONTACTS arguments for `contacts` (one per key, see plan_contacts): the tenant and
    one array of `apptsync_contact_row` values."""
    return (
        tenant_id,
        [(c.external_source, c.match_key, c.name, c.email, c.phone, c.provider_client_id) for c in contacts],
    )


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
    )

