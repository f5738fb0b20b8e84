"""Which finished jobs mark the rows they did not see as deleted."""

from datetime import UTC, datetime, timedelta

import pytest

from apptsync.fetcher.progress import JobProgress, StopPolicy, WrittenPage
from apptsync.fetcher.reconciliation import TARGETED_KIND, reconciles
from apptsync.shared.appointments import Source

pytestmark = pytest.mark.unit
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def complete_walk() -> JobProgress:
    p = JobProgress(policy=StopPolicy.NEVER, stop_after_pages=1, max_pages=10, max_in_flight_pages=4,
                    first_import=False, deadline_at=NOW + timedelta(hours=1))
    p.page_sent()
    p.result_received(WrittenPage(1, 5, 0, 0))
    p.provider_exhausted()
    return p


def test_acuity_and_calendly_reconcile_after_a_complete_walk_google_never_does() -> None:
    assert reconciles(Source.ACUITY, complete_walk())
    assert reconciles(Source.CALENDLY, complete_walk())
    # Google's sync-token pass lists changes only; it reports deletions as cancelled events instead.
    assert not reconciles(Source.GOOGLE_CALENDAR, complete_walk())


def test_a_targeted_job_never_reconciles_even_when_its_walk_ended_exhausted() -> None:
    """A job queued by notifications fetched only the records they named: absence proves nothing."""
    progress = JobProgress(
        policy=StopPolicy.NEVER, stop_after_pages=1, max_pages=10, max_in_flight_pages=2, first_import=False,
        deadline_at=datetime(2100, 1, 1, tzinfo=UTC),
    )
    progress.provider_exhausted()
    assert progress.walked_whole_window
    assert reconciles(Source.ACUITY, progress)
    assert not reconciles(Source.ACUITY, progress, kind=TARGETED_KIND)
