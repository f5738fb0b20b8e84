"""Provider notifications: signatures, replay, targets and the coalescing rule (pure)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest

from apptsync.shared.appointments import Source
from apptsync.shared.webhooks import (
    GOOGLE_INCREMENTAL_TARGET,
    HTTP_STATUS,
    Target,
    Verdict,
    acuity_signature,
    acuity_target,
    body_too_large,
    calendly_signature,
    calendly_target,
    calendly_target_parts,
    google_message_is_new,
    inspect_notification,
    merge_targets,
    new_path_token,
    notification_url,
    notifications_verifiable,
    token_digest,
    verify_acuity,
    verify_calendly,
    verify_google,
)

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
API = "https://api.calendly.com"
# Acuity's documented webhook body: form-encoded action, id, calendarID, appointmentTypeID.
ACUITY_BODY = b"action=appointment.rescheduled&id=102370318&calendarID=2063291&appointmentTypeID=7512210"
API_KEY = "acuity-api-key-canary"
SIGNING_KEY = "calendly-signing-key-canary"


def calendly_body(event: str = "invitee.created") -> bytes:
    """Calendly's documented webhook payload: the event name and the invitee resource."""
    invitee: dict[str, object] = {
        "uri": f"{API}/scheduled_events/GBGBDCAADAEDCRZ2/invitees/7c1dc6ac-2d8e-4c08-ae4f-8a1c0d5f30b1",
        "email": "test@example.com",
        "name": "John Doe",
        "status": "active" if event == "invitee.created" else "canceled",
        "event": f"{API}/scheduled_events/GBGBDCAADAEDCRZ2",
        "timezone": "America/New_York",
        "rescheduled": False,
        "old_invitee": None,
        "new_invitee": None,
        "questions_and_answers": [],
        "created_at": "2026-12-07T02:59:18.327602Z",
        "updated_at": "2026-12-07T02:59:18.341657Z",
        "scheduled_event": {
            "uri": f"{API}/scheduled_events/GBGBDCAADAEDCRZ2",
            "name": "15 Minute Meeting",
            "status": "active",
            "start_time": "2026-12-09T15:00:00.000000Z",
            "end_time": "2026-12-09T15:15:00.000000Z",
            "event_type": f"{API}/event_types/GBGBDCAADAEDCRZ2",
            "location": {"type": "physical", "location": "Calendly Office"},
            "invitees_counter": {"total": 1, "active": 1, "limit": 1},
            "created_at": "2026-12-07T02:59:18.327602Z",
            "updated_at": "2026-12-07T02:59:18.341657Z",
            "event_memberships": [{"user": f"{API}/users/AAAAAAAAAAAAAAAA"}],
            "event_guests": [],
        },
    }
    document = {
        "created_at": "2026-12-07T02:59:19.000000Z",
        "created_by": f"{API}/users/AAAAAAAAAAAAAAAA",
        "event": event,
        "payload": invitee,
    }
    return json.dumps(document).encode()


def test_acuity_signature_is_base64_hmac_sha256_of_the_raw_body() -> None:
    expected = base64.b64encode(hmac.new(API_KEY.encode(), ACUITY_BODY, hashlib.sha256).digest()).decode()
    assert acuity_signature(ACUITY_BODY, API_KEY) == expected
    assert verify_acuity(ACUITY_BODY, expected, API_KEY) is None


@pytest.mark.parametrize(
    "signature",
    [None, "", acuity_signature(ACUITY_BODY, "another-key"), acuity_signature(ACUITY_BODY + b"&x=1", API_KEY)],
)
def test_acuity_refuses_a_missing_or_wrong_signature(signature: str | None) -> None:
    assert verify_acuity(ACUITY_BODY, signature, API_KEY) is Verdict.FORGED


def test_acuity_without_an_api_key_cannot_verify_so_refuses() -> None:
    assert verify_acuity(ACUITY_BODY, acuity_signature(ACUITY_BODY, ""), "") is Verdict.FORGED


def test_calendly_signature_signs_timestamp_dot_body() -> None:
    body = calendly_body()
    t = int(NOW.timestamp())
    digest = hmac.new(SIGNING_KEY.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert calendly_signature(body, SIGNING_KEY, t) == f"t={t},v1={digest}"
    assert verify_calendly(body, f"t={t},v1={digest}", SIGNING_KEY, now=NOW) is None


def test_calendly_replay_outside_the_tolerance_is_refused_as_replayed() -> None:
    body = calendly_body()
    old = int(NOW.timestamp()) - 181
    assert verify_calendly(body, calendly_signature(body, SIGNING_KEY, old), SIGNING_KEY, now=NOW) is Verdict.REPLAYED
    recent = int(NOW.timestamp()) - 179
    assert verify_calendly(body, calendly_signature(body, SIGNING_KEY, recent), SIGNING_KEY, now=NOW) is None


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "v1=abc",
        "t=notanumber,v1=abc",
        "t=1,t=2,v1=abc",
        calendly_signature(b"{}", SIGNING_KEY, 1_796_612_400),  # another body
        calendly_signature(calendly_body(), "other-key", 1_796_612_400),
    ],
)
def test_calendly_forged_headers_are_refused_as_forged(header: str | None) -> None:
    assert verify_calendly(calendly_body(), header, SIGNING_KEY, now=NOW) is Verdict.FORGED


def test_a_forged_old_calendly_signature_is_forged_not_replayed() -> None:
    """The signature is checked before the time: a forger learns nothing from the status."""
    old = int(NOW.timestamp()) - 3600
    assert verify_calendly(calendly_body(), f"t={old},v1={'0' * 64}", SIGNING_KEY, now=NOW) is Verdict.FORGED


def test_google_channel_token_must_match() -> None:
    assert verify_google("tok", "tok") is None
    assert verify_google("tok2", "tok") is Verdict.FORGED
    assert verify_google(None, "tok") is Verdict.FORGED
    assert verify_google("", "") is Verdict.FORGED


def test_acuity_targets_appointment_actions_and_ignores_orders() -> None:
    assert acuity_target(ACUITY_BODY) == Target("102370318")
    assert acuity_target(b"action=order.completed&id=55") is None
    assert acuity_target(b"id=5") is Verdict.MALFORMED
    assert acuity_target(b"action=appointment.scheduled&id=abc") is Verdict.MALFORMED
    assert acuity_target(b"\xff\xfe") is Verdict.MALFORMED


def test_calendly_target_carries_the_verified_invitee_and_its_event() -> None:
    payload = json.loads(calendly_body("invitee.canceled"))
    target = calendly_target(payload, api_base_url=API)
    assert isinstance(target, Target)
    parts = calendly_target_parts(target.value)
    assert parts is not None
    key, invitee, event = parts
    assert key == "GBGBDCAADAEDCRZ2/7c1dc6ac-2d8e-4c08-ae4f-8a1c0d5f30b1"
    assert invitee["status"] == "canceled" and "scheduled_event" not in invitee
    assert event["start_time"] == "2026-12-09T15:00:00.000000Z"


def test_calendly_target_accepts_the_connections_own_api_base() -> None:
    payload = json.loads(calendly_body())
    uri = "http://127.0.0.1:8710/calendly/scheduled_events/E1/invitees/I1"
    own = {**payload, "payload": {**payload["payload"], "uri": uri}}
    target = calendly_target(own, api_base_url="http://127.0.0.1:8710/calendly")
    assert isinstance(target, Target)
    assert calendly_target_parts(target.value) is not None


@pytest.mark.parametrize(
    "uri",
    [
        "https://evil.example/scheduled_events/a/invitees/b",
        f"{API}/scheduled_events/E1/invitees/I1?x=/y",
        f"{API}/scheduled_events/E1/other/I1",
        f"{API}/scheduled_events/E1",
    ],
)
def test_calendly_target_refuses_other_uris(uri: str) -> None:
    payload = json.loads(calendly_body())
    assert calendly_target({**payload, "payload": {**payload["payload"], "uri": uri}}, api_base_url=API) is (
        Verdict.MALFORMED
    )


def test_calendly_other_events_and_shapes() -> None:
    assert calendly_target({"event": "routing_form_submission.created", "payload": {}}, api_base_url=API) is None
    assert calendly_target({"event": "invitee_no_show.created", "payload": {}}, api_base_url=API) is None
    assert calendly_target([], api_base_url=API) is Verdict.MALFORMED
    payload = json.loads(calendly_body())
    no_event = {**payload, "payload": {k: v for k, v in payload["payload"].items() if k != "scheduled_event"}}
    assert calendly_target(no_event, api_base_url=API) is Verdict.MALFORMED
    assert calendly_target_parts("not json") is None
    assert calendly_target_parts('{"key": "a/b?c", "invitee": {}, "event": {}}') is None


def test_google_sync_handshake_names_nothing_and_changes_ask_for_the_incremental_sync() -> None:
    headers = {
        "X-Goog-Channel-ID": "chan-1",
        "X-Goog-Channel-Token": "tok",
        "X-Goog-Resource-State": "sync",
        "X-Goog-Message-Number": "1",
    }
    inspect = inspect_notification(Source.GOOGLE_CALENDAR, body=b"", headers=headers,
                                   secrets={"channel_token": "tok"}, api_base_url="", now=NOW)
    assert inspect.verdict is Verdict.IGNORED
    changed = {**headers, "X-Goog-Resource-State": "exists", "X-Goog-Message-Number": "2"}
    inspect = inspect_notification(Source.GOOGLE_CALENDAR, body=b"", headers=changed,
                                   secrets={"channel_token": "tok"}, api_base_url="", now=NOW)
    assert inspect.verdict is Verdict.ACCEPTED
    assert inspect.target == Target(GOOGLE_INCREMENTAL_TARGET)
    assert inspect.google_channel == ("chan-1", 2)


def test_google_message_numbers_must_increase() -> None:
    assert google_message_is_new(5, None)
    assert google_message_is_new(6, 5)
    assert not google_message_is_new(5, 5)
    assert not google_message_is_new(4, 5)


def test_inspect_acuity_verifies_with_the_connections_api_key() -> None:
    headers = {"X-Acuity-Signature": acuity_signature(ACUITY_BODY, API_KEY)}
    ok = inspect_notification(Source.ACUITY, body=ACUITY_BODY, headers=headers, secrets={"api_key": API_KEY},
                              api_base_url="", now=NOW)
    assert (ok.verdict, ok.target) == (Verdict.ACCEPTED, Target("102370318"))
    forged = inspect_notification(Source.ACUITY, body=ACUITY_BODY, headers={}, secrets={"api_key": API_KEY},
                                  api_base_url="", now=NOW)
    assert forged.verdict is Verdict.FORGED


def test_inspect_calendly_refuses_an_unparseable_signed_body_as_malformed() -> None:
    t = int(NOW.timestamp())
    headers = {"Calendly-Webhook-Signature": calendly_signature(b"not json", SIGNING_KEY, t)}
    result = inspect_notification(Source.CALENDLY, body=b"not json", headers=headers,
                                  secrets={"signing_key": SIGNING_KEY}, api_base_url=API, now=NOW)
    assert result.verdict is Verdict.MALFORMED


def test_statuses() -> None:
    assert HTTP_STATUS[Verdict.FORGED] == 401
    assert HTTP_STATUS[Verdict.REPLAYED] == 403
    assert HTTP_STATUS[Verdict.OVERSIZED] == 413
    assert HTTP_STATUS[Verdict.UNKNOWN_CONNECTION] == 404
    assert HTTP_STATUS[Verdict.DUPLICATE] == 200


def test_body_limit_is_decided_from_the_announced_length() -> None:
    assert body_too_large(64 * 1024 + 1)
    assert not body_too_large(64 * 1024)
    assert not body_too_large(None)


def test_path_tokens_are_random_256_bit_and_stored_as_sha256() -> None:
    token = new_path_token(lambda n: bytes(range(n)))
    assert len(token) == 43
    assert new_path_token() != new_path_token()
    assert token_digest(token) == hashlib.sha256(token.encode()).digest()
    assert notification_url("https://hooks.example.com/", Source.ACUITY, token) == (
        f"https://hooks.example.com/webhooks/acuity/{token}"
    )


def test_merge_targets_is_an_ordered_set_with_a_cap() -> None:
    assert merge_targets(["1", "2"], ["2", "3"]) == ["1", "2", "3"]
    assert merge_targets([], ["7"] * 100) == ["7"]
    assert merge_targets(["1", "2"], ["3"], limit=2) == ["1", "2"]


def test_acuity_notifications_are_verifiable_only_with_an_api_key() -> None:
    """Acuity signs with the account's API key: an OAuth-only connection cannot be verified, so it is
    polled instead of subscribed to notifications that would all be refused."""
    assert notifications_verifiable(Source.ACUITY, {"user_id": "1001", "api_key": "k"})
    assert not notifications_verifiable(Source.ACUITY, {"access_token": "t"})
    assert not notifications_verifiable(Source.ACUITY, {"user_id": "1001", "api_key": "  "})
    assert notifications_verifiable(Source.CALENDLY, {"access_token": "t"})
    assert notifications_verifiable(Source.GOOGLE_CALENDAR, {"access_token": "t"})
