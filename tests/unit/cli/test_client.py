"""sync-all's pure parts: slots, per-connection idempotency keys, outcomes, report lines, exit codes."""

from __future__ import annotations

import grpc
import pytest

from apptsync.cli.client import (
    EXIT_AUTH,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_OTHER,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    MAX_IDEMPOTENCY_KEY_CHARS,
    SyncOutcome,
    SyncResult,
    exit_code_for,
    sync_all_exit_code,
    sync_all_key,
    sync_outcome,
    sync_outcome_dict,
    sync_outcome_line,
    sync_slot,
    sync_summary_line,
)
from apptsync.gateway.translate import FieldViolation, check_name
from apptsync.v1 import imports_pb2

pytestmark = pytest.mark.unit
TENANT = "7d3c9a64-5f43-4c1c-9a53-0f5b2c1e8e10"
JOB_ID = "0b0e6c52-3d52-4b8e-8f4b-5a8f0d6f1c11"


def connection(
    connection_id: str = "main", source: imports_pb2.Source.ValueType = imports_pb2.SOURCE_ACUITY
) -> imports_pb2.Connection:
    return imports_pb2.Connection(tenant_id=TENANT, connection_id=connection_id, source=source)


def response(state: imports_pb2.JobState.ValueType, already_exists: bool) -> imports_pb2.StartImportResponse:
    return imports_pb2.StartImportResponse(
        job=imports_pb2.Job(job_id=JOB_ID, state=state), already_exists=already_exists
    )


def gateway_accepts(key: str) -> bool:
    violations: list[FieldViolation] = []
    check_name(key, "idempotency_key", violations)
    return not violations


def test_a_slot_is_a_stretch_of_time_counted_from_the_epoch() -> None:
    assert sync_slot(1_800_000_000.0, 300) == 6_000_000
    assert sync_slot(1_800_000_299.9, 300) == 6_000_000
    assert sync_slot(1_800_000_300.0, 300) == 6_000_001
    with pytest.raises(ValueError, match="at least 1 second"):
        sync_slot(1_800_000_000.0, 0)


def test_each_connection_of_a_tenant_gets_its_own_key_in_a_slot() -> None:
    keys = {
        sync_all_key("no-new-records", 6_000_000, "acuity", "front-desk"),
        sync_all_key("no-new-records", 6_000_000, "acuity", "back-office"),
        sync_all_key("no-new-records", 6_000_000, "calendly", "front-desk"),
    }
    assert len(keys) == 3
    assert sync_all_key("no-new-records", 6_000_000, "acuity", "front-desk") == (
        "sync-all.no-new-records.6000000.acuity.front-desk"
    )
    assert sync_all_key("no-new-records", 6_000_001, "acuity", "front-desk") not in keys
    assert sync_all_key("never", 6_000_000, "acuity", "front-desk") not in keys


def test_a_connection_id_too_long_for_the_key_is_replaced_by_its_digest() -> None:
    longest = "c" * 128
    key = sync_all_key("no-new-records", 6_000_000, "google_calendar", longest)
    assert key.startswith("sync-all.no-new-records.6000000.google_calendar@")
    assert len(key.rsplit("@", 1)[1]) == 32
    assert gateway_accepts(key)
    assert key != sync_all_key("no-new-records", 6_000_000, "google_calendar", "c" * 127 + "d")
    # The two forms never meet: an id spelled like a digest keeps its `.`.
    digest = key.rsplit("@", 1)[1]
    assert sync_all_key("no-new-records", 6_000_000, "google_calendar", digest) != key


@pytest.mark.parametrize("length", [1, 60, 79, 80, 81, 128])
@pytest.mark.parametrize("policy", ["no-new-records", "no-changes", "never"])
def test_every_key_passes_the_gateway_check(length: int, policy: str) -> None:
    for source in ("acuity", "calendly", "google_calendar"):
        key = sync_all_key(policy, sync_slot(9_999_999_999.0, 1), source, "x." * (length // 2) + "y" * (length % 2))
        assert len(key) <= MAX_IDEMPOTENCY_KEY_CHARS
        assert gateway_accepts(key), key


def test_outcomes_of_answers() -> None:
    key = "sync-all.never.1.acuity.main"
    started = sync_outcome(connection(), key, response=response(imports_pb2.JOB_STATE_QUEUED, False))
    running = sync_outcome(connection(), key, response=response(imports_pb2.JOB_STATE_RUNNING, True))
    finished = sync_outcome(connection(), key, response=response(imports_pb2.JOB_STATE_FAILED, True))
    refused = sync_outcome(connection(), key, error=(grpc.StatusCode.ALREADY_EXISTS, "held by job x"))
    failed = sync_outcome(connection(), key, error=(grpc.StatusCode.UNAVAILABLE, "try again"))
    assert [o.result for o in (started, running, finished, refused, failed)] == [
        SyncResult.STARTED,
        SyncResult.ALREADY_RUNNING,
        SyncResult.ALREADY_FINISHED,
        SyncResult.REFUSED,
        SyncResult.FAILED,
    ]
    assert [o.exit_code for o in (started, running, finished, refused, failed)] == [0, 0, 0, 6, 4]


def test_report_lines_name_the_connection_the_job_and_what_happened() -> None:
    def line(state: imports_pb2.JobState.ValueType, already_exists: bool) -> str:
        return sync_outcome_line(sync_outcome(connection(), "k", response=response(state, already_exists)))

    assert line(imports_pb2.JOB_STATE_QUEUED, False) == f"{TENANT}/main: job {JOB_ID} started"
    assert line(imports_pb2.JOB_STATE_RUNNING, True) == f"{TENANT}/main: job {JOB_ID} already running"
    assert line(imports_pb2.JOB_STATE_SUCCEEDED, True) == f"{TENANT}/main: job {JOB_ID} already finished (SUCCEEDED)"
    refused = sync_outcome(connection(), "k", error=(grpc.StatusCode.ALREADY_EXISTS, "held by job x"))
    assert sync_outcome_line(refused) == f"{TENANT}/main: refused (ALREADY_EXISTS): held by job x"
    assert sync_summary_line([refused], 1, 300) == (
        "sync-all slot 1 (300 s): 1 connections: 0 started, 0 already running, 0 already finished, 1 refused, 0 failed"
    )
    assert sync_summary_line([], 1, 300, listed_all=False).endswith(
        "0 connections: 0 started, 0 already running, 0 already finished, 0 refused, 0 failed"
        " (listing the connections failed: others were not tried)"
    )


def test_the_json_of_an_outcome() -> None:
    calendly = connection("cal", imports_pb2.SOURCE_CALENDLY)
    started = sync_outcome_dict(sync_outcome(calendly, "k", response=response(imports_pb2.JOB_STATE_QUEUED, False)))
    assert started["source"] == "calendly"
    assert started["result"] == "started"
    assert started["idempotency_key"] == "k"
    assert isinstance(started["job"], dict) and started["job"]["job_id"] == JOB_ID
    refused = sync_outcome_dict(sync_outcome(calendly, "k", error=(grpc.StatusCode.ALREADY_EXISTS, "held")))
    assert (refused["job"], refused["status"], refused["detail"]) == (None, "ALREADY_EXISTS", "held")


def test_sync_all_exits_with_the_gravest_connection_failure() -> None:
    def with_code(code: grpc.StatusCode | None) -> SyncOutcome:
        if code is None:
            return sync_outcome(connection(), "k", response=response(imports_pb2.JOB_STATE_QUEUED, False))
        return sync_outcome(connection(), "k", error=(code, ""))

    ok = with_code(None)
    assert sync_all_exit_code([]) == EXIT_OK
    assert sync_all_exit_code([ok, ok]) == EXIT_OK
    assert sync_all_exit_code([ok, with_code(grpc.StatusCode.NOT_FOUND)]) == EXIT_NOT_FOUND
    unavailable = [ok, with_code(grpc.StatusCode.UNAVAILABLE), with_code(grpc.StatusCode.NOT_FOUND)]
    assert sync_all_exit_code(unavailable) == EXIT_UNAVAILABLE
    other = [with_code(grpc.StatusCode.INTERNAL), with_code(grpc.StatusCode.UNAVAILABLE)]
    assert sync_all_exit_code(other) == EXIT_OTHER
    refused = [with_code(grpc.StatusCode.ALREADY_EXISTS), with_code(grpc.StatusCode.INTERNAL), ok]
    assert sync_all_exit_code(refused) == EXIT_REFUSED
    denied = [with_code(grpc.StatusCode.ALREADY_EXISTS), with_code(grpc.StatusCode.PERMISSION_DENIED), ok]
    assert sync_all_exit_code(denied) == EXIT_AUTH


def test_a_refused_key_has_its_own_exit_code() -> None:
    assert exit_code_for(grpc.StatusCode.ALREADY_EXISTS) == EXIT_REFUSED == 6
    assert exit_code_for(grpc.StatusCode.FAILED_PRECONDITION) == EXIT_OTHER
