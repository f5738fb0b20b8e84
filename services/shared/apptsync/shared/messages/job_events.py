"""JobFinished: a job's final state, for downstream consumers.

Topic `KafkaSettings.job_events_topic` (`job_events_topic`), key: the job id, compressed with a codec
any client reads. The fetcher encodes it (`encode_job_finished`) after the job's final state
committed; apptsync itself never consumes it (`decode_job_finished` is what a consumer does, and what
the tests do).
"""

from __future__ import annotations

from apptsync.shared.db.jobs import JobRecord
from apptsync.shared.job_messages import job_to_proto
from apptsync.shared.messages.wire import parse_message
from apptsync.shared.settings import KafkaSettings
from apptsync.v1 import imports_pb2


def job_events_topic(kafka: KafkaSettings) -> str:
    return kafka.job_events_topic


def encode_job_finished(job: JobRecord) -> bytes:
    """The JobFinished event of `job` (its final record)."""
    return imports_pb2.JobFinished(job=job_to_proto(job)).SerializeToString()


def decode_job_finished(value: bytes | None) -> imports_pb2.JobFinished:
    """The JobFinished event in a Kafka message value. Raises PoisonMessageError when there is no
    value or it is not a JobFinished."""
    return parse_message(imports_pb2.JobFinished(), value)
