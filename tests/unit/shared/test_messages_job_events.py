"""JobFinished: the fetcher's encoding of a finished job reads back as the same job, and bytes that
are not a JobFinished are poison, not a crash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apptsync.shared.db.jobs import JobOptions, JobRecord
from apptsync.shared.errors import PoisonMessageError
from apptsync.shared.messages.job_events import decode_job_finished, encode_job_finished, job_events_topic
from apptsync.shared.settings import KafkaSettings
from apptsync.v1 import imports_pb2

pytestmark = pytest.mark.unit

CREATED = datetime(2026, 3, 1, 9, tzinfo=UTC)


def finished_job() -> JobRecord:
    return JobRecord(
        job_id="0c9e8d7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f", tenant_id="7b0f1a52-3d5e-4f6a-9b1c-2d3e4f5a6b7c",
        external_source="acuity", connection_id="conn-1", state="SUCCEEDED",
        window_start=CREATED - timedelta(days=30), window_end=CREATED + timedelta(days=30),
        options=JobOptions(page_size=100, max_pages=0, max_in_flight_pages=4, stop_policy="NEVER",
                           stop_after_pages=0, deadline_seconds=600.0),
        deadline_at=CREATED + timedelta(minutes=10), first_import=True, idempotency_key=None, cursor=None,
        next_page_no=3, counts={"records_fetched": 7, "inserted": 7}, cancel_requested=False,
        stop_reason="walked the whole window", error="", trace_id="", traceparent="", lease_owner=None,
        lease_expires_at=None, created_at=CREATED, started_at=CREATED, finished_at=CREATED + timedelta(seconds=4),
    )


def test_a_finished_job_reads_back_with_its_state_counts_and_times() -> None:
    event = decode_job_finished(encode_job_finished(finished_job()))

    assert event.job.job_id == "0c9e8d7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"
    assert event.job.state == imports_pb2.JOB_STATE_SUCCEEDED
    assert (event.job.counts.records_fetched, event.job.counts.inserted) == (7, 7)
    assert event.job.finished_at.ToDatetime(UTC) == CREATED + timedelta(seconds=4)
    assert event.job.stop_reason == "walked the whole window"


@pytest.mark.parametrize("value", [None, b"\xff\xff\xff"])
def test_what_is_not_a_job_finished_is_poison(value: bytes | None) -> None:
    with pytest.raises(PoisonMessageError):
        decode_job_finished(value)


def test_the_topic_is_the_configured_job_events_topic() -> None:
    assert job_events_topic(KafkaSettings(job_events_topic="events-x")) == "events-x"
