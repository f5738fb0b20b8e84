"""The Calendly-shaped HTTP API (`/calendly/...`), its OAuth token endpoint and admin routes
(`/_admin/calendly/...`). aiohttp adapter; the semantics live in _calendly_data, _rate_window and
_oauth_tokens."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from aiohttp import web

from apptsync.simulator._acuity_data import QueryError
from apptsync.simulator._calendly_data import CalendlyAccount, render_invitee
from apptsync.simulator._http_admin import account_number, form_body, json_body, json_response, not_found
from apptsync.simulator._oauth_tokens import SIMULATOR_CLIENT_ID, SIMULATOR_CLIENT_SECRET, OAuthError
from apptsync.simulator._provider_guard import JsonReply, guarded
from apptsync.simulator._state import CALENDLY, SimulatorState
from apptsync.simulator._webhook_events import calendly_invitee_changed, publish

API_PREFIX = "/calendly"
ADMIN_PREFIX = "/_admin/calendly"
_TITLES = {400: "Invalid Argument", 401: "Unauthenticated", 403: "Permission Denied", 404: "Resource Not Found",
           429: "Too Many Requests"}  # fmt: skip


def calendly_error(status: int, error: str, message: str, headers: Mapping[str, str] | None = None) -> JsonReply:
    """Calendly's error shape: `{title, message}`."""
    del error
    return JsonReply(status, {"title": _TITLES.get(status, "Internal Server Error"), "message": message}, headers or {})


def add_calendly_routes(
    app: web.Application,
    state: SimulatorState,
    *,
    clock: Callable[[], datetime],
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    provider = state.providers[CALENDLY]
    store = state.calendly

    def limited(
        handle: Callable[[web.Request, CalendlyAccount], JsonReply],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            async def reply(r: web.Request) -> JsonReply:
                scheme, _, token = r.headers.get("Authorization", "").partition(" ")
                account = store.authenticate(token.strip()) if scheme.lower() == "bearer" else None
                if account is None:
                    return calendly_error(401, "unauthenticated", "The access token is invalid or expired.")
                knobs = provider.faults.knobs
                verdict = state.calendly_rates.admit(
                    account.user_uri,
                    now=monotonic(),
                    limit=knobs.rate_limit_requests,
                    window_seconds=knobs.rate_limit_window_seconds,
                )
                if not verdict.allowed:
                    return calendly_error(429, "too_many_requests", "Rate limit exceeded.", verdict.headers())
                answer = handle(r, account)
                return JsonReply(answer.status, answer.body, {**verdict.headers(), **answer.headers})

            return await guarded(request, provider, reply, render_error=calendly_error)

        return serve

    def list_events(request: web.Request, account: CalendlyAccount) -> JsonReply:
        knobs = provider.faults.knobs
        try:
            events, token = store.list_events(account, request.query, malformed_every=knobs.malformed_record_every)
        except QueryError as exc:
            return calendly_error(400, exc.error, exc.message)
        except PermissionError as exc:
            return calendly_error(403, "permission_denied", str(exc))
        return JsonReply(200, {"collection": events, "pagination": _pagination(request, events, token)})

    def list_invitees(request: web.Request, account: CalendlyAccount) -> JsonReply:
        try:
            invitees, token = store.list_invitees(account, request.match_info["uuid"], request.query)
        except KeyError:
            return calendly_error(404, "not_found", "The server could not find the requested resource.")
        except QueryError as exc:
            return calendly_error(400, exc.error, exc.message)
        return JsonReply(200, {"collection": invitees, "pagination": _pagination(request, invitees, token)})

    async def users_me(request: web.Request) -> web.Response:
        # Not `limited`: PutConnection's credential check takes no share of the rate window and no
        # fault injected for an import.
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        account = store.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if account is None:
            reply = calendly_error(401, "unauthenticated", "The access token is invalid or expired.")
        else:
            reply = JsonReply(200, {"resource": current_user(account)})
        return json_response(reply.body, status=reply.status)

    async def token(request: web.Request) -> web.StreamResponse:
        async def reply(r: web.Request) -> JsonReply:
            try:
                number, pair = store.tokens.refresh(await form_body(r))
            except OAuthError as exc:
                return JsonReply(exc.status, {"error": exc.error, "error_description": exc.description})
            account = store.accounts[number]
            return JsonReply(200, {
                "token_type": "Bearer", "access_token": pair.access_token, "refresh_token": pair.refresh_token,
                "expires_in": 7200, "created_at": int(clock().timestamp()), "scope": "default",
                "owner": account.user_uri, "organization": account.organization_uri,
            })  # fmt: skip

        return await guarded(request, provider, reply, render_error=calendly_error)

    async def admin_accounts(request: web.Request) -> web.Response:
        return json_response([
            {"account": a.number, "user": a.user_uri, "organization": a.organization_uri,
             "access_token": store.tokens.current(a.number).access_token,
             "refresh_token": store.tokens.current(a.number).refresh_token,
             "client_id": SIMULATOR_CLIENT_ID, "client_secret": SIMULATOR_CLIENT_SECRET,
             "invitees": len(store.invitees[a.number]), "events": len(store.events[a.number])}
            for a in store.accounts.values()
        ])  # fmt: skip

    async def admin_bookings(request: web.Request) -> web.Response:
        return json_response(store.bookings(account_number(request, store.accounts)))

    async def admin_add(request: web.Request) -> web.Response:
        number = account_number(request, store.accounts)
        try:
            added = store.add(number, await json_body(request), now=clock())
        except QueryError as exc:
            return json_response({"error": exc.message}, status=400)
        for invitee in added:
            publish(
                state, calendly_invitee_changed(state, number, invitee.uuid, "invitee.created", at=invitee.created_at)
            )
        return json_response([render_invitee(i) for i in added], status=201)

    async def admin_cancel(request: web.Request) -> web.Response:
        number = account_number(request, store.accounts)
        try:
            canceled = store.cancel(number, request.match_info["uuid"], now=clock())
        except KeyError as exc:
            raise not_found("no such invitee") from exc
        publish(
            state, calendly_invitee_changed(state, number, canceled.uuid, "invitee.canceled", at=canceled.updated_at)
        )
        return json_response(render_invitee(canceled))

    async def admin_reschedule(request: web.Request) -> web.Response:
        number = account_number(request, store.accounts)
        body = await json_body(request)
        try:
            new = store.reschedule(number, request.match_info["uuid"], body.get("start_time"), now=clock())
        except KeyError as exc:
            raise not_found("no such invitee") from exc
        except QueryError as exc:
            return json_response({"error": exc.message}, status=400)
        at = new.created_at  # Calendly's reschedule pair: the old invitee canceled, then the new one created
        publish(state, calendly_invitee_changed(state, number, request.match_info["uuid"], "invitee.canceled", at=at)
                + calendly_invitee_changed(state, number, new.uuid, "invitee.created", at=at))  # fmt: skip
        return json_response(render_invitee(new))

    async def admin_no_show(request: web.Request) -> web.Response:
        number = account_number(request, store.accounts)
        try:
            marked = store.mark_no_show(number, request.match_info["uuid"], now=clock())
        except KeyError as exc:
            raise not_found("no such invitee") from exc
        publish(
            state, calendly_invitee_changed(state, number, marked.uuid, "invitee_no_show.created", at=marked.updated_at)
        )
        return json_response(render_invitee(marked))

    async def admin_expire_tokens(request: web.Request) -> web.Response:
        return json_response({"expired": store.tokens.expire_access_tokens()})

    async def admin_oauth(request: web.Request) -> web.Response:
        return json_response({"refreshes": store.tokens.refreshes, "invalid_grants": store.tokens.invalid_grants,
                              "rate_limited": state.calendly_rates.rejected})  # fmt: skip

    app.router.add_get(f"{API_PREFIX}/users/me", users_me)
    app.router.add_get(f"{API_PREFIX}/scheduled_events", limited(list_events))
    app.router.add_get(f"{API_PREFIX}/scheduled_events/{{uuid}}/invitees", limited(list_invitees))
    app.router.add_post(f"{API_PREFIX}/oauth/token", token)
    app.router.add_get(f"{ADMIN_PREFIX}/accounts", admin_accounts)
    app.router.add_get(f"{ADMIN_PREFIX}/accounts/{{account}}/bookings", admin_bookings)
    app.router.add_post(f"{ADMIN_PREFIX}/accounts/{{account}}/events", admin_add)
    app.router.add_post(f"{ADMIN_PREFIX}/accounts/{{account}}/invitees/{{uuid}}/cancel", admin_cancel)
    app.router.add_post(f"{ADMIN_PREFIX}/accounts/{{account}}/invitees/{{uuid}}/reschedule", admin_reschedule)
    app.router.add_post(f"{ADMIN_PREFIX}/accounts/{{account}}/invitees/{{uuid}}/no_show", admin_no_show)
    app.router.add_post(f"{ADMIN_PREFIX}/oauth/expire-access-tokens", admin_expire_tokens)
    app.router.add_get(f"{ADMIN_PREFIX}/oauth", admin_oauth)


def current_user(account: CalendlyAccount) -> dict[str, object]:
    """The `resource` of `GET /users/me`: Calendly's User shape."""
    slug = f"clinic-{account.number}"
    return {
        "uri": account.user_uri, "name": account.name, "slug": slug, "email": account.email,
        "scheduling_url": f"https://calendly.com/{slug}", "timezone": "America/New_York", "avatar_url": None,
        "created_at": "2024-01-02T03:04:05.678123Z", "updated_at": "2024-01-02T03:04:05.678123Z",
        "current_organization": account.organization_uri, "resource_type": "User",
    }  # fmt: skip


def _pagination(request: web.Request, page: list[dict[str, object]], next_token: str | None) -> dict[str, object]:
    next_page = None
    if next_token is not None:
        query = {**request.query, "page_token": next_token}
        next_page = str(request.url.with_query(query))
    return {
        "count": len(page),
        "next_page": next_page,
        "previous_page": None,
        "next_page_token": next_token,
        "previous_page_token": None,
    }
