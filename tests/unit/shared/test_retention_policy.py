"""The pure decisions of `apptsync prune`: cutoffs, the budget, the end of a batch walk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from apptsync.shared.retention import PruneBudget, PruneReport, batch_exhausted, retention_cutoffs

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_cutoffs_lie_the_configured_days_before_now() -> None:
    cutoffs = retention_cutoffs(NOW, raw_payload_days=30, ledger_days=8)
    assert cutoffs.raw_payload_before == NOW - timedelta(days=30)
    assert cutoffs.ledger_before == NOW - timedelta(days=8)


@pytest.mark.parametrize(("raw_days", "ledger_days"), [(0, 30), (30, 0), (-1, 30)])
def test_an_age_below_one_day_is_refused(raw_days: int, ledger_days: int) -> None:
    with pytest.raises(ValueError, match="at least one day"):
        retention_cutoffs(NOW, raw_payload_days=raw_days, ledger_days=ledger_days)


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        retention_cutoffs(NOW.replace(tzinfo=None), raw_payload_days=30, ledger_days=30)


def test_the_budget_ends_at_its_batch_count_or_its_deadline() -> None:
    budget = PruneBudget(max_batches=2, deadline_monotonic=100.0)
    assert budget.allows_another(99.9)
    assert not budget.allows_another(100.0)
    budget.spend()
    budget.spend()
    assert budget.batches == 2
    assert not budget.allows_another(0.0)


def test_a_batch_shorter_than_asked_ends_the_walk() -> None:
    assert batch_exhausted(999, 1000)
    assert not batch_exhausted(1000, 1000)
    assert batch_exhausted(0, 1)


def test_the_report_line_carries_counts_only() -> None:
    report = PruneReport(tenants=2, raw_payloads_pruned=4, pages_deleted=6, complete=False)
    assert report.as_dict() == {
        "tenants": 2, "raw_payloads_pruned": 4, "appointments_read": 0, "dead_letters_deleted": 0,
        "pages_deleted": 6, "jobs_deleted": 0, "batches": 0, "complete": False,
    }
