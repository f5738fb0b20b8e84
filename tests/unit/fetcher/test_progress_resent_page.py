"""JobProgress after a resume from a cursor stored before a page that landed anyway (its send timed
out at the broker, the broker kept it): the page is sent again and its replayed result settles it."""

from datetime import UTC, datetime, timedelta

import pytest

from apptsync.fetcher.progress import JobProgress, Outcome, StopPolicy, WrittenPage

pytestmark = pytest.mark.unit
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def resumed_at_page_3_with_page_3_written() -> JobProgress:
    p = JobProgress(
        policy=StopPolicy.NEVER,
        stop_after_pages=1,
        max_pages=100,
        max_in_flight_pages=4,
        first_import=True,
        deadline_at=NOW + timedelta(hours=1),
    )
    written = {n: WrittenPage(n, 10, 10, 0) for n in (1, 2, 3)}
    p.resume(3, written)  # the stored cursor still points at page 3, whose result is stored
    return p


def test_a_page_sent_again_is_settled_by_its_replayed_result_and_counted_once() -> None:
    p = resumed_at_page_3_with_page_3_written()
    assert p.page_sent() == 3
    assert p.outstanding_pages == {3}

    p.result_received(WrittenPage(3, 10, 10, 0))  # the writer replays the stored result

    assert p.in_flight == 0
    p.provider_exhausted()
    assert p.finished
    assert p.outcome is Outcome.SUCCEEDED


def test_a_duplicate_result_of_a_settled_page_changes_nothing() -> None:
    p = resumed_at_page_3_with_page_3_written()
    p.page_sent()
    p.page_sent()
    p.result_received(WrittenPage(3, 10, 10, 0))
    p.result_received(WrittenPage(3, 10, 10, 0))
    assert p.outstanding_pages == {4}
    p.result_received(WrittenPage(9, 10, 10, 0))  # never sent: ignored
    assert p.outstanding_pages == {4}
