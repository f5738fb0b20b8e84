"""The pure decision behind idempotency keys: is a later request with a key the request that took it?"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from apptsync.shared.db.jobs import (
    FingerprintValue,
    IdempotencyKeyReusedError,
    JobOptions,
    NewJob,
    asked_request,
    held_request,
    request_differences,
)

pytestmark = pytest.mark.unit
TENANT = "7d3c9a64-5f43-4c1c-9a53-0f5b2c1e8e10"
FINGERPRINT: dict[str, FingerprintValue] = {
    "window.start": None,
    "window.end": None,
    "options.page_size": 0,
    "options.stop_policy": "STOP_POLICY_NEVER",
}


def new_job(connection_id: str = "main", fingerprint: dict[str, FingerprintValue] | None = None) -> NewJob:
    return NewJob(
        tenant_id=TENANT,
        external_source="acuity",
        connection_id=connection_id,
        window_start=datetime(2026, 1, 1, tzinfo=UTC),
        window_end=datetime(2026, 2, 1, tzinfo=UTC),
        options=JobOptions(100, 10, 4, "NEVER", 1, 600),
        idempotency_key="k",
        request_fingerprint=FINGERPRINT if fingerprint is None else fingerprint,
    )


def test_the_same_request_has_no_differences() -> None:
    held = held_request("acuity", "main", dict(FINGERPRINT))
    assert request_differences(held, asked_request(new_job())) == []


def test_another_connection_or_source_is_another_request() -> None:
    held = held_request("acuity", "main", FINGERPRINT)
    assert request_differences(held, asked_request(new_job("second"))) == ["connection_id"]
    assert request_differences(held_request("calendly", "main", FINGERPRINT), asked_request(new_job())) == [
        "source"
    ]


def test_every_differing_field_is_named_in_order() -> None:
    changed = {**FINGERPRINT, "window.start": "2026-01-01T00:00:00Z", "options.page_size": 50}
    held = held_request("acuity", "main", FINGERPRINT)
    assert request_differences(held, asked_request(new_job("other", changed))) == [
        "connection_id",
        "options.page_size",
        "window.start",
    ]


def test_a_job_without_a_stored_fingerprint_is_compared_on_source_and_connection() -> None:
    legacy = held_request("acuity", "main", None)
    assert request_differences(legacy, asked_request(new_job())) == []
    assert request_differences(legacy, asked_request(new_job("second"))) == ["connection_id"]


def test_a_field_only_one_side_recorded_is_not_compared() -> None:
    newer = {**FINGERPRINT, "options.something_new": 7}
    held = held_request("acuity", "main", FINGERPRINT)
    assert request_differences(held, asked_request(new_job(fingerprint=newer))) == []


def test_the_stored_fingerprint_cannot_override_the_job_columns() -> None:
    forged: dict[str, FingerprintValue] = {**FINGERPRINT, "connection_id": "second", "source": "calendly"}
    held = held_request("acuity", "main", forged)
    assert held["connection_id"] == "main"
    assert held["source"] == "acuity"


def test_the_refusal_names_the_job_that_holds_the_key_and_what_differs() -> None:
    error = IdempotencyKeyReusedError(
        idempotency_key="sync-all.never.1.acuity.main",
        job_id="0b0e6c52-3d52-4b8e-8f4b-5a8f0d6f1c11",
        source="acuity",
        connection_id="main",
        differences=["connection_id", "options.page_size"],
    )
    message = str(error)
    assert "0b0e6c52-3d52-4b8e-8f4b-5a8f0d6f1c11" in message
    assert "'sync-all.never.1.acuity.main'" in message
    assert "connection_id, options.page_size" in message
    assert not error.retriable
