"""Webhook subscriptions at the providers: created on PutConnection, renewed, removed on DeleteConnection.

With `APPTSYNC_WEBHOOK_PUBLIC_BASE_URL` set, each stored connection gets a notification URL with a
fresh unguessable token (`apptsync.shared.webhooks`) and subscribes it at its provider:
- Acuity: one `POST /webhooks {event, target}` per appointment event (4 of the account's 25);
- Calendly: `POST /webhook_subscriptions {url, events, organization, user, scope, signing_key}` with a
  signing key we generate (so only we and Calendly can sign);
- Google Calendar: `POST /calendars/{id}/events/watch {id, type: web_hook, address, token, expiration}`
  per calendar, with a channel token we generate; channels expire and are replaced before they do
  (`renew_expiring`, run by `apptsync renew-subscriptions`), the old one stopped (`/channels/stop`).
The result is stored per connection (`webhook_subscriptions`, state ACTIVE or FAILED with the
provider's reason): a failed subscription never fails PutConnection (polling still syncs the
connection) but shows in GetConnection, in `apptsync_webhook_subscription_changes_total{result=
"failed"}` and in the `ApptsyncWebhookSubscriptionFailing` alert.

Pure request planning (`plan_*`) is separate from `ProviderSubscriptions`, which sends the requests
with httpx; every URL passes the outbound policy (apptsync.shared.outbound) first, no redirect is
followed. `SubscriptionManager` ties provider calls to the table.
"""

from __future__ import annotations

import logging
import secrets as secrets_module
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx

from apptsync.shared.appointments import Source
from apptsync.shared.credentials import Keyring
from apptsync.shared.db import connections as connections_db
from apptsync.shared.db import webhooks as webhooks_db
from apptsync.shared.db.pool import acquired
from apptsync.shared.errors import ApptsyncError
from apptsync.shared.outbound import OutboundPolicy
from apptsync.shared.provider_access import PUBLIC_API_URLS, auth_headers, google_calendar_ids
from apptsync.shared.settings import WebhookSettings
from apptsync.shared.telemetry.metrics import METRICS
from apptsync.shared.webhooks import (
    ACUITY_SUBSCRIBED_EVENTS,
    CALENDLY_SUBSCRIBED_EVENTS,
    new_path_token,
    notification_url,
    notifications_verifiable,
    token_digest,
)

_log = logging.getLogger("apptsync.gateway.subscriptions")
Clock = Callable[[], datetime]
MAX_ERROR_CHARACTERS = 300


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """One request to a provider's subscription API."""

    method: str
    url: str
    body: dict[str, Any] | None
    what: str  # names it in errors: method and path, never a credential


def api_base(source: Source, base_url: str) -> str:
    return (base_url or PUBLIC_API_URLS[source]).rstrip("/")


def plan_acuity_subscribe(base: str, target: str) -> list[ProviderCall]:
    return [
        ProviderCall("POST", f"{base}/webhooks", {"event": event, "target": target}, "POST /webhooks")
        for event in ACUITY_SUBSCRIBED_EVENTS
    ]


def plan_calendly_subscribe(
    base: str, target: str, *, organization: str, user: str, signing_key: str
) -> ProviderCall:
    """Organization scope when the connection lists an organization, else the user's own events."""
    body: dict[str, Any] = {
        "url": target,
        "events": list(CALENDLY_SUBSCRIBED_EVENTS),
        "organization": organization,
        "scope": "organization" if not user else "user",
        "signing_key": signing_key,
    }
    if user:
        body["user"] = user
    return ProviderCall("POST", f"{base}/webhook_subscriptions", body, "POST /webhook_subscriptions")


def plan_google_watch(
    base: str, target: str, *, calendar_id: str, channel_id: str, channel_token: str, expires_at: datetime
) -> ProviderCall:
    body = {
        "id": channel_id,
        "type": "web_hook",
        "address": target,
        "token": channel_token,
        "expiration": str(int(expires_at.timestamp() * 1000)),
    }
    path = f"/calendars/{quote(calendar_id, safe='')}/events/watch"
    return ProviderCall("POST", base + path, body, f"POST {path}")


def plan_unsubscribe(source: Source, base: str, refs: Mapping[str, Any]) -> list[ProviderCall]:
    """The requests that remove what `refs` (a stored subscription's provider refs) names."""
    if source is Source.ACUITY:
        return [ProviderCall("DELETE", f"{base}/webhooks/{int(i)}", None, "DELETE /webhooks/{id}")
                for i in refs.get("acuity_webhook_ids", [])]  # fmt: skip
    if source is Source.CALENDLY:
        # The UUID (the URI's last segment) under the connection's own API base: a URI the provider
        # answered never decides where the token goes.
        uri = refs.get("calendly_subscription_uri")
        uuid = uri.rstrip("/").rsplit("/", 1)[-1] if isinstance(uri, str) else ""
        if uuid and all(c.isascii() and (c.isalnum() or c == "-") for c in uuid):
            return [ProviderCall("DELETE", f"{base}/webhook_subscriptions/{uuid}", None,
                                 "DELETE /webhook_subscriptions/{uuid}")]  # fmt: skip
        return []
    return [ProviderCall("POST", f"{base}/channels/stop", {"id": c["id"], "resourceId": c["resource_id"]},
                         "POST /channels/stop")
            for c in refs.get("google_channels", [])]  # fmt: skip


def channel_expiry(channels: list[dict[str, Any]]) -> datetime | None:
    """When the first of the Google channels expires (None: no channel, nothing to renew)."""
    moments = [datetime.fromtimestamp(int(c["expiration_ms"]) / 1000, UTC) for c in channels if c.get("expiration_ms")]
    return min(moments) if moments else None


def new_channel_id(random_hex: Callable[[int], str] = secrets_module.token_hex) -> str:
    """A Google channel id: unique, at most 64 characters."""
    return "apptsync-" + random_hex(16)


class SubscriptionError(ApptsyncError):
    """A provider refused or did not answer a subscription request (the message says which and why)."""


class ProviderSubscriptions:
    """Sends subscription requests (httpx; `transport` lets tests answer in place of a provider)."""

    def __init__(
        self, *, outbound: OutboundPolicy, timeout_seconds: float, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._outbound = outbound
        self._client = httpx.AsyncClient(
            timeout=timeout_seconds, follow_redirects=False, trust_env=False, transport=transport
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, source: Source, call: ProviderCall, credentials: Mapping[str, str]) -> Any:
        """The JSON answer (None for an empty one). Raises OutboundRefusedError (nothing sent) or
        SubscriptionError (not 2xx, or no answer)."""
        self._outbound.check(call.url, source=source)
        try:
            response = await self._client.request(
                call.method, call.url, json=call.body, headers=auth_headers(source, credentials)
            )
        except httpx.HTTPError as exc:
            raise SubscriptionError(f"{source.value} did not answer {call.what} ({type(exc).__name__})") from exc
        if not 200 <= response.status_code < 300:
            raise SubscriptionError(
                f"{source.value} answered {call.what} with {response.status_code}: "
                f"{response.text[:MAX_ERROR_CHARACTERS]}"
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise SubscriptionError(f"{source.value} answered {call.what} without JSON") from exc


class SubscriptionManager:
    """Subscribes, renews and removes connections' webhooks; stores the outcome per connection."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        keyring: Keyring,
        settings: WebhookSettings,
        provider: ProviderSubscriptions,
        clock: Clock,
    ) -> None:
        self._pool = pool
        self._keyring = keyring
        self._settings = settings
        self._provider = provider
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return bool(self._settings.public_base_url)

    async def subscribe(
        self,
        *,
        tenant_id: str,
        connection_id: str,
        source: Source,
        base_url: str,
        credentials: Mapping[str, str],
        settings: Mapping[str, str],
    ) -> webhooks_db.Subscription | None:
        """Replaces the connection's subscription by a new one (new token and secrets); None when no
        public base URL is configured or its notifications could not be verified (an OAuth-only Acuity
        connection has no API key to check signatures with): polling only, and any subscription it had
        is removed. A provider failure is stored (state FAILED), not raised: the connection is stored
        and polled either way."""
        if not self.enabled:
            return None
        if not notifications_verifiable(source, credentials):
            await self.unsubscribe(tenant_id=tenant_id, connection_id=connection_id, source=source,
                                   base_url=base_url, credentials=credentials)  # fmt: skip
            _log.info("connection %s is polled only: its notifications could not be verified", connection_id)
            return None
        await self.unsubscribe(tenant_id=tenant_id, connection_id=connection_id, source=source,
                               base_url=base_url, credentials=credentials)  # fmt: skip
        token = new_path_token()
        target = notification_url(self._settings.public_base_url, source, token)
        base = api_base(source, base_url)
        stored_secrets: dict[str, str] = {}
        refs: dict[str, Any] = {}
        state, error, expires_at = "ACTIVE", "", None
        try:
            if source is Source.ACUITY:
                ids = []
                for call in plan_acuity_subscribe(base, target):
                    answer = await self._provider.send(source, call, credentials)
                    ids.append(int(answer["id"]))
                    refs["acuity_webhook_ids"] = ids
            elif source is Source.CALENDLY:
                stored_secrets["signing_key"] = secrets_module.token_urlsafe(32)
                organization, user = await self._calendly_owner(base, credentials, settings)
                call = plan_calendly_subscribe(base, target, organization=organization, user=user,
                                               signing_key=stored_secrets["signing_key"])  # fmt: skip
                answer = await self._provider.send(source, call, credentials)
                refs["calendly_subscription_uri"] = str(answer["resource"]["uri"])
            else:
                stored_secrets["channel_token"] = secrets_module.token_urlsafe(32)
                refs["google_channels"] = await self._watch_all(base, target, credentials, settings,
                                                                stored_secrets["channel_token"])  # fmt: skip
                refs["message_numbers"] = {}
                expires_at = channel_expiry(refs["google_channels"])
            METRICS.webhook_subscription_changes.labels(source.value, "subscribe", "ok").inc()
        except (ApptsyncError, KeyError, TypeError, ValueError) as exc:
            state, error = "FAILED", str(exc)[:MAX_ERROR_CHARACTERS]
            METRICS.webhook_subscription_changes.labels(source.value, "subscribe", "failed").inc()
            _log.warning("webhook subscription of %s failed: %s", connection_id, type(exc).__name__)
        async with acquired(self._pool) as conn:
            return await webhooks_db.put_subscription(
                conn, keyring=self._keyring, tenant_id=tenant_id, connection_id=connection_id,
                external_source=source.value, token_sha256=token_digest(token), secrets=stored_secrets,
                provider_refs=refs, state=state, last_error=error, expires_at=expires_at, now=self._clock(),
            )  # fmt: skip

    async def unsubscribe(
        self, *, tenant_id: str, connection_id: str, source: Source, base_url: str, credentials: Mapping[str, str]
    ) -> bool:
        """Deletes the stored subscription and removes it at the provider (best effort: a provider
        failure is counted and logged; the notification URL's token is gone either way, so anything
        the provider still sends is answered 404). False when there was none."""
        async with acquired(self._pool) as conn:
            deleted = await webhooks_db.delete_subscription(conn, tenant_id=tenant_id, connection_id=connection_id)
        if deleted is None:
            return False
        for call in plan_unsubscribe(source, api_base(source, base_url), deleted.provider_refs):
            try:
                await self._provider.send(source, call, credentials)
                METRICS.webhook_subscription_changes.labels(source.value, "unsubscribe", "ok").inc()
            except ApptsyncError as exc:
                METRICS.webhook_subscription_changes.labels(source.value, "unsubscribe", "failed").inc()
                _log.warning("removing a webhook of %s failed: %s", connection_id, type(exc).__name__)
        return True

    async def renew_expiring(self, *, limit: int = 500) -> tuple[int, int]:
        """Replaces every Google channel that expires within `renew_before_seconds` by a new one (same
        notification URL and channel token, new channel id), then stops the old. Returns (renewed,
        failed); the failed ones are stored FAILED with the reason (and alert)."""
        before = self._clock() + timedelta(seconds=self._settings.renew_before_seconds)
        async with acquired(self._pool) as conn:
            routes = await webhooks_db.expiring_subscriptions(conn, before=before, limit=limit)
        renewed = failed = 0
        for route in routes:
            if await self._renew_one(route):
                renewed += 1
            else:
                failed += 1
        METRICS.webhook_subscriptions_unhealthy.labels(Source.GOOGLE_CALENDAR.value).set(failed)
        return renewed, failed

    async def _renew_one(self, route: webhooks_db.Route) -> bool:
        source = Source(route.external_source)
        async with acquired(self._pool) as conn:
            loaded = await webhooks_db.load_subscription_secrets(
                conn, keyring=self._keyring, tenant_id=route.tenant_id, connection_id=route.connection_id
            )
            connection = await connections_db.load_connection_secrets(
                conn, keyring=self._keyring, tenant_id=route.tenant_id, connection_id=route.connection_id
            )
        if loaded is None or connection is None or source is not Source.GOOGLE_CALENDAR:
            return True
        (subscription, stored_secrets), (record, credentials) = loaded, connection
        refs = dict(subscription.provider_refs)
        old_channels = list(refs.get("google_channels", []))
        target = old_channels[0]["address"] if old_channels else ""
        base = api_base(source, record.base_url)
        try:
            refs["google_channels"] = await self._watch_all(base, target, credentials, record.settings,
                                                            stored_secrets.get("channel_token", ""))  # fmt: skip
            state, error = "ACTIVE", ""
            METRICS.webhook_subscription_changes.labels(source.value, "renew", "ok").inc()
        except (ApptsyncError, KeyError, TypeError, ValueError) as exc:
            state, error = "FAILED", str(exc)[:MAX_ERROR_CHARACTERS]
            METRICS.webhook_subscription_changes.labels(source.value, "renew", "failed").inc()
        async with acquired(self._pool) as conn:
            await webhooks_db.update_subscription(
                conn, tenant_id=route.tenant_id, connection_id=route.connection_id, provider_refs=refs, state=state,
                last_error=error, expires_at=channel_expiry(refs["google_channels"]) if state == "ACTIVE" else None,
                now=self._clock(),
            )  # fmt: skip
        if state == "ACTIVE":
            for call in plan_unsubscribe(source, base, {"google_channels": old_channels}):
                try:
                    await self._provider.send(source, call, credentials)
                except ApptsyncError as exc:  # it expires on its own anyway
                    _log.info("stopping a replaced channel failed: %s", type(exc).__name__)
        return state == "ACTIVE"

    async def _watch_all(
        self, base: str, target: str, credentials: Mapping[str, str], settings: Mapping[str, str], token: str
    ) -> list[dict[str, Any]]:
        channels = []
        expires_at = self._clock() + timedelta(seconds=self._settings.google_channel_seconds)
        for calendar_id in google_calendar_ids(settings):
            call = plan_google_watch(base, target, calendar_id=calendar_id, channel_id=new_channel_id(),
                                     channel_token=token, expires_at=expires_at)  # fmt: skip
            answer = await self._provider.send(Source.GOOGLE_CALENDAR, call, credentials)
            channels.append({
                "id": str(answer["id"]), "resource_id": str(answer["resourceId"]), "calendar_id": calendar_id,
                "expiration_ms": int(answer.get("expiration") or int(expires_at.timestamp() * 1000)),
                "address": target,
            })  # fmt: skip
        return channels

    async def _calendly_owner(
        self, base: str, credentials: Mapping[str, str], settings: Mapping[str, str]
    ) -> tuple[str, str]:
        """(organization URI, user URI or "" for organization scope), from the settings or `GET /users/me`."""
        organization = settings.get("organization", "").strip()
        if organization:
            return organization, ""
        me = await self._provider.send(
            Source.CALENDLY, ProviderCall("GET", f"{base}/users/me", None, "GET /users/me"), credentials
        )
        resource = me["resource"]
        return str(resource["current_organization"]), str(settings.get("user", "") or resource["uri"])



async def renew_subscriptions(
    pool: asyncpg.Pool, keyring: Keyring, settings: WebhookSettings, *, outbound: OutboundPolicy, timeout_seconds: float
) -> tuple[int, int]:
    """One renewal pass (`apptsync renew-subscriptions`, a CronJob): (renewed, failed)."""
    provider = ProviderSubscriptions(outbound=outbound, timeout_seconds=timeout_seconds)
    try:
        manager = SubscriptionManager(
            pool=pool, keyring=keyring, settings=settings, provider=provider, clock=lambda: datetime.now(UTC)
        )
        return await manager.renew_expiring()
    finally:
        await provider.aclose()
