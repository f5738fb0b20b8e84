"""Targeted sessions (jobs queued by provider notifications): Acuity asks for each id, Calendly pages
the verified payloads; both resume from their cursor and never page beyond their targets."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

from apptsync.fetcher.providers import (
    ConnectionConfig,
    InMemoryConnectionStateStore,
    JobWindow,
    JsonValue,
    ProviderSession,
    open_targeted_session,
)
from apptsync.shared.appointments import Source
from apptsync.shared.errors import InvalidArgumentError
from apptsync.shared.webhooks import Target, calendly_target
from tests.unit.fetcher.test_provider_acuity_session import BASIC, FakeAcuity, acuity_record, make_http
from tests.unit.shared.test_webhooks import API, calendly_body

pytestmark = pytest.mark.unit

FETCHED_AT = datetime(2026, 12, 7, tzinfo=UTC)
WINDOW = JobWindow(datetime(2024, 12, 1, tzinfo=UTC), datetime(2029, 12, 1, tzinfo=UTC))


def acuity(targets: list[str], fake: FakeAcuity, *, cursor: JsonValue = None, page_size: int = 2) -> ProviderSession:
    return open_targeted_session(
        Source.ACUITY, http=make_http(fake), connection=BASIC, window=WINDOW, page_size=page_size,
        targets=targets, cursor=cursor, clock=lambda: FETCHED_AT,
        state=InMemoryConnectionStateStore(BASIC.credentials),
    )  # fmt: skip


async def test_acuity_fetches_each_target_by_id_and_skips_deleted_ones() -> None:
    fake = FakeAcuity([acuity_record(n, date(2026, 12, 8)) for n in (11, 12, 13)])
    session = acuity(["11", "99", "12", "13"], fake)
    first = await session.next_page()
    assert first is not None and [a.external_id for a in first.appointments] == ["11"]  # 99 is gone (404)
    second = await session.next_page()
    assert second is not None and [a.external_id for a in second.appointments] == ["12", "13"]
    assert await session.next_page() is None
    assert [r.url.path.rsplit("/", 1)[-1] for r in fake.requests] == ["11", "99", "12", "13"]
    assert session.cursor() == {"next": 4}


async def test_acuity_resumes_after_its_cursor() -> None:
    fake = FakeAcuity([acuity_record(n, date(2026, 12, 8)) for n in (11, 12, 13)])
    session = acuity(["11", "12", "13"], fake, cursor={"next": 2})
    page = await session.next_page()
    assert page is not None and [a.external_id for a in page.appointments] == ["13"]
    assert len(fake.requests) == 1


def test_acuity_refuses_targets_that_are_not_ids_and_foreign_cursors() -> None:
    with pytest.raises(InvalidArgumentError):
        acuity(["11", "../me"], FakeAcuity([]))
    with pytest.raises(InvalidArgumentError):
        acuity(["11"], FakeAcuity([]), cursor={"next": 5})


async def test_calendly_pages_the_notified_invitees_without_a_request() -> None:
    targets = []
    for event in ("invitee.created", "invitee.canceled"):
        target = calendly_target(json.loads(calendly_body(event)), api_base_url=API)
        assert isinstance(target, Target)
        targets.append(target.value)
    session = open_targeted_session(
        Source.CALENDLY, http=make_http(FakeAcuity([])), connection=ConnectionConfig(base_url=API, credentials={}),
        window=WINDOW, page_size=25, targets=targets, cursor=None, clock=lambda: FETCHED_AT,
        state=InMemoryConnectionStateStore({}),
    )  # fmt: skip
    page = await session.next_page()
    assert page is not None
    assert page.records_fetched == 2
    assert [a.external_id for a in page.appointments] == ["7c1dc6ac-2d8e-4c08-ae4f-8a1c0d5f30b1"] * 2
    assert await session.next_page() is None
