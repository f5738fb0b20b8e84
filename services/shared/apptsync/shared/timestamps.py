"""Protobuf `Timestamp` <-> aware `datetime`, by integer arithmetic (each runs several times per
record on the page path, where `Timestamp.FromDatetime` / `ToDatetime` cost more)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp of an aware datetime. Raises ValueError for a naive one."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    # What Timestamp.FromDatetime computes, by integer arithmetic: it runs three times per record.
    since_epoch = moment - _EPOCH
    return Timestamp(seconds=since_epoch.days * 86_400 + since_epoch.seconds, nanos=since_epoch.microseconds * 1000)


# The range Timestamp.ToDatetime accepts: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_MIN_TIMESTAMP_SECONDS = -62_135_596_800
_MAX_TIMESTAMP_SECONDS = 253_402_300_799


def from_timestamp(message: Timestamp) -> datetime:
    """The aware UTC datetime of a Timestamp (nanoseconds truncated to microseconds), as
    Timestamp.ToDatetime(tzinfo=UTC) gives it, by integer arithmetic (it runs three times per record).
    Raises ValueError for seconds or nanos out of range, as ToDatetime does."""
    seconds, nanos = message.seconds, message.nanos
    if not (_MIN_TIMESTAMP_SECONDS <= seconds <= _MAX_TIMESTAMP_SECONDS and 0 <= nanos <= 999_999_999):
        raise ValueError(f"Timestamp out of range: seconds {seconds}, nanos {nanos}")
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


def timestamp_fields(moment: datetime) -> dict[str, int]:
    """`timestamp(moment)` as constructor keywords (a protobuf message takes a dict for a message
    field and builds it in place, cheaper than building a Timestamp and copying it in)."""
    since_epoch = moment - _EPOCH
    return {"seconds": since_epoch.days * 86_400 + since_epoch.seconds, "nanos": since_epoch.microseconds * 1000}
