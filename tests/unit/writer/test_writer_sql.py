"""Shape of the writer's set-based statements and their argument arrays."""

from __future__ import annotations

import re

import pytest

from apptsync.shared.db.migrator import load_migrations
from apptsync.shared.messages.page_results import PageCounts, SkipCounts
from apptsync.writer import sql
from apptsync.writer.accounting import (
    decode_page,
    job_totals,
    plan_batch,
)
from tests.unit.writer.page_builders import JOB, TENANT, appointment, page

pytestmark = pytest.mark.unit


def highest_parameter(statement: str) -> int:
    return max(int(n) for n in re.findall(r"\$(\d+)", statement))


def row_type_fields(type_name: str) -> list[str]:
    """The field names of a composite type, in order, as its migrations declare them (CREATE TYPE,
    then every ALTER TYPE ... ADD ATTRIBUTE in migration order)."""
    fields: list[str] = []
    for migration in load_migrations():
        if f"CREATE TYPE {type_name} AS (" in migration.sql:
            body = migration.sql.split(f"CREATE TYPE {type_name} AS (", 1)[1].split(");", 1)[0]
            fields += [line.split()[0] for line in body.splitlines()
                       if line.strip() and not line.strip().startswith("--")]
        if f"ALTER TYPE {type_name}" in migration.sql:
            body = migration.sql.split(f"ALTER TYPE {type_name}", 1)[1].split(";", 1)[0]
            fields += [line.split()[2] for line in body.splitlines() if line.strip().startswith("ADD ATTRIBUTE")]
    return fields


def test_appointment_rows_follow_their_row_type_with_raw_json_as_text_and_known_contacts() -> None:
    decoded = decode_page(page([appointment("a"), appointment("b", version=3)]).SerializeToString())
    plan = plan_batch([decoded], {})
    writes = list(plan.writes.values())
    rows = sql.appointment_rows(writes, {writes[0].key: 42})

    fields = row_type_fields("apptsync_appointment_row")
    assert {len(row) for row in rows} == {len(fields)}
    columns = dict(zip(fields, zip(*rows, strict=True), strict=True))
    assert columns["external_source"] == ("acuity", "acuity")
    assert columns["external_id"] == ("a", "b")
    assert columns["raw"] == ('{"id": "a", "version": 0}', '{"id": "b", "version": 3}')  # still text
    assert columns["last_job_id"] == (JOB, JOB)
    assert columns["contact_key"] == tuple(w.row.contact_key for w in writes)
    assert columns["contact_id"] == (42, None)  # b resolved to no contact: stored with a null contact


def test_payment_arguments_follow_their_row_type_once_per_transaction() -> None:
    decoded = decode_page(page([appointment("a", payments=(("t1", 30000), ("t2", -5000))),
                                appointment("b"), appointment("c", payments=(("t1", 30000),))]).SerializeToString())
    writes = list(plan_batch([decoded], {}).writes.values())

    arguments = sql.payment_arguments(TENANT, writes)

    assert arguments is not None
    (tenant, sources, appointment_ids, kept), (_, rows) = arguments
    assert tenant == TENANT and sources == ["acuity", "acuity"] and appointment_ids == ["a", "c"]
    assert kept == ["acuity:t1", "acuity:t2"]  # t1 twice in the batch: written once, the last copy
    fields = row_type_fields("apptsync_payment_row")
    columns = [dict(zip(fields, row, strict=True)) for row in rows]
    assert [(c["appointment_external_id"], c["transaction_id"], c["amount_minor"]) for c in columns] == [
        ("c", "t1", 30000), ("a", "t2", -5000)]
    assert highest_parameter(sql.DELETE_ABSENT_PAYMENTS) == len(arguments[0])
    assert highest_parameter(sql.UPSERT_PAYMENTS) == len(arguments[1])
    assert sql.payment_arguments(TENANT, [w for w in writes if w.row.external_id == "b"]) is None


def test_upsert_only_touches_rows_whose_content_changed_and_is_not_older() -> None:
    statement = " ".join(sql.UPSERT_APPOINTMENTS.split())

    assert "FROM unnest($2::apptsync_appointment_row[]) AS r" in statement
    assert "ON CONFLICT (tenant_id, external_source, external_id) DO UPDATE SET" in statement
    assert ("WHERE (a.content_hash IS DISTINCT FROM EXCLUDED.content_hash OR a.deleted_at IS NOT NULL) "
            "AND a.observed_at <= EXCLUDED.observed_at") in statement
    assert "deleted_at = NULL" in statement  # a row seen again is revived
    assert "RETURNING a.external_source, a.external_id, (a.xmax = 0) AS inserted" in statement
    assert "r.raw::jsonb" in statement
    assert "updated_at = now()" in statement


def test_the_insert_of_rows_not_stored_is_the_same_statement_without_conflict_handling() -> None:
    plain = " ".join(sql.INSERT_NEW_APPOINTMENTS.split())

    assert "ON CONFLICT" not in plain
    assert " ".join(sql.UPSERT_APPOINTMENTS.split()).startswith(plain)
    assert highest_parameter(plain) == 2


def test_stored_versions_are_fetched_by_index_lookup_scoped_to_the_tenant() -> None:
    statement = " ".join(sql.SELECT_STORED_VERSIONS.split())

    assert "FROM unnest($3::text[]) AS k(external_id) CROSS JOIN LATERAL" in statement
    # The tenant and source as InitPlan parameters: the planner cannot use one tenant's statistics to
    # prefer another index (tests/integration/writer/test_writer_lookup_plans.py measures the probe).
    assert ("WHERE a.tenant_id = (SELECT $1::uuid) AND a.external_source = (SELECT $2::text) "
            "AND a.external_id = k.external_id LIMIT 1") in statement
    assert "force_custom_plan" in sql.SET_TRANSACTION_SCOPE


def test_every_statement_is_scoped_by_the_tenant_in_its_first_parameter() -> None:
    for statement in (sql.CLAIM_PAGES, sql.SELECT_PAGE_COUNTS, sql.SELECT_STORED_VERSIONS,
                      sql.SELECT_CONTACTS_BY_IDENTITY, sql.INSERT_CONTACTS, sql.MERGE_IDENTITIES,
                      sql.MERGE_APPOINTMENTS, sql.DELETE_MERGED_CONTACTS, sql.INSERT_IDENTITIES, sql.UPDATE_CONTACTS,
                      sql.DELETE_ABSENT_PAYMENTS, sql.UPSERT_PAYMENTS,
                      sql.INSERT_NEW_APPOINTMENTS, sql.UPSERT_APPOINTMENTS, sql.RECORD_PAGE_COUNTS,
                      sql.ADD_JOB_COUNTERS, sql.CANCEL_APPOINTMENTS):
        assert "$1::uuid" in statement


def test_page_and_job_count_arguments_line_up_with_their_statements() -> None:
    counts = [PageCounts(job_id=JOB, page_no=n, records_fetched=4, inserted=1, updated=1, unchanged=1,
                         skipped=SkipCounts(invalid=1), contacts_unmatched=0) for n in (1, 2)]

    entries = [sql.LedgerEntry(c, ["a", "b"], ["a"], b"digest") for c in counts]
    page_arguments = sql.record_page_counts_arguments(TENANT, entries)
    job_arguments = sql.job_counter_arguments(TENANT, job_totals(counts))

    assert len(page_arguments) == highest_parameter(sql.RECORD_PAGE_COUNTS)
    assert page_arguments[2] == [1, 2]
    assert page_arguments[-5:-2] == (['["a", "b"]', '["a", "b"]'], ['["a"]', '["a"]'], [b"digest", b"digest"])
    assert len(job_arguments) == highest_parameter(sql.ADD_JOB_COUNTERS)
    assert job_arguments[1:5] == ([JOB], [2], [8], [2])


def test_page_counts_round_trip_through_a_stored_row() -> None:
    counts = PageCounts(job_id=JOB, page_no=3, records_fetched=6, inserted=1, updated=1, unchanged=1,
                        skipped=SkipCounts(1, 1, 0, 1), contacts_unmatched=1, contacts_fetched=4, payments_fetched=2)
    row = {"job_id": JOB, "page_no": 3, "records_fetched": 6, "inserted": 1, "updated": 1, "unchanged": 1,
           "skipped_out_of_window": 1, "skipped_invalid": 1, "skipped_dead_letter": 0,
           "skipped_duplicate_in_page": 1, "contacts_unmatched": 1, "stale": 0, "skipped_unknown_deletion": 0,
           "contacts_fetched": 4, "payments_fetched": 2}

    assert sql.page_counts_from_record(row) == counts
