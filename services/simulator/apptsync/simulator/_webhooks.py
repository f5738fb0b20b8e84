"""Change notifications of the simulated providers (pure: no I/O; time and randomness are arguments).

What lives here: the subscriptions each provider keeps (Acuity webhooks, Calendly webhook
subscriptions, Google `events.watch` channels), the notifications a change produces for them, how
each is signed, the fault knobs that drop, duplicate, delay, reorder or forge them (decided by a
seeded `random.Random`, so a seed replays the same faults), the retry rule, and the delivery log.
The aiohttp sides are _webhooks_api (routes) and _webhook_delivery (the sending task).

Signatures (the real providers' schemes):
- Acuity: `X-Acuity-Signature` = base64(HMAC-SHA256(raw body, the account's API key)).
- Calendly: `Calendly-Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256("<t>.<raw body>",
  signing key)>`, `t` being the moment of the attempt.
- Google: no signature; the channel's `token` comes back in `X-Goog-Channel-Token`.
A forged delivery is signed with a wrong key (Google: carries a wrong token)."""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

ACUITY = "acuity"
CALENDLY = "calendly"
GOOGLE = "google"

ACUITY_EVENTS = (
    "appointment.scheduled",
    "appointment.rescheduled",
    "appointment.canceled",
    "appointment.changed",
    "order.completed",
)
# At most this many webhooks per Acuity account (Acuity answers 400 beyond).
ACUITY_MAX_WEBHOOKS = 25
CALENDLY_EVENTS = ("invitee.created", "invitee.canceled", "invitee_no_show.created", "invitee_no_show.deleted")
# The key the simulated Calendly OAuth application signs with when a subscription names none (Calendly
# generates one per OAuth application; a personal-access-token subscription may set its own).
CALENDLY_APP_SIGNING_KEY = "simulator-calendly-app-signing-key"
GOOGLE_CHANNEL_ID_MAX_CHARS = 64
_FORGED_KEY = b"not-the-key-this-subscription-signs-with"
_FORGED_TOKEN = "forged-channel-token"  # noqa: S105 -- a deliberately wrong token, not a secret
# How many finished deliveries the log keeps (the oldest go first).
DELIVERY_LOG_LIMIT = 100_000


class TargetError(ValueError):
    """A subscription target the simulator refuses (not an http(s) URL on a loopback host)."""


def check_loopback_target(url: object) -> str:
    """`url` when it is an http or https URL whose host is 127.0.0.1, ::1 or localhost (any port:
    the simulator's dev exception to Acuity's 443/80 rule and Google's https rule; it never sends
    anywhere else). Raises TargetError."""
    if not isinstance(url, str) or not url:
        raise TargetError("the target URL is required")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in ("127.0.0.1", "::1", "localhost"):
        raise TargetError("the simulator delivers only to http(s)://127.0.0.1 (or ::1, localhost) targets")
    return url


# --------------------------------------------------------------------------- knobs


class WebhookFaultKnobs(BaseModel):
    """`PUT /_admin/webhooks/faults` (fields merge). Every probability is drawn per notification from
    `random.Random(seed)`, re-seeded whenever the knobs are set, so a seed and a sequence of changes
    give the same faults every time."""

    model_config = ConfigDict(extra="forbid")

    drop_probability: float = Field(0.0, ge=0, le=1, description="A notification is never sent (logged as dropped).")
    duplicate_probability: float = Field(0.0, ge=0, le=1, description="A notification is sent twice.")
    delay_seconds_max: float = Field(
        0.0, ge=0, le=600, description="Each send waits uniform(0, max) seconds before its first attempt."
    )
    reorder: bool = Field(
        False,
        description="Each notification is held until the next one for the same subscription is queued (or "
        "`reorder_hold_seconds` pass) and then sent after it: pairs arrive swapped.",
    )
    reorder_hold_seconds: float = Field(1.0, gt=0, le=60, description="Longest hold of a reordered notification.")
    forge_probability: float = Field(
        0.0, ge=0, le=1, description="A notification is signed with a wrong key (Google: a wrong channel token)."
    )
    seed: int = Field(0, description="Seed of the fault draws.")
    max_attempts: int = Field(3, ge=1, le=10, description="Attempts per delivery (non-2xx or no answer: retry).")
    retry_backoff_seconds: float = Field(
        0.5, ge=0, le=60, description="Wait before the 2nd attempt; doubles for each further one."
    )
    timeout_seconds: float = Field(10.0, gt=0, le=60, description="How long one attempt waits for an answer.")
    google_channel_ttl_seconds: int = Field(
        3600,
        ge=1,
        le=30 * 86400,
        description="Google: the longest a channel lives (simulator clock) and its default; short for renewal tests.",
    )


# --------------------------------------------------------------------------- subscriptions


@dataclass(frozen=True, slots=True)
class AcuityWebhook:
    id: int
    account: int
    event: str
    target: str

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "event": self.event, "target": self.target, "status": "active"}


@dataclass(frozen=True, slots=True)
class CalendlySubscription:
    uuid: str
    account: int
    callback_url: str
    events: tuple[str, ...]
    scope: str  # user | organization
    organization: str
    user: str | None
    creator: str  # the user who made it (Calendly's `creator`, and `created_by` of its deliveries)
    signing_key: str
    created_at: datetime

    @property
    def uri(self) -> str:
        return f"https://api.calendly.com/webhook_subscriptions/{self.uuid}"

    def to_json(self, render_time: Callable[[datetime], str]) -> dict[str, object]:
        """Calendly's WebhookSubscription resource (the signing key is write-only: never shown)."""
        return {
            "uri": self.uri,
            "callback_url": self.callback_url,
            "created_at": render_time(self.created_at),
            "updated_at": render_time(self.created_at),
            "retry_started_at": None,
            "state": "active",
            "events": list(self.events),
            "scope": self.scope,
            "organization": self.organization,
            "user": self.user,
            "group": None,
            "creator": self.creator,
        }


@dataclass(frozen=True, slots=True)
class GoogleChannel:
    id: str
    account: int
    calendar_id: str
    resource_id: str
    address: str
    token: str | None
    expiration: datetime

    @property
    def resource_uri(self) -> str:
        return f"https://www.googleapis.com/calendar/v3/calendars/{self.calendar_id}/events?alt=json"

    def expiration_ms(self) -> int:
        return int(self.expiration.timestamp() * 1000)

    def to_json(self) -> dict[str, object]:
        """The Channel resource `events.watch` answers (Google writes the int64 `expiration` as a string)."""
        body: dict[str, object] = {
            "kind": "api#channel",
            "id": self.id,
            "resourceId": self.resource_id,
            "resourceUri": self.resource_uri,
            "expiration": str(self.expiration_ms()),
        }
        if self.token is not None:
            body["token"] = self.token
        return body


def google_resource_id(account: int, calendar_id: str) -> str:
    """An opaque id of the watched resource (a calendar's events): stable across channels."""
    return hashlib.sha256(f"google-resource:{account}:{calendar_id}".encode()).hexdigest()[:27]


# --------------------------------------------------------------------------- notifications


@dataclass(frozen=True, slots=True)
class Notification:
    """One request a provider sends for one change to one subscription, before faults and signing.

    `secret` signs it (Acuity: the API key; Calendly: the signing key; Google: none, `headers` carry
    the channel token). `record` names what changed (Acuity appointment id, Calendly invitee uuid,
    Google calendar id); `mutation_at` is the simulator-clock moment of the change."""

    provider: str
    account: int
    subscription: str
    kind: str
    record: str
    url: str
    body: bytes
    headers: Mapping[str, str]
    secret: bytes | None
    mutation_at: datetime


def acuity_body(action: str, appointment_id: int, calendar_id: int, appointment_type_id: int) -> bytes:
    """Acuity's form-encoded body, fields in Acuity's order."""
    return (
        f"action={action}&id={appointment_id}&calendarID={calendar_id}&appointmentTypeID={appointment_type_id}".encode()
    )


def acuity_signature(body: bytes, api_key: bytes) -> str:
    return base64.b64encode(hmac.new(api_key, body, hashlib.sha256).digest()).decode()


def calendly_signature(body: bytes, signing_key: bytes, unix_seconds: int) -> str:
    digest = hmac.new(signing_key, f"{unix_seconds}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={unix_seconds},v1={digest}"


def signed_headers(notification: Notification, *, forged: bool, unix_seconds: int) -> dict[str, str]:
    """The headers of one attempt: the notification's own plus its signature (or forgery)."""
    headers = dict(notification.headers)
    key = _FORGED_KEY if forged else (notification.secret or b"")
    if notification.provider == ACUITY:
        headers["X-Acuity-Signature"] = acuity_signature(notification.body, key)
    elif notification.provider == CALENDLY:
        headers["Calendly-Webhook-Signature"] = calendly_signature(notification.body, key, unix_seconds)
    elif forged:
        headers["X-Goog-Channel-Token"] = _FORGED_TOKEN
    return headers


# --------------------------------------------------------------------------- fault plan and log


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt answered non-2xx or nothing
    DROPPED = "dropped"  # the fault knob: never sent
    GONE = "gone"  # Calendly: the target answered 410, the subscription was deleted


@dataclass
class Delivery:
    """One delivery (a duplicate is a delivery of its own with `duplicate_of` set) and its log entry."""

    id: int
    notification: Notification
    forged: bool
    delay_seconds: float
    duplicate_of: int | None = None
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    status: int | None = None  # last answer's status; 0: no answer (connection error, timeout)
    enqueued_at: datetime | None = None
    sent_at: datetime | None = None  # first attempt
    answered_at: datetime | None = None  # last attempt's end
    message_number: int | None = None

    def to_json(self) -> dict[str, object]:
        n = self.notification
        return {
            "id": self.id,
            "provider": n.provider,
            "account": n.account,
            "subscription": n.subscription,
            "kind": n.kind,
            "record": n.record,
            "target": n.url,
            "state": self.state.value,
            "status": self.status,
            "attempts": self.attempts,
            "forged": self.forged,
            "duplicate_of": self.duplicate_of,
            "delay_seconds": round(self.delay_seconds, 3),
            "message_number": self.message_number,
            "mutation_at": n.mutation_at.isoformat(),
            "enqueued_at": None if self.enqueued_at is None else self.enqueued_at.isoformat(),
            "sent_at": None if self.sent_at is None else self.sent_at.isoformat(),
            "answered_at": None if self.answered_at is None else self.answered_at.isoformat(),
        }


def plan_faults(
    notification: Notification, knobs: WebhookFaultKnobs, rng: random.Random
) -> tuple[bool, bool, float, float, bool]:
    """(dropped, duplicated, delay, duplicate's delay, forged) for one notification. Always draws the
    same five numbers, so the faults of later notifications do not depend on earlier knob outcomes."""
    del notification
    drop, duplicate, delay, duplicate_delay, forge = (rng.random() for _ in range(5))
    return (
        drop < knobs.drop_probability,
        duplicate < knobs.duplicate_probability,
        delay * knobs.delay_seconds_max,
        duplicate_delay * knobs.delay_seconds_max,
        forge < knobs.forge_probability,
    )


def retry_delay_seconds(knobs: WebhookFaultKnobs, attempts_made: int, status: int) -> float | None:
    """Seconds until the next attempt after `attempts_made` attempts whose last answered `status`
    (0: none), or None when the delivery is finished (2xx, Calendly's 410, or attempts used up)."""
    if 200 <= status < 300 or status == 410 or attempts_made >= knobs.max_attempts:
        return None
    return float(knobs.retry_backoff_seconds * 2.0 ** (attempts_made - 1))


@dataclass
class _Held:
    delivery: Delivery
    since: float


@dataclass
class WebhookHub:
    """Subscriptions of every provider, the queue of attempts due and the delivery log.

    Time: `now` (aware, the simulator clock) stamps subscriptions and expires Google channels;
    `monotonic` seconds order the queue; `wall` (aware, real time) stamps the log."""

    knobs: WebhookFaultKnobs = field(default_factory=WebhookFaultKnobs)
    acuity: dict[int, AcuityWebhook] = field(default_factory=dict)
    calendly: dict[str, CalendlySubscription] = field(default_factory=dict)
    google: dict[str, GoogleChannel] = field(default_factory=dict)
    google_stopped: set[str] = field(default_factory=set)
    message_numbers: dict[str, int] = field(default_factory=dict)
    deliveries: dict[int, Delivery] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    _log_order: deque[int] = field(default_factory=deque)
    _queue: list[tuple[float, int, int]] = field(default_factory=list)  # (due, tie-break, delivery id)
    _held: dict[str, _Held] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _sequence: itertools.count[int] = field(default_factory=itertools.count)
    _acuity_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _calendly_numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _rng: random.Random = field(default_factory=lambda: random.Random(0))  # noqa: S311 -- seeded test faults
    # Called after notifications are queued: the sender task sets it to wake itself.
    wake: Callable[[], None] = field(default=lambda: None)

    # -- knobs ---------------------------------------------------------------------------------

    def set_knobs(self, changes: Mapping[str, object]) -> WebhookFaultKnobs:
        """Merges `changes` and re-seeds the fault draws. Raises pydantic.ValidationError."""
        self.knobs = WebhookFaultKnobs.model_validate({**self.knobs.model_dump(), **changes})
        self._rng = random.Random(self.knobs.seed)  # noqa: S311 -- seeded test faults, not a secret
        return self.knobs

    def reset_knobs(self) -> WebhookFaultKnobs:
        self.knobs = WebhookFaultKnobs()
        self._rng = random.Random(0)  # noqa: S311 -- seeded test faults, not a secret
        return self.knobs

    def _count(self, name: str, by: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + by

    # -- Acuity --------------------------------------------------------------------------------

    def add_acuity_webhook(self, account: int, event: object, target: object) -> AcuityWebhook:
        """Raises ValueError (unknown event, or the account's 25 are used) or TargetError."""
        if event not in ACUITY_EVENTS:
            raise ValueError(f"event must be one of {', '.join(ACUITY_EVENTS)}")
        url = check_loopback_target(target)
        if sum(1 for w in self.acuity.values() if w.account == account) >= ACUITY_MAX_WEBHOOKS:
            raise ValueError(f"A maximum of {ACUITY_MAX_WEBHOOKS} webhooks can be created per account.")
        webhook = AcuityWebhook(next(self._acuity_ids), account, str(event), url)
        self.acuity[webhook.id] = webhook
        return webhook

    def acuity_webhooks(self, account: int) -> list[AcuityWebhook]:
        return [w for w in self.acuity.values() if w.account == account]

    def remove_acuity_webhook(self, account: int, webhook_id: int) -> bool:
        found = self.acuity.get(webhook_id)
        if found is None or found.account != account:
            return False
        del self.acuity[webhook_id]
        return True

    def acuity_changed(
        self,
        *,
        account: int,
        api_key: str,
        action: str,
        appointment_id: int,
        calendar_id: int,
        appointment_type_id: int,
        mutation_at: datetime,
    ) -> list[Notification]:
        """The notifications of one appointment change: one per webhook of `appointment.<action>`, and
        one (`appointment.changed`) per catch-all webhook, as Acuity sends both."""
        made = []
        for webhook in self.acuity_webhooks(account):
            if webhook.event not in (f"appointment.{action}", "appointment.changed"):
                continue
            body = acuity_body(webhook.event, appointment_id, calendar_id, appointment_type_id)
            made.append(Notification(
                ACUITY, account, str(webhook.id), webhook.event, str(appointment_id), webhook.target, body,
                {"Content-Type": "application/x-www-form-urlencoded"}, api_key.encode(), mutation_at,
            ))  # fmt: skip
        return made

    # -- Calendly ------------------------------------------------------------------------------

    def add_calendly_subscription(
        self,
        *,
        account: int,
        user_uri: str,
        organization_uri: str,
        fields: Mapping[str, object],
        now: datetime,
    ) -> CalendlySubscription:
        """`fields` as `POST /webhook_subscriptions` takes them. Raises ValueError (a bad field: 400),
        PermissionError (another user's or organization's scope: 403), TargetError, or
        FileExistsError (this URL is already subscribed for the user: 409)."""
        url = check_loopback_target(fields.get("url"))
        events = fields.get("events")
        if not isinstance(events, list) or not events or not all(e in CALENDLY_EVENTS for e in events):
            raise ValueError(f"events must be a non-empty list of {', '.join(CALENDLY_EVENTS)}")
        scope = fields.get("scope")
        if scope not in ("user", "organization"):
            raise ValueError("scope must be user or organization")
        if fields.get("organization") != organization_uri:
            raise PermissionError("organization is not the caller's")
        user = fields.get("user")
        if scope == "user" and user != user_uri:
            raise PermissionError("user is not the caller")
        key = fields.get("signing_key")
        if key is not None and (not isinstance(key, str) or not key):
            raise ValueError("signing_key must be a non-empty string")
        if any(s.account == account and s.callback_url == url for s in self.calendly.values()):
            raise FileExistsError("Hook with this url already exists")
        uuid = _calendly_uuid(account, next(self._calendly_numbers))
        subscription = CalendlySubscription(
            uuid=uuid, account=account, callback_url=url, events=tuple(str(e) for e in events), scope=str(scope),
            organization=organization_uri, user=user_uri if scope == "user" else None, creator=user_uri,
            signing_key=key or CALENDLY_APP_SIGNING_KEY, created_at=now,
        )  # fmt: skip
        self.calendly[uuid] = subscription
        return subscription

    def calendly_subscriptions(self, account: int) -> list[CalendlySubscription]:
        return sorted((s for s in self.calendly.values() if s.account == account), key=lambda s: (s.created_at, s.uuid))

    def remove_calendly_subscription(self, account: int, uuid: str) -> bool:
        found = self.calendly.get(uuid)
        if found is None or found.account != account:
            return False
        del self.calendly[uuid]
        return True

    def calendly_changed(
        self, *, account: int, event_name: str, payload: Mapping[str, object], record: str, mutation_at: datetime,
        created_at_text: str, encode: Callable[[object], bytes],
    ) -> list[Notification]:  # fmt: skip
        """One notification per subscription of the account that listens to `event_name`."""
        made = []
        for subscription in self.calendly_subscriptions(account):
            if event_name not in subscription.events:
                continue
            body = encode({
                "created_at": created_at_text, "created_by": subscription.creator,
                "event": event_name, "payload": dict(payload),
            })  # fmt: skip
            made.append(Notification(
                CALENDLY, account, subscription.uuid, event_name, record, subscription.callback_url, body,
                {"Content-Type": "application/json"}, subscription.signing_key.encode(), mutation_at,
            ))  # fmt: skip
        return made

    # -- Google --------------------------------------------------------------------------------

    def add_google_channel(
        self, *, account: int, calendar_id: str, fields: Mapping[str, object], now: datetime
    ) -> GoogleChannel:
        """`fields` as `events.watch` takes them; the expiration is the requested one capped at the
        knob `google_channel_ttl_seconds` (and that when none is asked). Raises ValueError (400) or
        TargetError."""
        channel_id = fields.get("id")
        if not isinstance(channel_id, str) or not 0 < len(channel_id) <= GOOGLE_CHANNEL_ID_MAX_CHARS:
            raise ValueError(f"id must be a string of 1..{GOOGLE_CHANNEL_ID_MAX_CHARS} characters")
        if channel_id in self.google or channel_id in self.google_stopped:
            raise ValueError(f"Channel id {channel_id} not unique")
        if fields.get("type") not in ("web_hook", "webhook"):
            raise ValueError("type must be web_hook")
        address = check_loopback_target(fields.get("address"))
        token = fields.get("token")
        if token is not None and not isinstance(token, str):
            raise ValueError("token must be a string")
        longest = now + timedelta(seconds=self.knobs.google_channel_ttl_seconds)
        expiration = longest
        requested = fields.get("expiration")
        if requested is not None:
            try:
                requested_ms = int(str(requested))
            except ValueError as exc:
                raise ValueError("expiration must be milliseconds since the epoch") from exc
            expiration = min(longest, datetime.fromtimestamp(requested_ms / 1000, now.tzinfo))
            if expiration <= now:
                raise ValueError("expiration must lie in the future")
        channel = GoogleChannel(
            channel_id, account, calendar_id, google_resource_id(account, calendar_id), address, token, expiration
        )
        self.google[channel_id] = channel
        self.message_numbers[channel_id] = 0
        return channel

    def stop_google_channel(self, account: int, channel_id: object, resource_id: object) -> bool:
        found = self.google.get(channel_id) if isinstance(channel_id, str) else None
        if found is None or found.account != account or found.resource_id != resource_id:
            return False
        del self.google[found.id]
        self.google_stopped.add(found.id)
        return True

    def expire_google_channels(self, now: datetime) -> int:
        """Admin: every live channel expires at `now` (renewal tests on a fixed clock)."""
        live = [c for c in self.google.values() if c.expiration > now]
        for channel in live:
            self.google[channel.id] = replace(channel, expiration=now)
        return len(live)

    def google_notification(self, channel: GoogleChannel, state: str, mutation_at: datetime) -> Notification:
        """A header-only notification; message numbers count up per channel from 1 (the `sync`)."""
        number = self.message_numbers.get(channel.id, 0) + 1
        self.message_numbers[channel.id] = number
        headers = {
            "X-Goog-Channel-ID": channel.id,
            "X-Goog-Channel-Expiration": _http_date(channel.expiration),
            "X-Goog-Resource-ID": channel.resource_id,
            "X-Goog-Resource-URI": channel.resource_uri,
            "X-Goog-Resource-State": state,
            "X-Goog-Message-Number": str(number),
        }
        if channel.token is not None:
            headers["X-Goog-Channel-Token"] = channel.token
        return Notification(
            GOOGLE,
            channel.account,
            channel.id,
            state,
            channel.calendar_id,
            channel.address,
            b"",
            headers,
            None,
            mutation_at,
        )

    def google_changed(self, *, account: int, calendar_id: str, now: datetime) -> list[Notification]:
        """`exists` on every live channel watching the calendar (an expired channel receives nothing)."""
        return [
            self.google_notification(c, "exists", now)
            for c in list(self.google.values())
            if c.account == account and c.calendar_id == calendar_id and c.expiration > now
        ]

    # -- queue ---------------------------------------------------------------------------------

    def enqueue(self, notifications: Iterable[Notification], *, monotonic: float, wall: datetime) -> list[Delivery]:
        """Applies the fault knobs to each notification and queues what is to be sent."""
        made = []
        for notification in notifications:
            dropped, duplicated, delay, duplicate_delay, forged = plan_faults(notification, self.knobs, self._rng)
            delivery = self._new(notification, forged=forged, delay=delay, wall=wall)
            made.append(delivery)
            if dropped:
                delivery.state = DeliveryState.DROPPED
                self._count("dropped")
                continue
            if forged:
                self._count("forged")
            self._schedule_first(delivery, monotonic)
            if duplicated:
                copy = self._new(notification, forged=forged, delay=duplicate_delay, wall=wall)
                copy.duplicate_of = delivery.id
                copy.message_number = delivery.message_number
                made.append(copy)
                self._count("duplicated")
                self._push(monotonic + duplicate_delay, copy.id)
        return made

    def _new(self, notification: Notification, *, forged: bool, delay: float, wall: datetime) -> Delivery:
        delivery = Delivery(next(self._ids), notification, forged, delay, enqueued_at=wall)
        if notification.provider == GOOGLE:
            delivery.message_number = int(notification.headers["X-Goog-Message-Number"])
        self.deliveries[delivery.id] = delivery
        self._log_order.append(delivery.id)
        while len(self._log_order) > DELIVERY_LOG_LIMIT:
            self.deliveries.pop(self._log_order.popleft(), None)
        self._count("notifications")
        return delivery

    def _schedule_first(self, delivery: Delivery, monotonic: float) -> None:
        if not self.knobs.reorder:
            self._push(monotonic + delivery.delay_seconds, delivery.id)
            return
        key = f"{delivery.notification.provider}:{delivery.notification.subscription}"
        held = self._held.pop(key, None)
        if held is None:
            self._held[key] = _Held(delivery, monotonic)
            return
        self._count("reordered")
        self._push(monotonic + delivery.delay_seconds, delivery.id)
        # After the newer one: its due moment, a hair later (ties break on insertion order too).
        self._push(monotonic + delivery.delay_seconds, held.delivery.id)

    def release_held(self, monotonic: float) -> None:
        """Holds older than `reorder_hold_seconds` (or any, when reordering was switched off) are queued."""
        for key, held in list(self._held.items()):
            if not self.knobs.reorder or monotonic - held.since >= self.knobs.reorder_hold_seconds:
                del self._held[key]
                self._push(monotonic + held.delivery.delay_seconds, held.delivery.id)

    def _push(self, due: float, delivery_id: int) -> None:
        heapq.heappush(self._queue, (due, next(self._sequence), delivery_id))

    def next_due(self) -> float | None:
        """The monotonic moment the next attempt is due, or the end of the oldest hold; None: idle."""
        moments = [self._queue[0][0]] if self._queue else []
        moments += [h.since + self.knobs.reorder_hold_seconds for h in self._held.values()]
        return min(moments, default=None)

    def take_due(self, monotonic: float) -> list[Delivery]:
        """The deliveries whose next attempt is due, in due order."""
        self.release_held(monotonic)
        due = []
        while self._queue and self._queue[0][0] <= monotonic:
            _, _, delivery_id = heapq.heappop(self._queue)
            delivery = self.deliveries.get(delivery_id)
            if delivery is not None and delivery.state is DeliveryState.PENDING:
                due.append(delivery)
        return due

    def attempted(
        self, delivery: Delivery, *, status: int, started: datetime, ended: datetime, monotonic: float
    ) -> None:
        """Records one attempt's answer (`status` 0: none) and queues the retry, if any."""
        delivery.attempts += 1
        delivery.status = status
        delivery.sent_at = delivery.sent_at or started
        delivery.answered_at = ended
        self._count("attempts")
        wait = retry_delay_seconds(self.knobs, delivery.attempts, status)
        if 200 <= status < 300:
            delivery.state = DeliveryState.DELIVERED
            self._count("delivered")
        elif status == 410 and delivery.notification.provider == CALENDLY:
            delivery.state = DeliveryState.GONE
            self.calendly.pop(delivery.notification.subscription, None)
            self._count("gone")
        elif wait is None:
            delivery.state = DeliveryState.FAILED
            self._count("failed")
        else:
            self._count("retries")
            self._push(monotonic + wait, delivery.id)

    def log(self, *, provider: str | None = None, account: int | None = None, after_id: int = 0) -> list[Delivery]:
        return [
            d
            for d in self.deliveries.values()
            if d.id > after_id
            and (provider is None or d.notification.provider == provider)
            and (account is None or d.notification.account == account)
        ]

    def pending(self) -> int:
        return sum(1 for d in self.deliveries.values() if d.state is DeliveryState.PENDING)

    def counts_snapshot(self) -> dict[str, int]:
        """notifications, attempts, delivered, retries, failed, dropped, duplicated, forged, reordered,
        gone (those that happened) and pending."""
        return {**self.counts, "pending": self.pending()}

    def clear_log(self) -> None:
        """Forgets finished deliveries and the counts (pending ones stay)."""
        for delivery_id in list(self.deliveries):
            if self.deliveries[delivery_id].state is not DeliveryState.PENDING:
                del self.deliveries[delivery_id]
        self._log_order = deque(i for i in self._log_order if i in self.deliveries)
        self.counts.clear()


def _calendly_uuid(account: int, number: int) -> str:
    """Calendly-style 16-character uuid of the account's `number`th subscription."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    digest = hashlib.sha256(f"webhook-subscription:{account}:{number}".encode()).digest()
    return "".join(alphabet[byte % len(alphabet)] for byte in digest[:16])


def _http_date(moment: datetime) -> str:
    """`Tue, 19 Nov 2013 01:13:52 GMT`: how Google writes X-Goog-Channel-Expiration."""
    return moment.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
