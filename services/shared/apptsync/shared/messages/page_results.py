"""PageResult: what the writer reports for one page, back to the fetcher that sent it.

Topic `KafkaSettings.page_results_topic` (`page_results_topic`), key: the job id. The writer encodes
it (`encode_page_result`) once PostgreSQL committed the page, or replays the stored counts for a
redelivered page; every fetcher's ResultRouter decodes it (`decode_page_result`) for the job's run.
`PageCounts` holds the accounting identity both sides rely on.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from google.protobuf.message import DecodeError

from apptsync.shared.errors import PermanentError, PoisonMessageError
from apptsync.shared.settings import KafkaSettings
from apptsync.v1 import pages_pb2


def page_results_topic(kafka: KafkaSettings) -> str:
    return kafka.page_results_topic


class AccountingError(PermanentError):
    """Counts that break `inserted + updated + unchanged + skipped == records_fetched`: a bug, never
    stored."""


@dataclass(frozen=True, slots=True)
class SkipCounts:
    out_of_window: int = 0
    invalid: int = 0
    dead_letter: int = 0
    duplicate_in_page: int = 0
    # Cancellation stubs for keys never stored.
    unknown_deletion: int = 0

    @property
    def total(self) -> int:
        return self.out_of_window + self.invalid + self.dead_letter + self.duplicate_in_page + self.unknown_deletion

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return (self.out_of_window, self.invalid, self.dead_letter, self.duplicate_in_page, self.unknown_deletion)


@dataclass(frozen=True, slots=True)
class PageCounts:
    """The outcome of one page, as stored in import_job_pages and emitted as a PageResult.

    Raises AccountingError on construction unless
    `inserted + updated + unchanged + skipped.total == records_fetched` and no count is negative."""

    job_id: str
    page_no: int
    records_fetched: int
    inserted: int
    updated: int
    unchanged: int
    skipped: SkipCounts
    contacts_unmatched: int
    stale: int = 0
    # The other streams of the page (apptsync.shared.counts.STREAM_COUNTERS), outside the identity.
    contacts_fetched: int = 0
    payments_fetched: int = 0

    def __post_init__(self) -> None:
        counts = (self.inserted, self.updated, self.unchanged, self.stale, *self.skipped.as_tuple(),
                  self.contacts_unmatched, self.contacts_fetched, self.payments_fetched)
        if min(counts) < 0:
            raise AccountingError(f"page {self.job_id}/{self.page_no}: negative count in {counts}")
        accounted = self.inserted + self.updated + self.unchanged + self.stale + self.skipped.total
        if accounted != self.records_fetched:
            raise AccountingError(
                f"page {self.job_id}/{self.page_no}: inserted {self.inserted} + updated {self.updated} + "
                f"unchanged {self.unchanged} + stale {self.stale} + skipped {self.skipped.total} = {accounted} "
                f"!= records fetched {self.records_fetched}"
            )


# SkipCounts' fields are the proto's SkipCounts fields, name for name.
_SKIP_FIELDS = tuple(f.name for f in fields(SkipCounts))


@dataclass(frozen=True, slots=True)
class PageResult:
    """One page's counts and whether they were replayed from the writer's ledger (a redelivery)."""

    counts: PageCounts
    redelivered: bool

    @property
    def unreadable(self) -> int:
        """Records the page could not store (invalid or refused): their keys may be stored rows."""
        return self.counts.skipped.invalid + self.counts.skipped.dead_letter


def encode_page_result(result: PageResult) -> bytes:
    counts, skipped = result.counts, result.counts.skipped
    return pages_pb2.PageResult(
        job_id=counts.job_id,
        page_no=counts.page_no,
        records_fetched=counts.records_fetched,
        inserted=counts.inserted,
        updated=counts.updated,
        unchanged=counts.unchanged,
        skipped=pages_pb2.SkipCounts(**{name: getattr(skipped, name) for name in _SKIP_FIELDS}),
        contacts_unmatched=counts.contacts_unmatched,
        redelivered=result.redelivered,
        stale=counts.stale,
        contacts_fetched=counts.contacts_fetched,
        payments_fetched=counts.payments_fetched,
    ).SerializeToString()


def decode_page_result(value: bytes) -> PageResult:
    """The PageResult in `value`. Raises PoisonMessageError when it is not one, or its counts break
    the accounting identity."""
    message = pages_pb2.PageResult()
    try:
        message.ParseFromString(value)
    except (DecodeError, ValueError) as exc:
        raise PoisonMessageError(f"not a PageResult: {exc}") from exc
    skipped = message.skipped
    try:
        counts = PageCounts(
            job_id=message.job_id,
            page_no=message.page_no,
            records_fetched=message.records_fetched,
            inserted=message.inserted,
            updated=message.updated,
            unchanged=message.unchanged,
            skipped=SkipCounts(**{name: getattr(skipped, name) for name in _SKIP_FIELDS}),
            contacts_unmatched=message.contacts_unmatched,
            stale=message.stale,
            contacts_fetched=message.contacts_fetched,
            payments_fetched=message.payments_fetched,
        )
    except AccountingError as exc:
        raise PoisonMessageError(f"PageResult {message.job_id}/{message.page_no}: {exc}") from exc
    return PageResult(counts, redelivered=message.redelivered)
