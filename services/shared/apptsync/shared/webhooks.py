"""Provider notifications (webhooks, push channels): verification and what each one asks us to fetch (pure).

The receiver (apptsync.gateway.webhooks) and the fetcher's targeted syncs both depend on this module;
it does no I/O. Its decisions:

- `verify_acuity`, `verify_calendly`, `verify_google`: is a request the provider's? Every comparison
  of a secret is constant-time (`hmac.compare_digest`).
- `acuity_target`, `calendly_target`, `google_target`: which record a verified notification names
  (the *target* a targeted sync fetches), or None when it asks for nothing (e.g. Acuity's
  `order.completed`, Google's `sync` handshake).
- `merge_targets`: how a burst coalesces into one queued job (the SQL upsert applies the same rule).

A notification URL is `<public base>/webhooks/<source>/<token>`: `token` is 32 random bytes,
url-safe base64, unguessable; only its SHA-256 is stored (`token_digest`), so a database read does
not reveal a working URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from urllib.parse import parse_qs

from apptsync.shared.appointments import Source

# The receiver refuses larger bodies (413) before reading them: a real notification is well under
# 2 KiB (Acuity: four form fields; Calendly: one invitee with its questions and answers).
MAX_NOTIFICATION_BYTES = 64 * 1024
# A Calendly notification signed longer ago (or further ahead, for clock skew) is a replay.
CALENDLY_TOLERANCE_SECONDS = 180.0
# A queued targeted job carries at most this many targets; beyond, the notifications of the burst
# are left to the polling sync (the reconciliation), which the receiver counts as `overflowed`.
MAX_TARGETS_PER_JOB = 500
# Google's one target: "run the incremental sync" (a notification names no event).
GOOGLE_INCREMENTAL_TARGET = "incremental"

# Calendly's API origin: notification payloads name resources under it.
CALENDLY_API_ORIGIN = "https://api.calendly.com"
ACUITY_SIGNATURE_HEADER = "X-Acuity-Signature"
CALENDLY_SIGNATURE_HEADER = "Calendly-Webhook-Signature"
GOOGLE_CHANNEL_ID_HEADER = "X-Goog-Channel-ID"
GOOGLE_CHANNEL_TOKEN_HEADER = "X-Goog-Channel-Token"  # noqa: S105 -- a header name, not a secret
GOOGLE_RESOURCE_STATE_HEADER = "X-Goog-Resource-State"
GOOGLE_MESSAGE_NUMBER_HEADER = "X-Goog-Message-Number"

ACUITY_APPOINTMENT_ACTIONS = frozenset(
    {"appointment.scheduled", "appointment.rescheduled", "appointment.canceled", "appointment.changed"}
)
CALENDLY_INVITEE_EVENTS = frozenset(
    {"invitee.created", "invitee.canceled", "invitee_no_show.created", "invitee_no_show.deleted"}
)
# Events a Calendly subscription asks for (the no-show ones only exist on newer API versions).
CALENDLY_SUBSCRIBED_EVENTS = ("invitee.created", "invitee.canceled")
ACUITY_SUBSCRIBED_EVENTS = tuple(sorted(ACUITY_APPOINTMENT_ACTIONS))


class Verdict(StrEnum):
    """What the receiver does with a request (also the `outcome` label of its metric)."""

    ACCEPTED = "accepted"  # verified; its target was handed on durably (200)
    IGNORED = "ignored"  # verified, but names nothing to fetch (200)
    DUPLICATE = "duplicate"  # verified, already handed on (Google message number not increasing) (200)
    FORGED = "forged"  # signature or channel token wrong or missing (401)
    REPLAYED = "replayed"  # signature right, but signed outside the tolerance (403)
    MALFORMED = "malformed"  # verified, but not a notification we understand (400)
    OVERSIZED = "oversized"  # body over MAX_NOTIFICATION_BYTES (413)
    UNKNOWN_CONNECTION = "unknown_connection"  # no subscription has the path's token (404)


HTTP_STATUS: Mapping[Verdict, int] = {
    Verdict.ACCEPTED: 200,
    Verdict.IGNORED: 200,
    Verdict.DUPLICATE: 200,
    Verdict.FORGED: 401,
    Verdict.REPLAYED: 403,
    Verdict.MALFORMED: 400,
    Verdict.OVERSIZED: 413,
    Verdict.UNKNOWN_CONNECTION: 404,
}


def new_path_token(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A fresh notification-path token (256 bits, url-safe base64 without padding)."""
    return base64.urlsafe_b64encode(random_bytes(32)).rstrip(b"=").decode("ascii")


def token_digest(token: str) -> bytes:
    """What is stored of a path token (and looked up): its SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def notification_url(public_base_url: str, source: Source, token: str) -> str:
    """The URL a provider is told to notify for one connection."""
    return f"{public_base_url.rstrip('/')}/webhooks/{source.value}/{token}"


def body_too_large(content_length: int | None, limit_bytes: int = MAX_NOTIFICATION_BYTES) -> bool:
    """Whether a request announcing `content_length` is refused before its body is read. A request
    without a length is read up to the limit (and refused once it passes it)."""
    return content_length is not None and content_length > limit_bytes


# ---------------------------------------------------------------- signatures


def notifications_verifiable(source: Source, credentials: Mapping[str, str]) -> bool:
    """Whether notifications for a connection with these credentials could be verified. Acuity signs
    with the account's API key, which an OAuth-only connection does not have: such a connection is not
    subscribed (polling only) rather than subscribed to notifications every one of which is refused."""
    if source is Source.ACUITY:
        return bool(credentials.get("api_key", "").strip())
    return True


def acuity_signature(body: bytes, api_key: str) -> str:
    """`X-Acuity-Signature`: base64 of HMAC-SHA256 over the raw body with the account's API key."""
    return base64.b64encode(hmac.new(api_key.encode("utf-8"), body, hashlib.sha256).digest()).decode("ascii")


def verify_acuity(body: bytes, signature: str | None, api_key: str) -> Verdict | None:
    """None when `signature` is Acuity's for `body`; Verdict.FORGED otherwise (missing, wrong, or no
    API key to check it with: an OAuth-only connection cannot verify, so it does not accept)."""
    if not signature or not api_key:
        return Verdict.FORGED
    expected = acuity_signature(body, api_key)
    return None if hmac.compare_digest(expected.encode("ascii"), signature.strip().encode("utf-8")) else Verdict.FORGED


def calendly_signature(body: bytes, signing_key: str, timestamp: int) -> str:
    """`Calendly-Webhook-Signature`: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(signing_key.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_calendly(
    body: bytes,
    header: str | None,
    signing_key: str,
    *,
    now: datetime,
    tolerance_seconds: float = CALENDLY_TOLERANCE_SECONDS,
) -> Verdict | None:
    """None when `header` signs `body` with `signing_key` at a time within `tolerance_seconds` of
    `now`; FORGED when the header is missing, unreadable or signs something else; REPLAYED when the
    signature is right but its `t` is outside the tolerance (a captured request sent again).

    The signature is checked before the time, so a forger learns nothing from the status."""
    if not header or not signing_key:
        return Verdict.FORGED
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(name, []).append(value)
    stamps, given = fields.get("t", []), fields.get("v1", [])
    if len(stamps) != 1 or not stamps[0].isdigit() or not given:
        return Verdict.FORGED
    timestamp = int(stamps[0])
    expected = calendly_signature(body, signing_key, timestamp).split("v1=", 1)[1].encode("ascii")
    if not any(hmac.compare_digest(expected, candidate.encode("utf-8")) for candidate in given):
        return Verdict.FORGED
    if abs(now.timestamp() - timestamp) > tolerance_seconds:
        return Verdict.REPLAYED
    return None


def verify_google(channel_token: str | None, expected_token: str) -> Verdict | None:
    """None when the channel token echoed by Google is the one we gave the channel; FORGED otherwise."""
    if not channel_token or not expected_token:
        return Verdict.FORGED
    same = hmac.compare_digest(channel_token.encode("utf-8"), expected_token.encode("utf-8"))
    return None if same else Verdict.FORGED


# ---------------------------------------------------------------- what a notification asks for


@dataclass(frozen=True, slots=True)
class Target:
    """One thing a targeted sync fetches: an Acuity appointment id, a Calendly invitee URI, or
    GOOGLE_INCREMENTAL_TARGET."""

    value: str


def acuity_target(body: bytes) -> Target | Verdict | None:
    """The appointment an Acuity notification names; None for actions that name none (orders);
    MALFORMED when the form has no numeric `id` or no `action`."""
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return Verdict.MALFORMED
    action = (form.get("action") or [""])[0]
    appointment_id = (form.get("id") or [""])[0]
    if not action:
        return Verdict.MALFORMED
    if action not in ACUITY_APPOINTMENT_ACTIONS:
        return None
    if not appointment_id.isdigit():
        return Verdict.MALFORMED
    return Target(appointment_id)


def calendly_target(payload: object, *, api_base_url: str) -> Target | Verdict | None:
    """The invitee a Calendly notification carries, with its event, as the target's JSON text
    `{"key": "{event uuid}/{invitee uuid}", "invitee": {...}, "event": {...}}`; None for other
    events; MALFORMED when it is not the documented shape (an invitee resource with its `uri` under
    Calendly's API or `api_base_url`, and its `scheduled_event`).

    Why the payload is used rather than fetched again: it is signed with the subscription's own
    signing key (only Calendly and we hold it) and refused outside the replay tolerance, so it is
    Calendly's word; a notification that arrives late or out of order carries an older `updated_at`
    and newer-wins refuses it as stale; and it costs no request of the per-user rate limit. A lost
    notification is caught by the polling sync (the reconciliation)."""
    if not isinstance(payload, dict):
        return Verdict.MALFORMED
    event = payload.get("event")
    if not isinstance(event, str):
        return Verdict.MALFORMED
    if event not in CALENDLY_INVITEE_EVENTS or event.startswith("invitee_no_show"):
        # No-show payloads carry the no-show, not the invitee: the polling sync brings the status.
        return None
    invitee = payload.get("payload")
    if not isinstance(invitee, dict):
        return Verdict.MALFORMED
    uri, scheduled_event = invitee.get("uri"), invitee.get("scheduled_event")
    key = calendly_invitee_key(uri, api_base_url) if isinstance(uri, str) else None
    if key is None or not isinstance(scheduled_event, dict):
        return Verdict.MALFORMED
    record = {key: value for key, value in invitee.items() if key != "scheduled_event"}
    return Target(json.dumps({"key": key, "invitee": record, "event": scheduled_event}, sort_keys=True))


def calendly_target_parts(target: str) -> tuple[str, dict[str, object], dict[str, object]] | None:
    """(key, invitee, event) of a `calendly_target` value; None when it is not one."""
    try:
        document = json.loads(target)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    key, invitee, event = document.get("key"), document.get("invitee"), document.get("event")
    if not isinstance(key, str) or not is_calendly_invitee_key(key):
        return None
    if not isinstance(invitee, dict) or not isinstance(event, dict):
        return None
    return key, invitee, event


def calendly_invitee_key(uri: str, api_base_url: str) -> str | None:
    """`"{event}/{invitee}"` of an invitee URI (`<base>/scheduled_events/{event}/invitees/{invitee}`)
    under Calendly's API or `api_base_url`; None for anything else."""
    for base in (CALENDLY_API_ORIGIN, api_base_url.rstrip("/")):
        prefix = base + "/scheduled_events/"
        if base and uri.startswith(prefix):
            parts = uri[len(prefix) :].split("/")
            if len(parts) == 3 and parts[1] == "invitees" and all(_is_uuid_text(p) for p in (parts[0], parts[2])):
                return f"{parts[0]}/{parts[2]}"
    return None


def is_calendly_invitee_key(target: str) -> bool:
    """Whether `target` is what `calendly_invitee_key` returns."""
    parts = target.split("/")
    return len(parts) == 2 and all(_is_uuid_text(p) for p in parts)


def _is_uuid_text(text: str) -> bool:
    """Calendly's resource ids: letters, digits and dashes (UUIDs or 16-character ids), nothing else."""
    return 0 < len(text) <= 64 and all(c.isascii() and (c.isalnum() or c == "-") for c in text)


def google_target(resource_state: str | None) -> Target | Verdict | None:
    """Google's `sync` handshake names nothing; `exists` / `not_exists` mean "run the incremental sync"."""
    if resource_state == "sync":
        return None
    if resource_state in ("exists", "not_exists"):
        return Target(GOOGLE_INCREMENTAL_TARGET)
    return Verdict.MALFORMED


def google_message_is_new(message_number: int, last_seen: int | None) -> bool:
    """Google numbers a channel's messages increasingly: one not above the last handed on is a duplicate
    (or a replay) and is acknowledged without a second job."""
    return last_seen is None or message_number > last_seen


def parse_message_number(text: str | None) -> int | None:
    """`X-Goog-Message-Number` as an int; None when absent or not a number."""
    if text is None or not text.strip().isdigit():
        return None
    return int(text.strip())


def merge_targets(queued: Sequence[str], arriving: Sequence[str], *, limit: int = MAX_TARGETS_PER_JOB) -> list[str]:
    """The targets of a queued job after more arrive: the union, in arrival order, at most `limit`
    (`apptsync.shared.db.webhooks.enqueue_targets` does the same in SQL; a unit test pins the rule)."""
    merged = list(dict.fromkeys([*queued, *arriving]))
    return merged[:limit]


@dataclass(frozen=True, slots=True)
class Inspection:
    """The receiver's decision about one request once its connection is known.

    `verdict` ACCEPTED means: hand `target` on (with `google_channel` = (channel id, message number)
    for the duplicate check, when Google numbered it). Any other verdict is answered at once
    (HTTP_STATUS) and nothing is written."""

    verdict: Verdict
    target: Target | None = None
    google_channel: tuple[str, int] | None = None


def inspect_notification(
    source: Source,
    *,
    body: bytes,
    headers: Mapping[str, str],
    secrets: Mapping[str, str],
    api_base_url: str,
    now: datetime,
    calendly_tolerance_seconds: float = CALENDLY_TOLERANCE_SECONDS,
) -> Inspection:
    """Verifies a notification for a connection of `source` and names what it asks to fetch.

    `headers` are looked up case-insensitively by the caller's mapping (aiohttp's CIMultiDict);
    `secrets`: `api_key` (Acuity, the connection's), `signing_key` (Calendly, the subscription's),
    `channel_token` (Google, the subscription's). `api_base_url`: the connection's API origin (Calendly
    invitee URIs must be on it). Never raises."""
    if source is Source.ACUITY:
        refused = verify_acuity(body, headers.get(ACUITY_SIGNATURE_HEADER), secrets.get("api_key", ""))
        if refused is not None:
            return Inspection(refused)
        return _inspection(acuity_target(body))
    if source is Source.CALENDLY:
        refused = verify_calendly(
            body,
            headers.get(CALENDLY_SIGNATURE_HEADER),
            secrets.get("signing_key", ""),
            now=now,
            tolerance_seconds=calendly_tolerance_seconds,
        )
        if refused is not None:
            return Inspection(refused)
        try:
            payload = json.loads(body)
        except ValueError:
            return Inspection(Verdict.MALFORMED)
        return _inspection(calendly_target(payload, api_base_url=api_base_url))
    refused = verify_google(headers.get(GOOGLE_CHANNEL_TOKEN_HEADER), secrets.get("channel_token", ""))
    if refused is not None:
        return Inspection(refused)
    inspection = _inspection(google_target(headers.get(GOOGLE_RESOURCE_STATE_HEADER)))
    channel_id = headers.get(GOOGLE_CHANNEL_ID_HEADER, "")
    number = parse_message_number(headers.get(GOOGLE_MESSAGE_NUMBER_HEADER))
    if inspection.verdict is Verdict.ACCEPTED and channel_id and number is not None:
        return Inspection(Verdict.ACCEPTED, inspection.target, (channel_id, number))
    return inspection


def _inspection(found: Target | Verdict | None) -> Inspection:
    if found is None:
        return Inspection(Verdict.IGNORED)
    if isinstance(found, Verdict):
        return Inspection(found)
    return Inspection(Verdict.ACCEPTED, found)
