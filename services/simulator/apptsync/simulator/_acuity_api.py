"""The Acuity-shaped HTTP API (`/acuity/api/v1/...`) and its admin routes (`/_admin/acuity/...`)."""

from __future__ import annotations

import base64
import binascii
import json
from decimal import Decimal, InvalidOperation
from typing import cast

from aiohttp import web

from apptsync.simulator._acuity_clients import CENT, select_clients
from apptsync.simulator._acuity_data import AcuityAccount, AcuityAppointment, QueryError, select_appointments
from apptsync.simulator._provider_guard import EncodedJson, JsonReply, error_reply, guarded
from apptsync.simulator._state import ACUITY, SimulatorState

API_PREFIX = "/acuity/api/v1"
ADMIN_PREFIX = "/_admin/acuity"
_UNAUTHORIZED = error_reply(401, "unauthorized", "Unauthorized")


def add_acuity_routes(app: web.Application, state: SimulatorState) -> None:
    provider = state.providers[ACUITY]

    async def list_appointments(request: web.Request) -> web.StreamResponse:
        return await guarded(request, provider, lambda r: _list_appointments(r, state))

    async def get_appointment(request: web.Request) -> web.StreamResponse:
        return await guarded(request, provider, lambda r: _get_appointment(r, state))

    async def list_clients(request: web.Request) -> web.StreamResponse:
        return await guarded(request, provider, lambda r: _list_clients(r, state))

    async def list_payments(request: web.Request) -> web.StreamResponse:
        return await guarded(request, provider, lambda r: _list_payments(r, state))

    async def me(request: web.Request) -> web.Response:
        # Not `guarded`: PutConnection's credential check is no listing traffic, so it neither counts
        # as a provider request nor takes an injected fault meant for an import.
        reply = _me(request, state)
        return _json(reply.body, reply.status)

    async def accounts(request: web.Request) -> web.Response:
        return await _admin_accounts(state)

    async def data_set(request: web.Request) -> web.Response:
        return await _admin_data_set(request, state)

    async def add(request: web.Request) -> web.Response:
        return await _admin_add(request, state)

    async def cancel(request: web.Request) -> web.Response:
        return await _admin_cancel(request, state)

    async def reschedule(request: web.Request) -> web.Response:
        return await _admin_reschedule(request, state)

    async def admin_clients(request: web.Request) -> web.Response:
        return _json([c.to_json() for c in state.acuity.clients(_user_id(request, state))])

    async def admin_add_client(request: web.Request) -> web.Response:
        user_id = _user_id(request, state)
        return _json(state.acuity.add_client(user_id, await _body(request)).to_json(), status=201)

    async def admin_payments(request: web.Request) -> web.Response:
        return await _admin_payments(request, state)

    async def admin_add_payment(request: web.Request) -> web.Response:
        return await _admin_add_payment(request, state)

    app.router.add_get(f"{API_PREFIX}/me", me)
    app.router.add_get(f"{API_PREFIX}/appointments", list_appointments)
    app.router.add_get(f"{API_PREFIX}/appointments/{{appointment_id}}", get_appointment)
    app.router.add_get(f"{API_PREFIX}/appointments/{{appointment_id}}/payments", list_payments)
    app.router.add_get(f"{API_PREFIX}/clients", list_clients)
    app.router.add_get(f"{ADMIN_PREFIX}/accounts", accounts)
    app.router.add_get(f"{ADMIN_PREFIX}/accounts/{{user_id}}/appointments", data_set)
    app.router.add_post(f"{ADMIN_PREFIX}/accounts/{{user_id}}/appointments", add)
    app.router.add_post(f"{ADMIN_PREFIX}/accounts/{{user_id}}/appointments/{{appointment_id}}/cancel", cancel)
    app.router.add_post(f"{ADMIN_PREFIX}/accounts/{{user_id}}/appointments/{{appointment_id}}/reschedule", reschedule)
    app.router.add_get(f"{ADMIN_PREFIX}/accounts/{{user_id}}/clients", admin_clients)
    app.router.add_post(f"{ADMIN_PREFIX}/accounts/{{user_id}}/clients", admin_add_client)
    app.router.add_get(f"{ADMIN_PREFIX}/accounts/{{user_id}}/appointments/{{appointment_id}}/payments", admin_payments)
    app.router.add_post(
        f"{ADMIN_PREFIX}/accounts/{{user_id}}/appointments/{{appointment_id}}/payments", admin_add_payment
    )


def _authenticate(request: web.Request, state: SimulatorState) -> AcuityAccount | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return state.acuity.authenticate_bearer(value.strip())
    if scheme.lower() != "basic":
        return None
    try:
        user_id, _, api_key = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return state.acuity.authenticate_basic(user_id, api_key)


def _me(request: web.Request, state: SimulatorState) -> JsonReply:
    """`GET /me`: the account's basic information in Acuity's shape, or 401."""
    account = _authenticate(request, state)
    if account is None:
        return _UNAUTHORIZED
    return JsonReply(200, {
        "id": account.user_id, "email": f"owner{account.user_id}@studio.example", "name": f"Studio {account.user_id}",
        "timezone": "America/New_York", "currency": "USD", "firstDayOfWeek": 0, "timeFormat": "ampm",
        "schedulingPage": f"https://app.acuityscheduling.com/schedule.php?owner={account.user_id}",
    })  # fmt: skip


def _render(appointment: AcuityAppointment, *, include_forms: bool, malformed_every: int) -> dict[str, object]:
    record = appointment.to_json(include_forms=include_forms)
    if malformed_every and appointment.id % malformed_every == 0:
        record["datetime"] = "not-a-date"
    return record


async def _list_appointments(request: web.Request, state: SimulatorState) -> JsonReply:
    account = _authenticate(request, state)
    if account is None:
        return _UNAUTHORIZED
    knobs = state.providers[ACUITY].faults.knobs
    try:
        candidates = state.acuity.candidates(account.user_id, request.query, ignore_min_date=knobs.ignore_min_date)
        selected = select_appointments(candidates, request.query, ignore_min_date=knobs.ignore_min_date)
    except QueryError as exc:
        return error_reply(400, exc.error, exc.message)
    include_forms = request.query.get("excludeForms", "").lower() != "true"
    if not knobs.malformed_record_every:
        return JsonReply(200, _encoded_array(state, selected, include_forms=include_forms))
    body = [_render(a, include_forms=include_forms, malformed_every=knobs.malformed_record_every) for a in selected]
    return JsonReply(200, body)


def _encoded_array(state: SimulatorState, appointments: list[AcuityAppointment], *, include_forms: bool) -> EncodedJson:
    """The same bytes as json.dumps of the rendered list, from each appointment's kept rendering."""
    items = b", ".join(state.acuity.rendered(a, include_forms=include_forms) for a in appointments)
    return EncodedJson(b"[" + items + b"]")


async def _get_appointment(request: web.Request, state: SimulatorState) -> JsonReply:
    account = _authenticate(request, state)
    if account is None:
        return _UNAUTHORIZED
    appointment_id = request.match_info["appointment_id"]
    found = state.acuity.of(account.user_id).get(int(appointment_id)) if appointment_id.isdigit() else None
    if found is None:
        return error_reply(404, "not_found", "The appointment was not found.")
    return JsonReply(200, found.to_json())


async def _list_clients(request: web.Request, state: SimulatorState) -> JsonReply:
    """`GET /clients[?search=...]`: the account's clients (no id), see _acuity_clients."""
    account = _authenticate(request, state)
    if account is None:
        return _UNAUTHORIZED
    return JsonReply(200, [c.to_json() for c in select_clients(state.acuity.clients(account.user_id), request.query)])


async def _list_payments(request: web.Request, state: SimulatorState) -> JsonReply:
    """`GET /appointments/{id}/payments`: the appointment's payment entries (refunds negative)."""
    account = _authenticate(request, state)
    if account is None:
        return _UNAUTHORIZED
    appointment_id = request.match_info["appointment_id"]
    if not appointment_id.isdigit() or int(appointment_id) not in state.acuity.of(account.user_id):
        return error_reply(404, "not_found", "The appointment was not found.")
    return JsonReply(200, [p.to_json() for p in state.acuity.payments(account.user_id, int(appointment_id))])


def _json(body: object, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda value: json.dumps(value, ensure_ascii=False))


def _user_id(request: web.Request, state: SimulatorState) -> int:
    text = request.match_info["user_id"]
    if not text.isdigit() or int(text) not in state.acuity.accounts:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no acuity account {text}"}), content_type="application/json")
    return int(text)


def _appointment_id(request: web.Request) -> int:
    text = request.match_info["appointment_id"]
    if not text.isdigit():
        raise web.HTTPNotFound(text=json.dumps({"error": "no such appointment"}), content_type="application/json")
    return int(text)


async def _body(request: web.Request) -> dict[str, object]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body is not JSON"}), content_type="application/json"
        ) from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "body must be an object"}), content_type="application/json")
    return cast(dict[str, object], body)


async def _admin_accounts(state: SimulatorState) -> web.Response:
    return _json([
        {"user_id": a.user_id, "api_key": a.api_key, "access_token": a.access_token,
         "appointments": len(state.acuity.of(a.user_id))}
        for a in state.acuity.accounts.values()
    ])  # fmt: skip


async def _admin_data_set(request: web.Request, state: SimulatorState) -> web.Response:
    """A JSON array of every appointment of the account (canceled ones too), newest first, rendered as
    the API renders them (`?excludeForms=true` drops `forms`, as the API does)."""
    user_id = _user_id(request, state)
    include_forms = request.query.get("excludeForms", "").lower() != "true"
    ordered = sorted(state.acuity.of(user_id).values(), key=lambda a: (a.instant, a.id), reverse=True)
    body = _encoded_array(state, ordered, include_forms=include_forms).data
    return web.Response(body=body, content_type="application/json", charset="utf-8")


async def _admin_add(request: web.Request, state: SimulatorState) -> web.Response:
    user_id = _user_id(request, state)
    try:
        added = state.acuity.add(user_id, await _body(request))
    except QueryError as exc:
        return _json({"error": exc.message}, status=400)
    return _json(added.to_json(), status=201)


async def _admin_cancel(request: web.Request, state: SimulatorState) -> web.Response:
    user_id, appointment_id = _user_id(request, state), _appointment_id(request)
    body = await _body(request)
    try:
        canceled = state.acuity.cancel(user_id, appointment_id, no_show=body.get("no_show") is True)
    except KeyError:
        return _json({"error": "no such appointment"}, status=404)
    return _json(canceled.to_json())


async def _admin_reschedule(request: web.Request, state: SimulatorState) -> web.Response:
    user_id, appointment_id = _user_id(request, state), _appointment_id(request)
    body = await _body(request)
    try:
        moved = state.acuity.reschedule(user_id, appointment_id, body.get("datetime"))
    except KeyError:
        return _json({"error": "no such appointment"}, status=404)
    except QueryError as exc:
        return _json({"error": exc.message}, status=400)
    return _json(moved.to_json())


async def _admin_payments(request: web.Request, state: SimulatorState) -> web.Response:
    """The payment entries of any appointment of the account, deleted ones too."""
    user_id, appointment_id = _user_id(request, state), _appointment_id(request)
    try:
        payments = state.acuity.payments(user_id, appointment_id)
    except KeyError:
        return _json({"error": "no such appointment"}, status=404)
    return _json([p.to_json() for p in payments])


async def _admin_add_payment(request: web.Request, state: SimulatorState) -> web.Response:
    """`{"amount": "75.00"}` records a payment, `{"amount": "-75.00"}` a refund; answers the entry
    and the appointment as the API renders them."""
    user_id, appointment_id = _user_id(request, state), _appointment_id(request)
    body = await _body(request)
    try:
        amount = Decimal(str(body.get("amount")))
    except InvalidOperation:
        amount = Decimal(0)
    if not amount.is_finite() or not amount.quantize(CENT):
        return _json({"error": 'amount must be a non-zero money string such as "75.00"'}, status=400)
    try:
        entry = state.acuity.add_payment(user_id, appointment_id, amount.quantize(CENT))
    except KeyError:
        return _json({"error": "no such appointment"}, status=404)
    return _json({"payment": entry.to_json(), "appointment": state.acuity.of(user_id)[appointment_id].to_json()}, 201)
