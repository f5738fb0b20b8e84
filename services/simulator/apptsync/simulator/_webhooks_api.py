"""The providers' subscription APIs and the webhook admin routes. aiohttp adapter; the model is in
_webhooks, what a change sends in _webhook_events, the sending task in _webhook_delivery.

Provider APIs (authenticated like each provider's other routes; not counted as listing traffic and
not subject to the provider's fault knobs, like the credential checks):
- Acuity `POST /acuity/api/v1/webhooks {event, target}` -> `{id, event, target, status: "active"}`;
  `GET /acuity/api/v1/webhooks`; `DELETE /acuity/api/v1/webhooks/{id}` (204). 400 beyond 25 per
  account, for an unknown event, or a target that is not loopback (the dev exception: real Acuity
  wants port 443 or 80; the simulator takes any port of 127.0.0.1 / ::1 / localhost and nothing else).
- Calendly `POST /calendly/webhook_subscriptions {url, events, organization, user, scope, signing_key}`
  -> 201 `{resource}`; 409 when the account already has that URL; `GET /calendly/webhook_subscriptions
  ?organization=...&scope=user|organization[&user=...][&count=..&page_token=..]` -> `{collection,
  pagination}`; `GET|DELETE /calendly/webhook_subscriptions/{uuid}` (DELETE: 204). Without
  `signing_key`, deliveries are signed with CALENDLY_APP_SIGNING_KEY (the simulated OAuth app's key).
- Google `POST /google/calendar/v3/calendars/{calendarId}/events/watch {id, type: "web_hook", address,
  token?, expiration? (ms)}` -> the Channel resource, then a `sync` notification;
  `POST /google/calendar/v3/channels/stop {id, resourceId}` (204).

Admin (no auth, JSON):
- `GET|PUT|POST|DELETE /_admin/webhooks/faults` (WebhookFaultKnobs; PUT/POST merge, DELETE resets)
- `GET /_admin/webhooks/deliveries[?provider=&account=&after_id=]` -> `{"counts": {...}, "deliveries":
  [Delivery.to_json(), ...]}` oldest first; `DELETE` forgets finished deliveries and the counts
- `GET /_admin/webhooks/subscriptions` -> every provider's subscriptions (Calendly signing keys and
  Google channel tokens included, `expired` per channel)
- `POST /_admin/webhooks/google/expire-channels` -> `{"expired": n}` (every live channel expires now)"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import datetime

import pydantic
from aiohttp import web

from apptsync.simulator._acuity_api import API_PREFIX as ACUITY_PREFIX
from apptsync.simulator._acuity_api import _authenticate as acuity_account
from apptsync.simulator._calendly_api import API_PREFIX as CALENDLY_PREFIX
from apptsync.simulator._calendly_api import calendly_error
from apptsync.simulator._calendly_data import CalendlyAccount, calendly_time
from apptsync.simulator._google_api import API_PREFIX as GOOGLE_PREFIX
from apptsync.simulator._google_api import google_error
from apptsync.simulator._google_data import GoogleAccount
from apptsync.simulator._http_admin import json_body, json_response
from apptsync.simulator._provider_guard import JsonReply, error_reply
from apptsync.simulator._state import SimulatorState
from apptsync.simulator._webhook_events import publish
from apptsync.simulator._webhooks import TargetError

ADMIN_PREFIX = "/_admin/webhooks"
_CALENDLY_MAX_COUNT = 100


def _reply(reply: JsonReply) -> web.Response:
    if reply.status == 204:
        return web.Response(status=204)
    return json_response(reply.body, status=reply.status, headers=reply.headers)


async def _object_body(request: web.Request) -> dict[str, object] | None:
    """The JSON object body, or None when it is not one."""
    try:
        return await json_body(request)
    except web.HTTPBadRequest:
        return None


def add_webhook_routes(app: web.Application, state: SimulatorState, *, clock: Callable[[], datetime]) -> None:
    """Registers the provider subscription routes and the admin routes (before the generic
    `/_admin/{provider}/...` ones, which would otherwise take `/_admin/webhooks/faults`)."""
    hub = state.webhooks

    # -- Acuity --------------------------------------------------------------------------------

    async def acuity_create(request: web.Request) -> web.Response:
        account = acuity_account(request, state)
        if account is None:
            return _reply(error_reply(401, "unauthorized", "Unauthorized"))
        body = await _object_body(request)
        if body is None:
            return _reply(error_reply(400, "invalid_body", "The body must be a JSON object."))
        try:
            webhook = hub.add_acuity_webhook(account.user_id, body.get("event"), body.get("target"))
        except TargetError as exc:
            return _reply(error_reply(400, "invalid_target", str(exc)))
        except ValueError as exc:
            return _reply(error_reply(400, "invalid_webhook", str(exc)))
        return json_response(webhook.to_json())

    async def acuity_list(request: web.Request) -> web.Response:
        account = acuity_account(request, state)
        if account is None:
            return _reply(error_reply(401, "unauthorized", "Unauthorized"))
        return json_response([w.to_json() for w in hub.acuity_webhooks(account.user_id)])

    async def acuity_delete(request: web.Request) -> web.Response:
        account = acuity_account(request, state)
        if account is None:
            return _reply(error_reply(401, "unauthorized", "Unauthorized"))
        text = request.match_info["webhook_id"]
        if not text.isdigit() or not hub.remove_acuity_webhook(account.user_id, int(text)):
            return _reply(error_reply(404, "not_found", "The webhook was not found."))
        return web.Response(status=204)

    # -- Calendly ------------------------------------------------------------------------------

    def calendly_caller(request: web.Request) -> CalendlyAccount | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return state.calendly.authenticate(token.strip()) if scheme.lower() == "bearer" else None

    def unauthenticated() -> web.Response:
        return _reply(calendly_error(401, "unauthenticated", "The access token is invalid or expired."))

    def calendly_not_found() -> web.Response:
        return _reply(calendly_error(404, "not_found", "The server could not find the requested resource."))

    async def calendly_create(request: web.Request) -> web.Response:
        account = calendly_caller(request)
        if account is None:
            return unauthenticated()
        body = await _object_body(request)
        if body is None:
            return _reply(calendly_error(400, "invalid_argument", "The supplied parameters are invalid."))
        try:
            subscription = hub.add_calendly_subscription(
                account=account.number, user_uri=account.user_uri, organization_uri=account.organization_uri,
                fields=body, now=clock(),
            )  # fmt: skip
        except FileExistsError as exc:
            return json_response({"title": "Already Exists", "message": str(exc)}, status=409)
        except PermissionError as exc:
            return _reply(calendly_error(403, "permission_denied", str(exc)))
        except ValueError as exc:  # TargetError included
            return _reply(calendly_error(400, "invalid_argument", str(exc)))
        return json_response({"resource": subscription.to_json(calendly_time)}, status=201)

    async def calendly_list(request: web.Request) -> web.Response:
        account = calendly_caller(request)
        if account is None:
            return unauthenticated()
        query = request.query
        if query.get("organization") != account.organization_uri or query.get("scope") not in ("user", "organization"):
            return _reply(calendly_error(400, "invalid_argument", "organization (the caller's) and scope are required"))
        count_text = query.get("count", "20")
        offset = _offset(query.get("page_token"))
        if not count_text.isdigit() or not 1 <= int(count_text) <= _CALENDLY_MAX_COUNT or offset is None:
            return _reply(calendly_error(400, "invalid_argument", "count or page_token is invalid"))
        count = int(count_text)
        wanted = [
            s for s in hub.calendly_subscriptions(account.number)
            if s.scope == query["scope"] and ("user" not in query or s.user == query["user"])
        ]  # fmt: skip
        page = wanted[offset : offset + count]
        next_token = _token(offset + count) if offset + count < len(wanted) else None
        next_page = None if next_token is None else str(request.url.update_query({"page_token": next_token}))
        return json_response({
            "collection": [s.to_json(calendly_time) for s in page],
            "pagination": {"count": len(page), "next_page": next_page, "previous_page": None,
                           "next_page_token": next_token, "previous_page_token": None},
        })  # fmt: skip

    async def calendly_get(request: web.Request) -> web.Response:
        account = calendly_caller(request)
        if account is None:
            return unauthenticated()
        found = hub.calendly.get(request.match_info["uuid"])
        if found is None or found.account != account.number:
            return calendly_not_found()
        return json_response({"resource": found.to_json(calendly_time)})

    async def calendly_delete(request: web.Request) -> web.Response:
        account = calendly_caller(request)
        if account is None:
            return unauthenticated()
        if not hub.remove_calendly_subscription(account.number, request.match_info["uuid"]):
            return calendly_not_found()
        return web.Response(status=204)

    # -- Google --------------------------------------------------------------------------------

    def google_caller(request: web.Request) -> GoogleAccount | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return state.google.authenticate(token.strip()) if scheme.lower() == "bearer" else None

    async def google_watch(request: web.Request) -> web.Response:
        account = google_caller(request)
        if account is None:
            return _reply(google_error(401, "authError", "Invalid Credentials"))
        calendar_id = request.match_info["calendar_id"]
        if state.google.calendar(account, calendar_id) is None:
            return _reply(google_error(404, "notFound", "Not Found"))
        body = await _object_body(request)
        if body is None:
            return _reply(google_error(400, "parseError", "Parse Error"))
        now = clock()
        try:
            channel = hub.add_google_channel(account=account.number, calendar_id=calendar_id, fields=body, now=now)
        except ValueError as exc:  # TargetError included
            return _reply(google_error(400, "badRequest", str(exc)))
        publish(state, [hub.google_notification(channel, "sync", now)])
        return json_response(channel.to_json())

    async def google_stop(request: web.Request) -> web.Response:
        account = google_caller(request)
        if account is None:
            return _reply(google_error(401, "authError", "Invalid Credentials"))
        body = await _object_body(request) or {}
        if not hub.stop_google_channel(account.number, body.get("id"), body.get("resourceId")):
            return _reply(google_error(404, "notFound", f"Channel '{body.get('id')}' not found"))
        return web.Response(status=204)

    # -- admin ---------------------------------------------------------------------------------

    async def get_faults(request: web.Request) -> web.Response:
        return json_response(hub.knobs.model_dump())

    async def set_faults(request: web.Request) -> web.Response:
        body = await _object_body(request)
        if body is None:
            return json_response({"error": "fault knobs must be a JSON object"}, status=400)
        try:
            knobs = hub.set_knobs(body)
        except pydantic.ValidationError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response(knobs.model_dump())

    async def reset_faults(request: web.Request) -> web.Response:
        return json_response(hub.reset_knobs().model_dump())

    async def deliveries(request: web.Request) -> web.Response:
        query = request.query
        account_text, after_text = query.get("account", ""), query.get("after_id", "0")
        if (account_text and not account_text.isdigit()) or not after_text.isdigit():
            return json_response({"error": "account and after_id must be integers"}, status=400)
        found = hub.log(
            provider=query.get("provider") or None,
            account=int(account_text) if account_text else None,
            after_id=int(after_text),
        )
        return json_response({"counts": hub.counts_snapshot(), "deliveries": [d.to_json() for d in found]})

    async def clear_deliveries(request: web.Request) -> web.Response:
        hub.clear_log()
        return json_response({"counts": hub.counts_snapshot()})

    async def subscriptions(request: web.Request) -> web.Response:
        now = clock()
        return json_response({
            "acuity": [{**w.to_json(), "account": w.account} for w in hub.acuity.values()],
            "calendly": [{**s.to_json(calendly_time), "account": s.account, "signing_key": s.signing_key}
                         for s in hub.calendly.values()],
            "google": [{**c.to_json(), "account": c.account, "calendarId": c.calendar_id, "address": c.address,
                        "expired": c.expiration <= now, "message_number": hub.message_numbers.get(c.id, 0)}
                       for c in hub.google.values()],
        })  # fmt: skip

    async def expire_channels(request: web.Request) -> web.Response:
        return json_response({"expired": hub.expire_google_channels(clock())})

    app.router.add_get(f"{ADMIN_PREFIX}/faults", get_faults)
    app.router.add_put(f"{ADMIN_PREFIX}/faults", set_faults)
    app.router.add_post(f"{ADMIN_PREFIX}/faults", set_faults)
    app.router.add_delete(f"{ADMIN_PREFIX}/faults", reset_faults)
    app.router.add_get(f"{ADMIN_PREFIX}/deliveries", deliveries)
    app.router.add_delete(f"{ADMIN_PREFIX}/deliveries", clear_deliveries)
    app.router.add_get(f"{ADMIN_PREFIX}/subscriptions", subscriptions)
    app.router.add_post(f"{ADMIN_PREFIX}/google/expire-channels", expire_channels)
    app.router.add_post(f"{ACUITY_PREFIX}/webhooks", acuity_create)
    app.router.add_get(f"{ACUITY_PREFIX}/webhooks", acuity_list)
    app.router.add_delete(f"{ACUITY_PREFIX}/webhooks/{{webhook_id}}", acuity_delete)
    app.router.add_post(f"{CALENDLY_PREFIX}/webhook_subscriptions", calendly_create)
    app.router.add_get(f"{CALENDLY_PREFIX}/webhook_subscriptions", calendly_list)
    app.router.add_get(f"{CALENDLY_PREFIX}/webhook_subscriptions/{{uuid}}", calendly_get)
    app.router.add_delete(f"{CALENDLY_PREFIX}/webhook_subscriptions/{{uuid}}", calendly_delete)
    app.router.add_post(f"{GOOGLE_PREFIX}/calendars/{{calendar_id}}/events/watch", google_watch)
    app.router.add_post(f"{GOOGLE_PREFIX}/channels/stop", google_stop)


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _offset(token: str | None) -> int | None:
    """The offset a page token names (0 without one); None for an unreadable token."""
    if token is None:
        return 0
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        return None
    offset = decoded.get("o") if isinstance(decoded, dict) else None
    return offset if isinstance(offset, int) and offset >= 0 else None
