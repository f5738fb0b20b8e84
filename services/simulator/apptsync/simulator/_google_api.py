"""The Google-Calendar-shaped HTTP API (`/google/calendar/v3/...`), its OAuth token endpoint
(`/google/oauth2/token`) and admin routes (`/_admin/google/...`). aiohttp adapter; the semantics live
in _google_data and _oauth_tokens."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from aiohttp import web

from apptsync.simulator._google_data import GoogleQueryError, google_error_body
from apptsync.simulator._http_admin import account_number, form_body, json_body, json_response, not_found
from apptsync.simulator._oauth_tokens import SIMULATOR_CLIENT_ID, SIMULATOR_CLIENT_SECRET, OAuthError
from apptsync.simulator._provider_guard import JsonReply, guarded
from apptsync.simulator._state import GOOGLE, SimulatorState
from apptsync.simulator._webhook_events import google_calendar_changed, publish

API_PREFIX = "/google/calendar/v3"
TOKEN_PATH = "/google/oauth2/token"  # noqa: S105 (a path, not a secret)
ADMIN_PREFIX = "/_admin/google"
_REASONS = {"too_many_requests": "rateLimitExceeded", "rate_limit_exceeded": "rateLimitExceeded",
            "server_error": "backendError"}  # fmt: skip


def google_error(status: int, error: str, message: str, headers: Mapping[str, str] | None = None) -> JsonReply:
    """Google's error shape, with the reason Google gives for the simulated error."""
    return JsonReply(status, google_error_body(status, _REASONS.get(error, error), message), headers or {})


def add_google_routes(app: web.Application, state: SimulatorState, *, clock: Callable[[], datetime]) -> None:
    provider = state.providers[GOOGLE]
    store = state.google

    async def list_events(request: web.Request) -> web.StreamResponse:
        async def reply(r: web.Request) -> JsonReply:
            scheme, _, token = r.headers.get("Authorization", "").partition(" ")
            account = store.authenticate(token.strip()) if scheme.lower() == "bearer" else None
            if account is None:
                return google_error(401, "authError", "Invalid Credentials")
            try:
                body = store.list_events(
                    account,
                    r.match_info["calendar_id"],
                    r.query,
                    empty_page_every=provider.faults.knobs.empty_page_every,
                )
            except GoogleQueryError as exc:
                return google_error(exc.status, exc.reason, exc.message)
            malformed_every = provider.faults.knobs.malformed_record_every
            if malformed_every:
                _break_starts(body, malformed_every)
            if provider.faults.knobs.repeat_page_token and "pageToken" in r.query and body.get("nextPageToken"):
                body["nextPageToken"] = r.query["pageToken"]
            return JsonReply(200, body)

        return await guarded(request, provider, reply, render_error=google_error)

    async def get_calendar(request: web.Request) -> web.Response:
        # Not `guarded`: PutConnection's credential check is not counted and takes no injected fault.
        # `primary` is unknown here as it is to the events listing: the simulated accounts have only
        # the calendars named in their admin listing.
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        account = store.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        calendar = None if account is None else store.calendar(account, request.match_info["calendar_id"])
        if account is None:
            reply = google_error(401, "authError", "Invalid Credentials")
        elif calendar is None:
            reply = google_error(404, "notFound", "Not Found")
        else:
            reply = JsonReply(200, {
                "kind": "calendar#calendar", "etag": f'"{calendar.id}-etag"', "id": calendar.id,
                "summary": calendar.summary, "timeZone": calendar.timezone,
            })  # fmt: skip
        return json_response(reply.body, status=reply.status)

    async def token(request: web.Request) -> web.StreamResponse:
        async def reply(r: web.Request) -> JsonReply:
            try:
                _, pair = store.tokens.refresh(await form_body(r))
            except OAuthError as exc:
                return JsonReply(exc.status, {"error": exc.error, "error_description": exc.description})
            return JsonReply(200, {
                "access_token": pair.access_token, "expires_in": 3599, "token_type": "Bearer",
                "scope": "https://www.googleapis.com/auth/calendar.readonly", "refresh_token": pair.refresh_token,
            })  # fmt: skip

        return await guarded(request, provider, reply, render_error=google_error)

    async def admin_accounts(request: web.Request) -> web.Response:
        return json_response([
            {"account": a.number, "email": a.email,
             "calendars": [{"id": c.id, "summary": c.summary, "timeZone": c.timezone} for c in a.calendars],
             "access_token": store.tokens.current(a.number).access_token,
             "refresh_token": store.tokens.current(a.number).refresh_token,
             "client_id": SIMULATOR_CLIENT_ID, "client_secret": SIMULATOR_CLIENT_SECRET,
             "events": len(store.events[a.number])}
            for a in store.accounts.values()
        ])  # fmt: skip

    async def admin_events(request: web.Request) -> web.Response:
        return json_response(store.data_set(account_number(request, store.accounts)))

    async def admin_add(request: web.Request) -> web.Response:
        number = account_number(request, store.accounts)
        try:
            added = store.add(number, request.match_info["calendar_id"], await json_body(request), now=clock())
        except KeyError as exc:
            raise not_found("no such calendar") from exc
        except (GoogleQueryError, ValueError) as exc:
            return json_response({"error": str(exc)}, status=400)
        publish(state, google_calendar_changed(state, number, added.calendar_id, at=added.updated))
        return json_response(added.to_json(), status=201)

    async def admin_cancel(request: web.Request) -> web.Response:
        number = account_number(request, store.accounts)
        body = await json_body(request)
        try:
            canceled = store.cancel(
                number,
                request.match_info["calendar_id"],
                request.match_info["event_id"],
                now=clock(),
                delete=body.get("delete") is True,
            )
        except KeyError as exc:
            raise not_found("no such event") from exc
        publish(state, google_calendar_changed(state, number, canceled.calendar_id, at=canceled.updated))
        return json_response(canceled.to_json())

    async def admin_reschedule(request: web.Request) -> web.Response:
        number = account_number(request, store.accounts)
        body = await json_body(request)
        try:
            moved = store.reschedule(
                number, request.match_info["calendar_id"], request.match_info["event_id"], body, now=clock()
            )
        except KeyError as exc:
            raise not_found("no such event") from exc
        except GoogleQueryError as exc:
            return json_response({"error": exc.message}, status=400)
        publish(state, google_calendar_changed(state, number, moved.calendar_id, at=moved.updated))
        return json_response(moved.to_json())

    async def admin_expire_sync_tokens(request: web.Request) -> web.Response:
        return json_response({"generation": store.expire_sync_tokens()})

    async def admin_expire_access_tokens(request: web.Request) -> web.Response:
        return json_response({"expired": store.tokens.expire_access_tokens()})

    async def admin_oauth(request: web.Request) -> web.Response:
        return json_response({"refreshes": store.tokens.refreshes, "invalid_grants": store.tokens.invalid_grants})

    app.router.add_get(f"{API_PREFIX}/calendars/{{calendar_id}}", get_calendar)
    app.router.add_get(f"{API_PREFIX}/calendars/{{calendar_id}}/events", list_events)
    app.router.add_post(TOKEN_PATH, token)
    app.router.add_get(f"{ADMIN_PREFIX}/accounts", admin_accounts)
    app.router.add_get(f"{ADMIN_PREFIX}/accounts/{{account}}/events", admin_events)
    events = f"{ADMIN_PREFIX}/accounts/{{account}}/calendars/{{calendar_id}}/events"
    app.router.add_post(events, admin_add)
    app.router.add_post(f"{events}/{{event_id}}/cancel", admin_cancel)
    app.router.add_post(f"{events}/{{event_id}}/reschedule", admin_reschedule)
    app.router.add_post(f"{ADMIN_PREFIX}/sync-tokens/expire", admin_expire_sync_tokens)
    app.router.add_post(f"{ADMIN_PREFIX}/oauth/expire-access-tokens", admin_expire_access_tokens)
    app.router.add_get(f"{ADMIN_PREFIX}/oauth", admin_oauth)


def _break_starts(body: dict[str, object], every: int) -> None:
    """The malformed-record knob: events whose position in the calendar's data is a multiple of
    `every` are served with an unreadable start."""
    items = body.get("items")
    if not isinstance(items, list):
        return
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("start"), dict) and int(item["id"][:8], 16) % every == 0:
            item["start"] = {"dateTime": "not-a-date"}
