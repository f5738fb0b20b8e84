"""What apptsync asks each provider to subscribe, renew and remove a connection's webhooks (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from apptsync.gateway.subscriptions import (
    channel_expiry,
    new_channel_id,
    plan_acuity_subscribe,
    plan_calendly_subscribe,
    plan_google_watch,
    plan_unsubscribe,
)
from apptsync.shared.appointments import Source

pytestmark = pytest.mark.unit
TARGET = "https://hooks.example.com/webhooks/acuity/tok"


def test_acuity_subscribes_each_appointment_event_to_the_notification_url() -> None:
    calls = plan_acuity_subscribe("https://acuityscheduling.com/api/v1", TARGET)
    assert {c.body["event"] for c in calls if c.body} == {
        "appointment.scheduled", "appointment.rescheduled", "appointment.canceled", "appointment.changed"
    }  # fmt: skip
    assert all(c.method == "POST" and c.url.endswith("/webhooks") and c.body and c.body["target"] == TARGET
               for c in calls)  # fmt: skip


def test_calendly_subscribes_the_organization_or_the_user_with_our_signing_key() -> None:
    org = plan_calendly_subscribe("https://api.calendly.com", TARGET, organization="O", user="", signing_key="k")
    assert org.body == {"url": TARGET, "events": ["invitee.created", "invitee.canceled"], "organization": "O",
                        "scope": "organization", "signing_key": "k"}  # fmt: skip
    user = plan_calendly_subscribe("https://api.calendly.com", TARGET, organization="O", user="U", signing_key="k")
    assert user.body is not None and (user.body["scope"], user.body["user"]) == ("user", "U")


def test_google_watch_asks_for_a_web_hook_channel_with_our_token_and_expiration() -> None:
    expires = datetime(2026, 12, 14, tzinfo=UTC)
    call = plan_google_watch("https://www.googleapis.com/calendar/v3", TARGET, calendar_id="a b@x",
                             channel_id="c1", channel_token="t", expires_at=expires)  # fmt: skip
    assert call.url == "https://www.googleapis.com/calendar/v3/calendars/a%20b%40x/events/watch"
    assert call.body == {"id": "c1", "type": "web_hook", "address": TARGET, "token": "t",
                         "expiration": str(int(expires.timestamp() * 1000))}  # fmt: skip
    assert len(new_channel_id()) <= 64 and new_channel_id() != new_channel_id()


def test_unsubscribe_removes_what_the_refs_name_under_the_connections_base() -> None:
    acuity = plan_unsubscribe(Source.ACUITY, "https://a/api/v1", {"acuity_webhook_ids": [3, 4]})
    assert [(c.method, c.url) for c in acuity] == [("DELETE", "https://a/api/v1/webhooks/3"),
                                                   ("DELETE", "https://a/api/v1/webhooks/4")]  # fmt: skip
    calendly = plan_unsubscribe(
        Source.CALENDLY, "http://127.0.0.1:1/calendly",
        {"calendly_subscription_uri": "https://api.calendly.com/webhook_subscriptions/WKC4D9"},
    )  # fmt: skip
    assert [(c.method, c.url) for c in calendly] == [("DELETE", "http://127.0.0.1:1/calendly/webhook_subscriptions/WKC4D9")]
    assert plan_unsubscribe(Source.CALENDLY, "https://c", {"calendly_subscription_uri": "https://x/../?a=b"}) == []
    channels = {"google_channels": [{"id": "c", "resource_id": "r"}]}
    google = plan_unsubscribe(Source.GOOGLE_CALENDAR, "https://g", channels)
    assert [(c.url, c.body) for c in google] == [("https://g/channels/stop", {"id": "c", "resourceId": "r"})]


def test_a_subscription_expires_with_its_first_channel() -> None:
    assert channel_expiry([]) is None
    assert channel_expiry([{"expiration_ms": 2_000_000}, {"expiration_ms": 1_000_000}]) == datetime.fromtimestamp(
        1000, UTC
    )
