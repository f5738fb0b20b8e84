"""From consumed Kafka messages to units of work (pure): page batches and messages to dead-letter.

`plan_work` keeps a partition's order: consecutive decodable pages of one tenant form a batch of at
most `max_batch_pages` (one transaction); a message that is not a valid page becomes its own unit,
bound for the dead-letter topic. `retry_delay_seconds` paces retries of a batch PostgreSQL or the
broker could not take.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from apptsync.shared.errors import PoisonMessageError
from apptsync.shared.kafka import Headers, text_headers
from apptsync.shared.messages.appointment_pages import single_record_page
from apptsync.writer.accounting import DecodedPage, decode_page

ERROR_HEADER = "apptsync-error"
JOB_ID_HEADER = "apptsync-job-id"
PAGE_NO_HEADER = "apptsync-page-no"
EXTERNAL_ID_HEADER = "apptsync-external-id"
SERVICE_VERSION_HEADER = "apptsync-service-version"
SOURCE_TOPIC_HEADER = "apptsync-source-topic"
SOURCE_PARTITION_HEADER = "apptsync-source-partition"
SOURCE_OFFSET_HEADER = "apptsync-source-offset"
MAX_ERROR_HEADER_CHARS = 2000


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A consumed Kafka message, as much of it as the writer uses."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeliveredPage:
    message: InboundMessage
    page: DecodedPage


@dataclass(frozen=True, slots=True)
class PageBatch:
    """Consecutive pages of one partition and one tenant, applied in one transaction."""

    pages: tuple[DeliveredPage, ...]

    @property
    def first_offset(self) -> int:
        return self.pages[0].message.offset

    @property
    def last_offset(self) -> int:
        return self.pages[-1].message.offset


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the writer cannot store however often it tries, and why."""

    message: InboundMessage
    error: str
    job_id: str | None = None
    page_no: int | None = None
    # Set when one record of a page was refused: `message.value` then holds that record alone.
    external_id: str | None = None

    @property
    def first_offset(self) -> int:
        return self.message.offset

    @property
    def last_offset(self) -> int:
        return self.message.offset


WorkUnit = PageBatch | DeadLetter


def plan_work(messages: Sequence[InboundMessage], *, max_batch_pages: int) -> list[WorkUnit]:
    """`messages` (one partition, offset order) as units of work in the same order.

    Guarantees: every message is in exactly one unit; a batch holds 1..max_batch_pages pages of one
    tenant. Raises ValueError if max_batch_pages < 1."""
    if max_batch_pages < 1:
        raise ValueError("max_batch_pages must be at least 1")
    units: list[WorkUnit] = []
    batch: list[DeliveredPage] = []

    def flush() -> None:
        if batch:
            units.append(PageBatch(tuple(batch)))
            batch.clear()

    for message in messages:
        try:
            page = decode_page(message.value)
        except PoisonMessageError as exc:
            flush()
            units.append(DeadLetter(message, str(exc), job_id=job_id_from_key(message.key)))
            continue
        if batch and (len(batch) >= max_batch_pages or batch[0].page.tenant_id != page.tenant_id):
            flush()
        batch.append(DeliveredPage(message, page))
    flush()
    return units


def record_page_value(page_value: bytes | None, external_id: str) -> bytes:
    """An AppointmentPage holding only the record `external_id` of the page in `page_value` (its
    last copy, the one the writer tried to store), for the dead-letter copy of a refused record.

    Raises PoisonMessageError when `page_value` is not a page holding that record."""
    return single_record_page(page_value, external_id)


def job_id_from_key(key: bytes | None) -> str | None:
    """The job id a message key names (pages are keyed by job id), if it is readable text."""
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def dead_letter_headers(letter: DeadLetter, *, service_version: str) -> Headers:
    """Headers of the dead-letter copy of `letter.message`: the error, the job and page when known,
    the service version and where the message came from."""
    values: dict[str, str | int] = {ERROR_HEADER: letter.error[:MAX_ERROR_HEADER_CHARS]}
    if letter.job_id is not None:
        values[JOB_ID_HEADER] = letter.job_id
    if letter.page_no is not None:
        values[PAGE_NO_HEADER] = letter.page_no
    if letter.external_id is not None:
        values[EXTERNAL_ID_HEADER] = letter.external_id
    values[SERVICE_VERSION_HEADER] = service_version
    values[SOURCE_TOPIC_HEADER] = letter.message.topic
    values[SOURCE_PARTITION_HEADER] = letter.message.partition
    values[SOURCE_OFFSET_HEADER] = letter.message.offset
    return text_headers(values)


def retry_delay_seconds(
    consecutive_failures: int, rng: random.Random, *, base_seconds: float = 0.2, cap_seconds: float = 10.0
) -> float:
    """Exponential backoff with jitter: between half and all of `base * 2**(failures-1)`, capped.

    Jitter keeps writers that lost the database together from retrying in lockstep."""
    exponent = min(max(consecutive_failures, 1) - 1, 30)
    ceiling = min(cap_seconds, base_seconds * 2**exponent)
    return rng.uniform(ceiling / 2, ceiling)
