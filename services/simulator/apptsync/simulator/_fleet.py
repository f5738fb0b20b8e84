"""Many small accounts at once, for the fleet benchmark (`make bench-fleet`): each new account gets its
own size, seeded as the stores seed their first accounts (same generators, same seed rules).

`POST /_admin/fleet` `{"seed": 7, "sizes": {"acuity": [50, 1200, ...], "calendly": [...], "google": [...]}}`
adds one account per size after each provider's existing ones and answers the accounts it made:
`{"acuity": [{"account": 1004, "user_id": "1004", "api_key": "...", "appointments": 50}, ...],
"calendly": [{"account": 4, "access_token": ..., "refresh_token": ..., "client_id": ..., "client_secret": ...,
"organization": ..., "invitees": ...}], "google": [{"account": 4, ..., "calendar_ids": [...]}]}`.
At most MAX_FLEET_ACCOUNTS accounts and MAX_FLEET_RECORDS records per call.

The stores' constructors seed accounts 1..N with one size; this module adds accounts to them after
construction (the simulator's modules share these internals; no store changes its behaviour)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime

from aiohttp import web

from apptsync.simulator._acuity_data import DATA_SPREAD_DAYS, seeded_appointments, seeded_clients
from apptsync.simulator._acuity_data import account_for as acuity_account
from apptsync.simulator._calendly_data import account_for as calendly_account
from apptsync.simulator._google_data import account_for as google_account
from apptsync.simulator._http_admin import json_body, json_response
from apptsync.simulator._oauth_tokens import SIMULATOR_CLIENT_ID, SIMULATOR_CLIENT_SECRET
from apptsync.simulator._state import ACUITY, CALENDLY, GOOGLE, SimulatorState

MAX_FLEET_ACCOUNTS = 5_000
MAX_FLEET_RECORDS = 5_000_000


def fleet_sizes(body: Mapping[str, object]) -> dict[str, list[int]]:
    """The validated `sizes` of a fleet request. Raises ValueError (the reason)."""
    sizes = body.get("sizes")
    if not isinstance(sizes, dict) or not set(sizes) <= {ACUITY, CALENDLY, GOOGLE}:
        raise ValueError("sizes must map acuity, calendly or google to lists of account sizes")
    parsed: dict[str, list[int]] = {}
    for provider, values in sizes.items():
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"sizes.{provider} must be a list of integers")
        if any(v < 0 for v in values):
            raise ValueError(f"sizes.{provider} must not be negative")
        parsed[str(provider)] = [int(v) for v in values]
    if sum(len(v) for v in parsed.values()) > MAX_FLEET_ACCOUNTS:
        raise ValueError(f"at most {MAX_FLEET_ACCOUNTS} accounts per call")
    if sum(sum(v) for v in parsed.values()) > MAX_FLEET_RECORDS:
        raise ValueError(f"at most {MAX_FLEET_RECORDS} records per call")
    return parsed


def add_acuity_accounts(
    state: SimulatorState, sizes: Sequence[int], *, seed: int, anchor: date
) -> list[dict[str, object]]:
    store = state.acuity
    made = []
    for size in sizes:
        user_id = max(store.accounts) + 1
        account = acuity_account(user_id)
        appointments = seeded_appointments(
            seed=seed, user_id=user_id, count=size, anchor=anchor, spread_days=DATA_SPREAD_DAYS, now=store.clock()
        )
        # Installed whole, clients included: the fetcher asks every Acuity account for its clients.
        store.install(
            account, appointments, clients=seeded_clients(seed=seed, user_id=user_id, appointments=appointments)
        )
        made.append({"account": user_id, "user_id": str(user_id), "api_key": account.api_key, "appointments": size})
    return made


def add_calendly_accounts(
    state: SimulatorState, sizes: Sequence[int], *, seed: int, anchor: date
) -> list[dict[str, object]]:
    store = state.calendly
    made = []
    for size in sizes:
        number = max(store.accounts) + 1
        account = calendly_account(number)
        store.accounts[number] = account
        store.events[number], store.invitees[number], store._by_event[number] = {}, {}, {}
        store.removed[number] = {}
        pair = store.tokens.issue(number)
        store._seed(account, seed=seed, count=size, anchor=anchor, now=store.clock())
        made.append({
            "account": number, "access_token": pair.access_token, "refresh_token": pair.refresh_token,
            "client_id": SIMULATOR_CLIENT_ID, "client_secret": SIMULATOR_CLIENT_SECRET,
            "organization": account.organization_uri, "invitees": len(store.invitees[number]),
        })  # fmt: skip
    return made


def add_google_accounts(
    state: SimulatorState, sizes: Sequence[int], *, seed: int, anchor: date
) -> list[dict[str, object]]:
    store = state.google
    made = []
    for size in sizes:
        number = max(store.accounts) + 1
        account = google_account(number)
        store.accounts[number] = account
        store.events[number] = {}
        pair = store.tokens.issue(number)
        rng = random.Random(f"apptsync-simulator:{seed}:google:{number}")  # noqa: S311 -- seeded, reproducible test data, not a secret
        now = store.clock()
        for n in range(1, size + 1):
            store._put(number, store._seeded(rng, account, n, anchor=anchor, now=now))
        made.append({
            "account": number, "access_token": pair.access_token, "refresh_token": pair.refresh_token,
            "client_id": SIMULATOR_CLIENT_ID, "client_secret": SIMULATOR_CLIENT_SECRET,
            "calendar_ids": [c.id for c in account.calendars], "events": size,
        })  # fmt: skip
    return made


def add_fleet_routes(app: web.Application, state: SimulatorState, *, clock: Callable[[], datetime]) -> None:
    del clock  # accounts are stamped by each store's own clock, as the constructors stamp them

    async def fleet(request: web.Request) -> web.Response:
        body = await json_body(request)
        try:
            sizes = fleet_sizes(body)
            seed = body.get("seed", 0)
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise ValueError("seed must be an integer")
        except ValueError as exc:
            return json_response({"error": str(exc)}, status=400)
        adders = {ACUITY: add_acuity_accounts, CALENDLY: add_calendly_accounts, GOOGLE: add_google_accounts}
        made = {p: adders[p](state, sizes.get(p, []), seed=seed, anchor=state.anchor) for p in adders}
        return json_response(made)

    app.router.add_post("/_admin/fleet", fleet)
