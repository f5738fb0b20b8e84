"""The integer-arithmetic Timestamp conversions agree with protobuf's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from apptsync.shared.timestamps import from_timestamp, timestamp, timestamp_fields

pytestmark = pytest.mark.unit

MOMENTS = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)  # fmt: skip


@given(MOMENTS)
def test_timestamp_is_what_from_datetime_computes(moment: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(moment)

    assert timestamp(moment) == expected
    assert Timestamp(**timestamp_fields(moment)) == expected


@given(MOMENTS)
def test_from_timestamp_is_what_to_datetime_gives(moment: datetime) -> None:
    message = timestamp(moment)

    assert from_timestamp(message) == message.ToDatetime(tzinfo=UTC) == moment


def test_an_offset_is_kept_as_the_same_instant() -> None:
    moment = datetime(2024, 3, 20, 9, 0, tzinfo=timezone(timedelta(hours=-5)))

    assert from_timestamp(timestamp(moment)) == moment


def test_a_naive_moment_and_an_out_of_range_message_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        timestamp(datetime(2024, 3, 20))
    with pytest.raises(ValueError, match="out of range"):
        from_timestamp(Timestamp(seconds=253_402_300_800))
