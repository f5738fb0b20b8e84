"""JobProgress: backpressure, in-order judging, stop policies, first-import and empty-page rules."""

from datetime import UTC, datetime, timedelta

import pytest

from apptsync.fetcher.progress import JobProgress, Outcome, StopPolicy, WrittenPage

pytestmark = pytest.mark.unit
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def progress(
    policy: StopPolicy = StopPolicy.NO_NEW_RECORDS,
    *,
    stop_after: int = 1,
    max_pages: int = 100,
    in_flight: int = 3,
    first_import: bool = False,
) -> JobProgress:
    return JobProgress(
        policy=policy,
        stop_after_pages=stop_after,
        max_pages=max_pages,
        max_in_flight_pages=in_flight,
        first_import=first_import,
        deadline_at=NOW + timedelta(hours=1),
    )


def result(page_no: int, inserted: int = 0, updated: int = 0, records: int = 10) -> WrittenPage:
    return WrittenPage(page_no, records, inserted, updated)


def test_backpressure_caps_pages_without_a_result() -> None:
    p = progress(in_flight=2, first_import=True)
    p.page_sent()
    p.page_sent()
    assert not p.may_send()
    p.result_received(result(1, inserted=5))
    assert p.may_send()


def test_stops_after_first_page_with_nothing_new_but_waits_for_pages_in_flight() -> None:
    p = progress()
    p.page_sent()
    p.result_received(result(1, inserted=1))  # news: the window grows to 2
    p.page_sent()
    p.page_sent()
    p.result_received(result(2))
    assert p.stopped
    assert p.stop_reason == "page 2 had no new records"
    assert not p.may_send()
    assert not p.finished  # page 3 is still written and counted
    p.result_received(result(3))
    assert p.finished
    assert p.outcome is Outcome.SUCCEEDED


def test_a_job_that_may_stop_early_starts_with_a_small_window_that_doubles_with_news() -> None:
    p = progress(stop_after=1, in_flight=8)
    assert p.window == 1
    p.page_sent()
    assert not p.may_send()
    p.result_received(result(1, inserted=3))
    assert p.window == 2
    p.page_sent()
    p.page_sent()
    assert not p.may_send()
    p.result_received(result(2, updated=1, inserted=1))
    assert p.window == 4
    p.result_received(result(3, inserted=2))
    assert p.window == 8
    assert progress(first_import=True, in_flight=8).window == 8
    assert progress(StopPolicy.NEVER, in_flight=8).window == 8


def test_results_are_judged_in_page_order() -> None:
    p = progress(stop_after=2)
    for _ in range(3):
        p.page_sent()
    p.result_received(result(3))
    p.result_received(result(2))
    assert not p.stopped  # page 1 not judged yet
    p.result_received(result(1, inserted=4))
    assert p.stopped
    assert p.stop_reason == "pages 2-3 had no new records"


def test_a_page_with_news_breaks_the_streak() -> None:
    p = progress(stop_after=2, in_flight=10)
    for _ in range(4):
        p.page_sent()
    for outcome in (result(1), result(2, inserted=1), result(3)):
        p.result_received(outcome)
    assert not p.stopped
    p.result_received(result(4))
    assert p.stop_reason == "pages 3-4 had no new records"


def test_no_changes_policy_counts_updates_as_news() -> None:
    p = progress(StopPolicy.NO_CHANGES)
    p.page_sent()
    p.result_received(result(1, updated=2))
    assert not p.stopped
    p.page_sent()
    p.result_received(result(2))
    assert p.stop_reason == "page 2 had no changes"


def test_never_policy_pages_until_the_provider_is_exhausted() -> None:
    p = progress(StopPolicy.NEVER)
    p.page_sent()
    p.result_received(result(1))
    assert not p.stopped
    p.provider_exhausted()
    assert p.finished and p.stop_reason == "provider exhausted"


def test_first_import_never_stops_early() -> None:
    p = progress(first_import=True)
    p.page_sent()
    p.result_received(result(1))
    assert not p.stopped


def test_empty_pages_neither_stop_nor_break_a_streak() -> None:
    p = progress(stop_after=2, in_flight=10)
    for _ in range(3):
        p.page_sent()
    p.result_received(result(1))
    p.result_received(result(2, records=0))
    assert not p.stopped
    p.result_received(result(3))
    assert p.stopped


def test_max_pages_stops_sending() -> None:
    p = progress(max_pages=2)
    p.page_sent()
    assert not p.stopped
    p.page_sent()
    assert p.stopped
    assert p.stop_reason == "max_pages reached (2)"
    with pytest.raises(RuntimeError):
        p.page_sent()


def test_deadline_fails_the_job() -> None:
    p = progress()
    p.check_deadline(NOW + timedelta(hours=2))
    assert p.finished and p.outcome is Outcome.FAILED and "deadline" in p.error


def test_cancel_and_failure_keep_the_first_decision() -> None:
    p = progress()
    p.cancel()
    p.fail("boom")
    assert p.outcome is Outcome.CANCELED and p.stop_reason == "canceled by request"


def test_duplicate_and_unknown_results_are_ignored() -> None:
    p = progress(first_import=True)
    p.page_sent()
    p.result_received(result(1, inserted=1))
    p.result_received(result(1))
    p.result_received(result(7))
    assert p.in_flight == 0 and not p.stopped


def test_resume_awaits_pages_sent_before_the_crash() -> None:
    p = progress(in_flight=3)
    p.resume(4, {1: result(1, inserted=3)})
    assert p.outstanding_pages == {2, 3}
    assert p.next_page_no == 4
    p.result_received(result(2))
    assert p.stopped
    assert p.stop_reason == "page 2 had no new records"


# --------------------------------------------------------------------------- a walk of the whole window


def walked(policy: StopPolicy, *, results: list[WrittenPage], end: str = "exhausted") -> JobProgress:
    p = progress(policy, in_flight=10)
    for _ in results:
        p.page_sent()
    for outcome in results:
        p.result_received(outcome)
    if end == "exhausted":
        p.provider_exhausted()
    elif end == "cancel":
        p.cancel()
    elif end == "fail":
        p.fail("provider said no")
    elif end == "deadline":
        p.check_deadline(NOW + timedelta(hours=2))
    return p


def test_only_a_never_job_exhausting_the_provider_with_every_record_read_walked_its_whole_window() -> None:
    pages = [result(1, inserted=3), result(2)]

    assert walked(StopPolicy.NEVER, results=pages).walked_whole_window
    for end in ("cancel", "fail", "deadline"):
        assert not walked(StopPolicy.NEVER, results=pages, end=end).walked_whole_window, end
    assert not walked(StopPolicy.NO_NEW_RECORDS, results=pages).walked_whole_window
    unreadable = [result(1, inserted=3), WrittenPage(2, 10, 0, 0, unreadable=1)]
    assert not walked(StopPolicy.NEVER, results=unreadable).walked_whole_window


def test_a_job_still_waiting_for_results_or_ended_by_max_pages_has_not_walked_its_window() -> None:
    waiting = progress(StopPolicy.NEVER, in_flight=5)
    waiting.page_sent()
    waiting.provider_exhausted()
    assert not waiting.walked_whole_window

    capped = progress(StopPolicy.NEVER, max_pages=1, in_flight=5)
    capped.page_sent()  # max_pages reached: stopped before the provider was exhausted
    capped.result_received(result(1))
    capped.provider_exhausted()
    assert capped.finished and not capped.walked_whole_window


def test_a_resumed_job_counts_unreadable_records_of_pages_written_before_it() -> None:
    p = progress(StopPolicy.NEVER, in_flight=5)
    p.resume(3, {1: WrittenPage(1, 10, 10, 0), 2: WrittenPage(2, 10, 9, 0, unreadable=1)})
    p.provider_exhausted()
    assert p.finished and not p.walked_whole_window


# --- Near-term pages: always fetched, never evidence for a stop -----------------------------------


def test_near_term_pages_never_stop_a_job_the_first_page_beyond_them_may() -> None:
    p = progress(stop_after=1, in_flight=8)
    for _ in range(3):
        p.page_sent(near_term=True)
    for page_no in (1, 2, 3):
        p.result_received(result(page_no))  # nothing new, nothing changed
    assert not p.stopped
    p.page_sent()
    p.result_received(result(4))
    assert p.stopped and p.stop_reason == "page 4 had no new records"


def test_near_term_updates_are_not_news_for_no_changes_either() -> None:
    p = progress(StopPolicy.NO_CHANGES, stop_after=2, in_flight=8)
    p.page_sent(near_term=True)
    p.page_sent(near_term=True)
    p.result_received(result(1, updated=4))
    p.result_received(result(2))
    assert not p.stopped and p.window == 2  # neither a streak nor a bigger window
    p.page_sent()
    p.page_sent()
    p.result_received(result(3))
    p.result_received(result(4))
    assert p.stop_reason == "pages 3-4 had no changes"


def test_while_in_the_near_term_the_full_window_may_be_in_flight() -> None:
    p = progress(stop_after=1, in_flight=4)
    assert p.window == 1
    p.page_sent(near_term=True)
    for _ in range(3):
        assert p.may_send()
        p.page_sent(near_term=True)
    assert not p.may_send()  # never more than max_in_flight_pages
    p.result_received(result(1))
    assert p.may_send()
    p.page_sent()  # the first page beyond the near term: back to the small window
    assert not p.may_send()
    for page_no in (2, 3, 4):
        p.result_received(result(page_no))
    assert not p.may_send() and not p.stopped  # page 5 is still out
    p.result_received(result(5))
    assert p.stopped and p.stop_reason == "page 5 had no new records"


def test_resume_knows_which_pages_were_near_term() -> None:
    """A job taken over after page 3 of a 2-page near term: pages 1-2 still never count."""
    p = progress(stop_after=1, in_flight=8)
    p.resume(4, {}, near_term_pages=2)
    assert p.outstanding_pages == {1, 2, 3}
    p.result_received(result(2))
    p.result_received(result(1))
    assert not p.stopped
    assert not p.may_send()  # page 3 was beyond the near term: the small window is full
    p.result_received(result(3))
    assert p.stop_reason == "page 3 had no new records"


def test_resume_inside_the_near_term_keeps_the_full_window() -> None:
    p = progress(stop_after=1, in_flight=3)
    p.resume(3, {1: result(1)}, near_term_pages=2)
    assert p.outstanding_pages == {2}
    assert p.may_send()  # the small window (1) is full, but the session is still in its near term
    p.page_sent(near_term=True)
    p.page_sent(near_term=True)
    assert not p.may_send()  # pages 2-4 out: the full window
    for page_no in (2, 3, 4):
        p.result_received(result(page_no))
    assert not p.stopped


def test_resume_never_marks_pages_not_yet_sent() -> None:
    p = progress(stop_after=1, in_flight=8)
    p.resume(2, {}, near_term_pages=5)  # a count beyond the pages sent is capped
    p.page_sent()
    p.result_received(result(1))
    p.result_received(result(2))
    assert p.stop_reason == "page 2 had no new records"
