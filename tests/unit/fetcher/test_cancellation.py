"""CancelSignals: a cancel notification reaches every run of its job in this process and nothing
else; a missed notification makes every run re-read its job row; finished runs are forgotten."""

from __future__ import annotations

from apptsync.fetcher.cancellation import CancelSignals


def test_a_notification_sets_the_runs_of_its_job_only() -> None:
    signals = CancelSignals()
    with signals.watch("job-a") as a, signals.watch("job-b") as b:
        assert signals.notified("job-a") == 1
        assert a.requested.is_set()
        assert not b.requested.is_set()


def test_the_payload_may_carry_surrounding_whitespace() -> None:
    signals = CancelSignals()
    with signals.watch("job-a") as a:
        assert signals.notified(" job-a\n") == 1
        assert a.requested.is_set()


def test_a_job_running_elsewhere_is_no_business_of_this_process() -> None:
    signals = CancelSignals()
    with signals.watch("job-a") as a:
        assert signals.notified("job-z") == 0
        assert not a.requested.is_set()


def test_two_runs_of_one_job_both_hear_it_and_are_forgotten_one_by_one() -> None:
    signals = CancelSignals()
    with signals.watch("job-a") as old_run:
        with signals.watch("job-a") as new_run:
            assert signals.notified("job-a") == 2
            assert old_run.requested.is_set() and new_run.requested.is_set()
        assert signals.watched_jobs == frozenset({"job-a"})
    assert signals.watched_jobs == frozenset()
    assert signals.notified("job-a") == 0


def test_recheck_all_asks_every_run_to_read_its_row_without_claiming_a_cancel() -> None:
    signals = CancelSignals()
    with signals.watch("job-a") as a, signals.watch("job-b") as b:
        signals.recheck_all()
        assert a.recheck.is_set() and b.recheck.is_set()
        assert not a.requested.is_set() and not b.requested.is_set()


def test_a_run_that_ended_by_an_exception_is_forgotten_too() -> None:
    signals = CancelSignals()
    try:
        with signals.watch("job-a"):
            raise RuntimeError("the run failed")
    except RuntimeError:
        pass
    assert signals.watched_jobs == frozenset()
