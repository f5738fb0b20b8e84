"""The simulator's change notifications, pure: signatures (against values computed with `openssl dgst`
over Acuity's documented body shape), the fault knobs (seeded, so a seed replays the same faults),
retries, Acuity's 25-webhook limit, Google channel expiry, and which notifications a mutation sends."""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pydantic
import pytest

from apptsync.simulator import SimulatorState
from apptsync.simulator._mutations import Kind, apply_mutations
from apptsync.simulator._webhook_events import acuity_appointment_changed, apply_mutations_notifying
from apptsync.simulator._webhooks import (
    ACUITY_MAX_WEBHOOKS,
    CALENDLY_APP_SIGNING_KEY,
    DeliveryState,
    Notification,
    TargetError,
    WebhookHub,
    acuity_body,
    acuity_signature,
    calendly_signature,
    check_loopback_target,
    retry_delay_seconds,
    signed_headers,
)

pytestmark = pytest.mark.unit

NOW = datetime(2024, 6, 15, 10, 0, tzinfo=UTC)
TARGET = "http://127.0.0.1:9999/hooks"
# Acuity's documented body (field order and names from its webhook documentation); the signature was
# computed with `printf %s BODY | openssl dgst -sha256 -hmac demo-acuity-key -binary | base64`.
ACUITY_BODY = b"action=appointment.scheduled&id=399682887&calendarID=4038206&appointmentTypeID=14792299"
ACUITY_SIGNATURE = "vjniZBmuK2LH+wuW9wDNHzK/P0ZycOVGh4Va/N9FkJE="
# `printf %s '1718445600.{"event":"invitee.created"}' | openssl dgst -sha256 -hmac sim-signing-key`
CALENDLY_SIGNATURE = "t=1718445600,v1=8ee9e2ff884bc67d6d3b8216a7fa6c148a1138908562f0a6166f5620410d9508"


def _state() -> SimulatorState:
    return SimulatorState.seeded(
        seed=4, accounts=1, appointments_per_account=30, anchor=date(2024, 6, 15), clock=lambda: NOW
    )


def _notification(subscription: str = "1", provider: str = "acuity") -> Notification:
    return Notification(provider, 1001, subscription, "appointment.scheduled", "7", TARGET, ACUITY_BODY, {},
                        b"demo-acuity-key", NOW)  # fmt: skip


def test_acuity_body_and_signature_match_the_documented_scheme() -> None:
    assert acuity_body("appointment.scheduled", 399682887, 4038206, 14792299) == ACUITY_BODY
    assert acuity_signature(ACUITY_BODY, b"demo-acuity-key") == ACUITY_SIGNATURE
    headers = signed_headers(_notification(), forged=False, unix_seconds=0)
    assert headers["X-Acuity-Signature"] == ACUITY_SIGNATURE
    assert signed_headers(_notification(), forged=True, unix_seconds=0)["X-Acuity-Signature"] != ACUITY_SIGNATURE


def test_calendly_signature_signs_timestamp_dot_body() -> None:
    body = b'{"event":"invitee.created"}'
    assert calendly_signature(body, b"sim-signing-key", 1718445600) == CALENDLY_SIGNATURE
    note = Notification("calendly", 1, "S", "invitee.created", "I", TARGET, body, {}, b"sim-signing-key", NOW)
    assert (
        signed_headers(note, forged=False, unix_seconds=1718445600)["Calendly-Webhook-Signature"] == CALENDLY_SIGNATURE
    )
    forged = signed_headers(note, forged=True, unix_seconds=1718445600)["Calendly-Webhook-Signature"]
    assert forged.startswith("t=1718445600,v1=") and forged != CALENDLY_SIGNATURE


def test_only_loopback_targets_are_accepted() -> None:
    assert check_loopback_target("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080/x"
    assert check_loopback_target("https://localhost/x") == "https://localhost/x"
    for bad in ("https://example.com/hook", "ftp://127.0.0.1/x", "http://10.0.0.1/x", "", None):
        with pytest.raises(TargetError):
            check_loopback_target(bad)


def test_acuity_allows_25_webhooks_per_account_and_validates_the_event() -> None:
    hub = WebhookHub()
    for _ in range(ACUITY_MAX_WEBHOOKS):
        hub.add_acuity_webhook(1001, "appointment.changed", TARGET)
    with pytest.raises(ValueError, match="maximum of 25"):
        hub.add_acuity_webhook(1001, "appointment.scheduled", TARGET)
    assert hub.add_acuity_webhook(1002, "appointment.scheduled", TARGET).account == 1002  # per account
    with pytest.raises(ValueError, match="event must be"):
        hub.add_acuity_webhook(1002, "appointment.deleted", TARGET)
    first = hub.acuity_webhooks(1001)[0]
    assert not hub.remove_acuity_webhook(1002, first.id)  # another account's webhook
    assert hub.remove_acuity_webhook(1001, first.id)
    hub.add_acuity_webhook(1001, "appointment.scheduled", TARGET)  # room again


def test_acuity_change_goes_to_its_action_and_to_the_catch_all() -> None:
    state = _state()
    state.webhooks.add_acuity_webhook(1001, "appointment.scheduled", TARGET)
    state.webhooks.add_acuity_webhook(1001, "appointment.changed", TARGET)
    state.webhooks.add_acuity_webhook(1001, "appointment.canceled", TARGET)
    appointment = next(iter(state.acuity.of(1001).values()))
    made = acuity_appointment_changed(state, 1001, appointment.id, "scheduled", at=NOW)
    assert [n.kind for n in made] == ["appointment.scheduled", "appointment.changed"]
    assert made[0].body == acuity_body("appointment.scheduled", appointment.id, appointment.calendar_id,
                                       appointment.type_id)  # fmt: skip
    assert made[0].secret == state.acuity.accounts[1001].api_key.encode()


def test_mutations_map_to_each_providers_events() -> None:
    state = _state()
    hub = state.webhooks
    hub.add_acuity_webhook(1001, "appointment.changed", TARGET)
    account = state.calendly.accounts[1]
    hub.add_calendly_subscription(account=1, user_uri=account.user_uri, organization_uri=account.organization_uri,
                                  fields={"url": TARGET, "events": ["invitee.created", "invitee.canceled"],
                                          "organization": account.organization_uri, "user": account.user_uri,
                                          "scope": "user"}, now=NOW)  # fmt: skip
    for calendar in state.google.accounts[1].calendars:
        hub.add_google_channel(account=1, calendar_id=calendar.id, fields={
            "id": f"ch-{calendar.id}", "type": "web_hook", "address": TARGET}, now=NOW)  # fmt: skip
    accounts = {"acuity": 1001, "calendly": 1, "google": 1}

    applied = apply_mutations_notifying(state, rng=random.Random(11), now=NOW, count=60, accounts=accounts)

    assert applied == apply_mutations(_state(), rng=random.Random(11), now=NOW, count=60, accounts=accounts)
    made = [d.notification for d in hub.log()]
    acuity_records = [n.record for n in made if n.provider == "acuity"]
    assert acuity_records == [m.key for m in applied if m.provider == "acuity" and m.kind != Kind.DELETE]
    expected: list[tuple[str, str]] = []
    for mutation in (m for m in applied if m.provider == "calendly"):
        if mutation.kind == Kind.NEW:
            expected += [("invitee.created", key) for key in mutation.keys]
        elif mutation.kind == Kind.RESCHEDULE:
            expected += [("invitee.canceled", mutation.key), ("invitee.created", mutation.related_keys[0])]
        elif mutation.kind == Kind.CANCEL:
            expected.append(("invitee.canceled", mutation.key))
    assert [(n.kind, n.record) for n in made if n.provider == "calendly"] == expected
    assert any(kind == "invitee.canceled" for kind, _ in expected)
    google = [m for m in applied if m.provider == "google"]
    assert len([n for n in made if n.provider == "google"]) == len(google)  # one per change, a series too
    rescheduled = next(n for n in made if n.kind == "invitee.canceled")
    body: Any = json.loads(rescheduled.body)
    assert body["event"] == "invitee.canceled" and body["payload"]["uri"].endswith(rescheduled.record)
    assert body["payload"]["status"] == "canceled"  # the invitee as that change left it
    assert body["payload"]["scheduled_event"]["uri"] == body["payload"]["event"]
    assert rescheduled.secret == CALENDLY_APP_SIGNING_KEY.encode()  # no signing_key given: the app's


def test_calendly_subscriptions_refuse_duplicates_and_foreign_scopes() -> None:
    state = _state()
    account = state.calendly.accounts[1]
    fields: dict[str, object] = {"url": TARGET, "events": ["invitee.created"], "organization": account.organization_uri,
                                 "user": account.user_uri, "scope": "user", "signing_key": "k"}  # fmt: skip

    def subscribe(changes: dict[str, object]) -> object:
        return state.webhooks.add_calendly_subscription(
            account=1, user_uri=account.user_uri, organization_uri=account.organization_uri,
            fields={**fields, **changes}, now=NOW,
        )  # fmt: skip

    subscribe({})
    with pytest.raises(FileExistsError):
        subscribe({})
    with pytest.raises(PermissionError):
        subscribe({"url": TARGET + "2", "user": "someone"})
    with pytest.raises(ValueError, match="events"):
        subscribe({"url": TARGET + "3", "events": ["x"]})
    with pytest.raises(TargetError):
        subscribe({"url": "https://example.com/hook"})


def test_google_channels_expire_on_the_simulator_clock() -> None:
    hub = WebhookHub()
    hub.set_knobs({"google_channel_ttl_seconds": 60})
    capped = hub.add_google_channel(account=1, calendar_id="c", now=NOW, fields={
        "id": "a", "type": "web_hook", "address": TARGET,
        "expiration": str(int((NOW + timedelta(days=1)).timestamp() * 1000))})  # fmt: skip
    assert capped.expiration == NOW + timedelta(seconds=60)
    short = hub.add_google_channel(account=1, calendar_id="c", now=NOW, fields={
        "id": "b", "type": "web_hook", "address": TARGET, "token": "t",
        "expiration": str(int((NOW + timedelta(seconds=10)).timestamp() * 1000))})  # fmt: skip
    assert short.to_json()["expiration"] == str(int((NOW + timedelta(seconds=10)).timestamp() * 1000))
    assert [n.subscription for n in hub.google_changed(account=1, calendar_id="c", now=NOW)] == ["a", "b"]
    later = hub.google_changed(account=1, calendar_id="c", now=NOW + timedelta(seconds=30))
    assert [n.subscription for n in later] == ["a"]  # "b" expired and receives nothing
    assert later[0].headers["X-Goog-Message-Number"] == "2" and later[0].headers["X-Goog-Resource-State"] == "exists"
    assert hub.google_changed(account=1, calendar_id="c", now=NOW + timedelta(seconds=61)) == []
    with pytest.raises(ValueError, match="not unique"):
        hub.add_google_channel(account=1, calendar_id="c", now=NOW, fields={"id": "a", "type": "web_hook",
                                                                           "address": TARGET})  # fmt: skip
    assert not hub.stop_google_channel(1, "a", "wrong-resource")
    assert hub.stop_google_channel(1, "a", capped.resource_id)
    assert hub.expire_google_channels(NOW) == 1  # "b"


def _plan(seed: int, knobs: dict[str, object], count: int = 200) -> list[tuple[int, str, bool, float, int | None]]:
    hub = WebhookHub()
    hub.set_knobs({**knobs, "seed": seed})
    made = hub.enqueue([_notification(str(i % 3)) for i in range(count)], monotonic=0.0, wall=NOW)
    return [(d.id, d.state.value, d.forged, round(d.delay_seconds, 6), d.duplicate_of) for d in made]


def test_fault_knobs_are_deterministic_from_the_seed() -> None:
    knobs: dict[str, object] = {"drop_probability": 0.2, "duplicate_probability": 0.2, "forge_probability": 0.1,
                                "delay_seconds_max": 3.0}  # fmt: skip
    first, again, other = _plan(7, knobs), _plan(7, knobs), _plan(8, knobs)
    assert first == again and first != other
    dropped = sum(1 for d in first if d[1] == "dropped")
    duplicates = sum(1 for d in first if d[4] is not None)
    forged = sum(1 for d in first if d[2])
    assert 20 <= dropped <= 60 and 20 <= duplicates <= 60 and 5 <= forged <= 40
    assert all(0 <= d[3] <= 3.0 for d in first) and len({d[3] for d in first}) > 100


def test_no_faults_by_default_and_everything_dropped_at_probability_one() -> None:
    assert all(d[1] == "pending" and not d[2] and d[3] == 0 and d[4] is None for d in _plan(1, {}))
    assert {d[1] for d in _plan(1, {"drop_probability": 1.0})} == {"dropped"}
    with pytest.raises(pydantic.ValidationError):
        WebhookHub().set_knobs({"drop_probability": 2})
    with pytest.raises(pydantic.ValidationError):
        WebhookHub().set_knobs({"no_such_knob": 1})


def test_reorder_sends_each_pair_of_a_subscription_swapped() -> None:
    hub = WebhookHub()
    hub.set_knobs({"reorder": True, "reorder_hold_seconds": 5})
    made = hub.enqueue([_notification("s") for _ in range(5)], monotonic=0.0, wall=NOW)
    assert [d.id for d in hub.take_due(0.0)] == [made[1].id, made[0].id, made[3].id, made[2].id]
    assert hub.take_due(4.9) == [] and hub.next_due() == 5.0
    assert [d.id for d in hub.take_due(5.0)] == [made[4].id]  # the last one, released after its hold


def test_duplicates_share_a_google_message_number_and_retries_back_off() -> None:
    hub = WebhookHub()
    hub.set_knobs({"duplicate_probability": 1.0, "retry_backoff_seconds": 0.5, "max_attempts": 3})
    channel = hub.add_google_channel(account=1, calendar_id="c", now=NOW,
                                     fields={"id": "a", "type": "web_hook", "address": TARGET})  # fmt: skip
    original, copy = hub.enqueue([hub.google_notification(channel, "sync", NOW)], monotonic=0.0, wall=NOW)
    assert copy.duplicate_of == original.id and copy.message_number == original.message_number == 1
    due = hub.take_due(0.0)
    assert due == [original, copy]
    hub.attempted(original, status=500, started=NOW, ended=NOW, monotonic=0.0)
    hub.attempted(copy, status=204, started=NOW, ended=NOW, monotonic=0.0)
    assert copy.state is DeliveryState.DELIVERED and original.state is DeliveryState.PENDING
    assert hub.take_due(0.4) == [] and hub.take_due(0.5) == [original]
    hub.attempted(original, status=0, started=NOW, ended=NOW, monotonic=0.5)
    assert hub.take_due(1.4) == [] and hub.take_due(1.5) == [original]
    hub.attempted(original, status=503, started=NOW, ended=NOW, monotonic=1.5)
    assert (original.state, original.attempts, hub.next_due()) == (DeliveryState.FAILED, 3, None)
    assert hub.counts_snapshot() == {"notifications": 2, "duplicated": 1, "attempts": 4, "retries": 2,
                                     "delivered": 1, "failed": 1, "pending": 0}  # fmt: skip
    assert [retry_delay_seconds(hub.knobs, n, 500) for n in (1, 2, 3)] == [0.5, 1.0, None]
    assert retry_delay_seconds(hub.knobs, 1, 200) is None


def test_calendly_410_deletes_the_subscription_without_retry() -> None:
    state = _state()
    account = state.calendly.accounts[1]
    subscription = state.webhooks.add_calendly_subscription(
        account=1, user_uri=account.user_uri, organization_uri=account.organization_uri, now=NOW,
        fields={"url": TARGET, "events": ["invitee.canceled"], "organization": account.organization_uri,
                "scope": "organization"},
    )  # fmt: skip
    note = Notification("calendly", 1, subscription.uuid, "invitee.canceled", "I", TARGET, b"{}", {}, b"k", NOW)
    [delivery] = state.webhooks.enqueue([note], monotonic=0.0, wall=NOW)
    state.webhooks.take_due(0.0)
    state.webhooks.attempted(delivery, status=410, started=NOW, ended=NOW, monotonic=0.0)
    assert delivery.state is DeliveryState.GONE and subscription.uuid not in state.webhooks.calendly


def test_forged_google_notification_carries_a_wrong_token() -> None:
    hub = WebhookHub()
    fields: dict[str, object] = {"id": "a", "type": "web_hook", "address": TARGET, "token": "tok"}
    channel = hub.add_google_channel(account=1, calendar_id="c", now=NOW, fields=fields)
    note = hub.google_notification(channel, "exists", NOW)
    assert signed_headers(note, forged=False, unix_seconds=0)["X-Goog-Channel-Token"] == "tok"
    assert signed_headers(note, forged=True, unix_seconds=0)["X-Goog-Channel-Token"] != "tok"


def test_delivery_log_entry_names_what_a_benchmark_needs() -> None:
    hub = WebhookHub()
    [delivery] = hub.enqueue([_notification()], monotonic=0.0, wall=NOW + timedelta(seconds=1))
    hub.take_due(0.0)
    hub.attempted(delivery, status=200, started=NOW + timedelta(seconds=2), ended=NOW + timedelta(seconds=3),
                  monotonic=0.0)  # fmt: skip
    entry = delivery.to_json()
    assert {k: entry[k] for k in ("provider", "account", "subscription", "kind", "status", "attempts", "state")} == {
        "provider": "acuity", "account": 1001, "subscription": "1", "kind": "appointment.scheduled", "status": 200,
        "attempts": 1, "state": "delivered"}  # fmt: skip
    assert entry["mutation_at"] == NOW.isoformat()
    assert entry["sent_at"] == (NOW + timedelta(seconds=2)).isoformat()
    hub.clear_log()
    assert hub.log() == [] and hub.counts_snapshot() == {"pending": 0}
