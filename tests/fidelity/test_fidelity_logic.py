"""The fidelity harness's pure parts: reading the shipped schedule from the CronJobs, judging rows
against the truth, counting near-term changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tests.fidelity.compare import ABSENT, MISSING_COLUMN, Expected, Stored, Window, compare, missed_changes
from tests.fidelity.harness import SeedReport, batch_seed, near_term_keys, summarize
from tests.fidelity.schedule import CronSync, parse_cron_syncs, shipped_schedule, split_schedule

pytestmark = pytest.mark.unit

START = datetime(2024, 6, 20, 9, tzinfo=UTC)
WINDOW = Window(START - timedelta(days=100), START + timedelta(days=100))
MANIFEST = """\
# a comment
apiVersion: batch/v1
kind: CronJob
metadata:
  name: often
spec:
  schedule: "*/15 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          containers:
            - name: sync-all
              args: ["sync-all", "--policy", "no-new-records"]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: other
---
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: "17 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          containers:
            - args: ["sync-all", "--policy", "never"]
"""


def test_the_cronjobs_sync_all_args_are_read_and_split_by_policy() -> None:
    syncs = parse_cron_syncs(MANIFEST)
    assert syncs == [
        CronSync("often", "*/15 * * * *", ("sync-all", "--policy", "no-new-records")),
        CronSync("nightly", "17 3 * * *", ("sync-all", "--policy", "never")),
    ]
    schedule = split_schedule(syncs)
    assert [s.name for s in schedule.frequent] == ["often"] and [s.name for s in schedule.full] == ["nightly"]
    with pytest.raises(ValueError, match="frequent and full"):
        split_schedule(syncs[:1])


def test_the_shipped_manifests_have_a_frequent_and_a_full_sync() -> None:
    schedule = shipped_schedule()
    assert all(s.args[0] == "sync-all" and s.policy for s in (*schedule.frequent, *schedule.full))
    assert all(s.walks_everything for s in schedule.full)


def expected(**changes: object) -> Expected:
    record = Expected(
        provider="acuity", external_id="1", status="scheduled", deleted=False, stub=False, starts_at=START,
        ends_at=START + timedelta(minutes=30), price="4500 USD", amount_paid="0 USD", contact_email="a@b.c",
        contact_phone="", rescheduled_to="",
    )  # fmt: skip
    return replace(record, **changes)  # type: ignore[arg-type]


def stored(**changes: object) -> Stored:
    row = Stored(
        provider="acuity", external_id="1", status="scheduled", deleted=False, starts_at=START,
        ends_at=START + timedelta(minutes=30), price="4500 USD", amount_paid="0 USD", contact_email="a@b.c",
        contact_phone="", rescheduled_to="",
    )  # fmt: skip
    return replace(row, **changes)  # type: ignore[arg-type]


def test_equal_rows_do_not_diverge_and_each_differing_field_is_named() -> None:
    assert compare([expected()], [stored()], WINDOW) == []
    found = compare([expected()], [stored(status="canceled", amount_paid="4500 USD")], WINDOW)
    assert [(d.field, d.expected, d.stored) for d in found] == [
        ("amount_paid", "0 USD", "4500 USD"), ("status", "scheduled", "canceled"),
    ]  # fmt: skip
    assert [d.field for d in compare([expected()], [], WINDOW)] == ["row"]
    assert compare([expected()], [], WINDOW)[0].stored == ABSENT
    extra = compare([], [stored()], WINDOW)
    assert [(d.field, d.stored) for d in extra] == [("row", "present")]
    assert [d.field for d in compare([expected()], [stored(), stored()], WINDOW)] == ["rows"]


def test_deleted_records_may_be_absent_and_must_be_marked_when_present() -> None:
    gone = expected(deleted=True, status="canceled", price="")
    assert compare([gone], [], WINDOW) == []
    assert compare([gone], [stored(deleted=True)], WINDOW) == []
    unmarked = compare([gone], [stored(deleted=False)], WINDOW)
    assert [(d.field, d.expected, d.stored) for d in unmarked] == [("deleted", "True", "False")]
    assert compare([gone], [stored(deleted=None)], WINDOW)[0].stored == MISSING_COLUMN
    assert [d.field for d in compare([expected()], [stored(deleted=True)], WINDOW)] == ["deleted"]


def test_stubs_judge_status_only_and_reschedule_links_need_the_column() -> None:
    stub = expected(stub=True, status="canceled", contact_email="")
    assert compare([stub], [], WINDOW) == []
    assert compare([stub], [stored(status="canceled")], WINDOW) == []
    assert [d.field for d in compare([stub], [stored()], WINDOW)] == ["status"]
    linked = expected(status="canceled", rescheduled_to="NEW")
    assert compare([linked], [stored(status="canceled", rescheduled_to="NEW")], WINDOW) == []
    no_column = compare([linked], [stored(status="canceled", rescheduled_to=None)], WINDOW)
    assert [(d.field, d.stored) for d in no_column] == [("rescheduled_to_external_id", MISSING_COLUMN)]
    assert compare([expected()], [stored(rescheduled_to=None, deleted=None)], WINDOW) == []


def test_records_outside_the_window_are_not_judged() -> None:
    far = START + timedelta(days=300)
    assert compare([expected(starts_at=far)], [], WINDOW) == []
    assert compare([], [stored(starts_at=far)], WINDOW) == []
    assert compare([expected(starts_at=far)], [stored(starts_at=START)], WINDOW) != []


def test_near_term_changes_are_counted_once_and_missed_ones_named() -> None:
    applied: list[dict[str, object]] = [
        {"provider": "calendly", "kind": "reschedule", "key": "OLD", "related_keys": ["NEW"],
         "near_term_before": True, "near_term_after": False},
        {"provider": "acuity", "kind": "new", "key": "1", "related_keys": [], "near_term_before": False,
         "near_term_after": False},
        {"provider": "acuity", "kind": "delete", "key": "2", "related_keys": [], "near_term_before": True,
         "near_term_after": True},
        {"provider": "google", "kind": "delete", "key": "c/e", "related_keys": [], "near_term_before": True,
         "near_term_after": True},
        {"provider": "calendly", "kind": "cancel", "key": "OLD", "related_keys": [], "near_term_before": True,
         "near_term_after": True},
    ]  # fmt: skip
    assert near_term_keys(applied) == [("calendly", "OLD"), ("google", "c/e"), ("calendly", "NEW")]
    # Made for tomorrow and moved to next month before any sync could see it: a far-future booking.
    made_and_moved: list[dict[str, object]] = [
        {"provider": "acuity", "kind": "new", "key": "9", "related_keys": [], "near_term_before": False,
         "near_term_after": True},
        {"provider": "acuity", "kind": "reschedule", "key": "9", "related_keys": [], "near_term_before": True,
         "near_term_after": False},
    ]  # fmt: skip
    assert near_term_keys(made_and_moved) == []
    # Stored in the near term and moved away: near-term (the mirror must not keep tomorrow's time).
    moved_away = [{**made_and_moved[1], "key": "8"}]
    assert near_term_keys(moved_away) == [("acuity", "8")]
    truth = {("acuity", "1"): expected(), ("acuity", "2"): expected(external_id="2", deleted=True)}
    rows = {("acuity", "1"): stored(status="canceled")}
    missed = missed_changes([("acuity", "1"), ("acuity", "2"), ("acuity", "3")], truth, rows)
    assert [(d.external_id, d.field) for d in missed] == [("1", "status")]


def test_a_seed_replays_its_batches_and_the_summary_adds_up() -> None:
    assert batch_seed(7, 1, 2) == batch_seed(7, 1, 2) != batch_seed(8, 1, 2)
    one = SeedReport(seed=1, near_term_changes=10, near_term_caught=10, requests_per_frequent_sync=[3, 5, 9])
    two = SeedReport(seed=2, near_term_changes=10, near_term_caught=8, requests_per_frequent_sync=[4])
    two.divergences_after_full_sync = [[], compare([expected()], [], WINDOW)]
    summary = summarize([one, two]).to_json()
    assert summary == {
        "seeds": 2, "divergences_after_full_sync": 1, "near_term_changes": 20,
        "near_term_caught_by_next_frequent_sync": 18, "near_term_caught_share": 0.9,
        "provider_requests_per_frequent_sync": {"p50": 4.5, "max": 9},
    }  # fmt: skip
    assert two.problems()[0].startswith("full sync 1: 1 divergences, first: acuity 1: row")
