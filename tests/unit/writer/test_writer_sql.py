"""Shape of the writer's set-based statements and their argument arrays."""

from __future__ import annotations

import re
from typing import Any

import pytest

from apptsync.writer import sql
from apptsync.writer.accounting import PageCounts, SkipCounts, decode_page, job_totals, plan_batch
from tests.unit.writer.page_builders import JOB, TENANT, appointment, page

pytestmark = pytest.mark.unit


def highest_parameter(statement: str) -> int:
    return max(int(n) for n in re.findall(r"\$(\d+)", statement))


def test_upsert_arguments_are_one_array_per_column_with_raw_json_as_text() -> None:
    decoded = decode_page(page([appointment("a"), appointment("b", version=3)]).SerializeToString())
    plan = plan_batch([decoded], {})

    arguments = sql.upsert_arguments(TENANT, list(plan.writes.values()))

    assert len(arguments) == sql.UPSERT_PARAMETER_COUNT == highest_parameter(sql.UPSERT_APPOINTMENTS)
    assert arguments[0] == TENANT
    columns: tuple[list[Any], ...] = arguments[1:]
    assert {len(column) for column in columns} == {2}
    assert columns[0] == ["acuity", "acuity"]
    assert columns[1] == ["a", "b"]
    assert columns[19] == ['{"id": "a", "version": 0}', '{"id": "b", "version": 3}']  # raw, still text
    assert columns[22] == [JOB, JOB]  # last_job_id


def test_upsert_only_touches_rows_whose_content_changed_and_is_not_older() -> None:
    statement = " ".join(sql.UPSERT_APPOINTMENTS.split())

    assert "FROM unnest(" in statement
    assert "ON CONFLICT (tenant_id, external_source, external_id) DO UPDATE SET" in statement
    assert ("WHERE a.content_hash IS DISTINCT FROM EXCLUDED.content_hash "
            "AND a.observed_at <= EXCLUDED.observed_at") in statement
    assert "RETURNING a.external_source, a.external_id, (a.xmax = 0) AS inserted" in statement
    assert "r.raw::jsonb" in statement
    assert "updated_at = now()" in statement


def test_contacts_already_stored_as_the_merge_would_leave_them_never_reach_the_upsert() -> None:
    statement = " ".join(sql.UPSERT_CONTACTS.split())

    assert ("WHERE s.tenant_id = $1::uuid AND s.external_source = r.external_source "
            "AND s.match_key = r.match_key LIMIT 1 ) AS s ON true") in statement
    assert ("WHERE s.match_key IS NULL OR (s.name, s.email, s.phone, s.provider_client_id) "
            "IS DISTINCT FROM ( COALESCE(NULLIF(r.name, ''), s.name),") in statement
    assert statement.index("LEFT JOIN LATERAL") < statement.index("ON CONFLICT")


def test_stored_versions_are_fetched_by_index_lookup_scoped_to_the_tenant() -> None:
    statement = " ".join(sql.SELECT_STORED_VERSIONS.split())

    assert "FROM unnest($3::text[]) AS k(external_id) CROSS JOIN LATERAL" in statement
    assert ("WHERE a.tenant_id = $1::uuid AND a.external_source = $2 AND a.external_id = k.external_id "
            "LIMIT 1") in statement
    assert "force_custom_plan" in sql.SET_TRANSACTION_SCOPE


def test_every_statement_is_scoped_by_the_tenant_in_its_first_parameter() -> None:
    for statement in (sql.CLAIM_PAGES, sql.SELECT_PAGE_COUNTS, sql.SELECT_STORED_VERSIONS,
                      sql.UPSERT_APPOINTMENTS, sql.RECORD_PAGE_COUNTS, sql.ADD_JOB_COUNTERS):
        assert "$1::uuid" in statement


def test_page_and_job_count_arguments_line_up_with_their_statements() -> None:
    counts = [PageCounts(job_id=JOB, page_no=n, records_fetched=4, inserted=1, updated=1, unchanged=1,
                         skipped=SkipCounts(invalid=1), contacts_unmatched=0) for n in (1, 2)]

    page_arguments = sql.record_page_counts_arguments(TENANT, counts)
    job_arguments = sql.job_counter_arguments(TENANT, job_totals(counts))

    assert len(page_arguments) == highest_parameter(sql.RECORD_PAGE_COUNTS)
    assert page_arguments[2] == [1, 2]
    assert len(job_arguments) == highest_parameter(sql.ADD_JOB_COUNTERS)
    assert job_arguments[1:5] == ([JOB], [2], [8], [2])


def test_page_counts_round_trip_through_a_stored_row() -> None:
    counts = PageCounts(job_id=JOB, page_no=3, records_fetched=6, inserted=1, updated=1, unchanged=1,
                        skipped=SkipCounts(1, 1, 0, 1), contacts_unmatched=1)
    row = {"job_id": JOB, "page_no": 3, "records_fetched": 6, "inserted": 1, "updated": 1, "unchanged": 1,
           "skipped_out_of_window": 1, "skipped_invalid": 1, "skipped_dead_letter": 0,
           "skipped_duplicate_in_page": 1, "contacts_unmatched": 1}

    assert sql.page_counts_from_record(row) == counts
