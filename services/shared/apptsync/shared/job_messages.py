"""Translation of job records into the public protobuf messages (gateway responses, job events)."""

from __future__ import annotations

from datetime import timedelta

from google.protobuf.duration_pb2 import Duration

from apptsync.shared.appointments import Source
from apptsync.shared.db.jobs import JobRecord
from apptsync.shared.timestamps import timestamp
from apptsync.v1 import imports_pb2

SOURCE_FROM_PROTO: dict[int, Source] = {
    imports_pb2.SOURCE_ACUITY: Source.ACUITY,
    imports_pb2.SOURCE_CALENDLY: Source.CALENDLY,
    imports_pb2.SOURCE_GOOGLE_CALENDAR: Source.GOOGLE_CALENDAR,
}
SOURCE_TO_PROTO: dict[str, imports_pb2.Source.ValueType] = {
    Source.ACUITY.value: imports_pb2.SOURCE_ACUITY,
    Source.CALENDLY.value: imports_pb2.SOURCE_CALENDLY,
    Source.GOOGLE_CALENDAR.value: imports_pb2.SOURCE_GOOGLE_CALENDAR,
}
STATE_TO_PROTO: dict[str, imports_pb2.JobState.ValueType] = {
    "QUEUED": imports_pb2.JOB_STATE_QUEUED,
    "RUNNING": imports_pb2.JOB_STATE_RUNNING,
    "SUCCEEDED": imports_pb2.JOB_STATE_SUCCEEDED,
    "FAILED": imports_pb2.JOB_STATE_FAILED,
    "CANCELED": imports_pb2.JOB_STATE_CANCELED,
}
POLICY_FROM_PROTO: dict[int, str] = {
    imports_pb2.STOP_POLICY_NO_NEW_RECORDS: "NO_NEW_RECORDS",
    imports_pb2.STOP_POLICY_NO_CHANGES: "NO_CHANGES",
    imports_pb2.STOP_POLICY_NEVER: "NEVER",
}
POLICY_TO_PROTO: dict[str, imports_pb2.StopPolicy.ValueType] = {
    "NO_NEW_RECORDS": imports_pb2.STOP_POLICY_NO_NEW_RECORDS,
    "NO_CHANGES": imports_pb2.STOP_POLICY_NO_CHANGES,
    "NEVER": imports_pb2.STOP_POLICY_NEVER,
}


def job_to_proto(job: JobRecord) -> imports_pb2.Job:
    deadline = Duration()
    deadline.FromTimedelta(timedelta(seconds=job.options.deadline_seconds))
    message = imports_pb2.Job(
        job_id=job.job_id,
        tenant_id=job.tenant_id,
        source=SOURCE_TO_PROTO[job.external_source],
        connection_id=job.connection_id,
        state=STATE_TO_PROTO[job.state],
        window=imports_pb2.TimeWindow(start=timestamp(job.window_start), end=timestamp(job.window_end)),
        options=imports_pb2.ImportOptions(
            page_size=job.options.page_size,
            max_pages=job.options.max_pages,
            max_in_flight_pages=job.options.max_in_flight_pages,
            stop_policy=POLICY_TO_PROTO[job.options.stop_policy],
            stop_after_pages=job.options.stop_after_pages,
            deadline=deadline,
        ),
        counts=imports_pb2.JobCounts(**job.counts),
        stop_reason=job.stop_reason,
        error=job.error,
        created_at=timestamp(job.created_at),
        trace_id=job.trace_id,
        cancel_requested=job.cancel_requested,
        first_import=job.first_import,
    )
    if job.started_at is not None:
        message.started_at.CopyFrom(timestamp(job.started_at))
    if job.finished_at is not None:
        message.finished_at.CopyFrom(timestamp(job.finished_at))
    return message
