"""Admin routes of the mirror-fidelity harness: seeded mutations and the truth a mirror must hold.

- `POST /_admin/mutations` `{"seed": int, "count": int, "near_term_days": 14, "providers": [...],
  "accounts": {"acuity": 1001, "calendly": 1, "google": 1}, "kinds": [...]}` (all but `seed`
  optional; accounts default to each provider's first; `kinds` limits the kinds drawn, e.g.
  `["new_client", "payment", "refund", "paid_invitee"]`, see _mutations.Kind) applies `count`
  mutations drawn by `random.Random(seed)` at the simulator's clock and answers `{"now": ...,
  "applied": [{provider, account, kind, key, related_keys, near_term_before, near_term_after}, ...]}`.
- `GET /_admin/{provider}/truth/{account}[?currency=USD]`: a JSON array of TruthRecord objects
  (see _truth), one per record the account has or had; `currency` is the Acuity connection's.
- `GET /_admin/{provider}/truth/{account}/contacts[?currency=USD]`: the account's contacts and
  revenue (see _contacts_truth for the rules): `{"contacts_total", "paying_contacts",
  "revenue_minor", "currency", "revenue_minor_by_currency", "contacts": [{"email", "phone", "name",
  "emails", "phones", "revenue_minor", "revenue_minor_by_currency"}, ...]}`; `currency` is the Acuity connection's and,
  for every provider, the currency `revenue_minor` and `paying_contacts` count in.

aiohttp adapter; the model lives in _mutations and _truth."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime

from aiohttp import web

from apptsync.simulator._contacts_truth import ContactsSummary, acuity_contacts, calendly_contacts, google_contacts
from apptsync.simulator._http_admin import json_body, json_response, not_found
from apptsync.simulator._mutations import NEAR_TERM_DAYS, Kind, apply_mutations
from apptsync.simulator._state import ACUITY, CALENDLY, GOOGLE, PROVIDERS, SimulatorState
from apptsync.simulator._truth import TruthRecord, acuity_truth, calendly_truth, google_truth

MAX_MUTATIONS_PER_CALL = 1_000


def add_fidelity_routes(app: web.Application, state: SimulatorState, *, clock: Callable[[], datetime]) -> None:
    def first_accounts() -> dict[str, int]:
        return {
            ACUITY: min(state.acuity.accounts),
            CALENDLY: min(state.calendly.accounts),
            GOOGLE: min(state.google.accounts),
        }

    async def mutations(request: web.Request) -> web.Response:
        body = await json_body(request)
        try:
            seed = _int(body, "seed", None)
            count = _int(body, "count", 10)
            near_term_days = _int(body, "near_term_days", NEAR_TERM_DAYS)
            providers = body.get("providers", list(PROVIDERS))
            accounts = {**first_accounts(), **_accounts(body.get("accounts", {}))}
            kinds = _kinds(body.get("kinds"))
        except (TypeError, ValueError) as exc:
            return json_response({"error": str(exc)}, status=400)
        if not isinstance(providers, list) or not providers or not set(providers) <= set(PROVIDERS):
            return json_response({"error": f"providers must be a non-empty list of {list(PROVIDERS)}"}, status=400)
        if not 0 <= count <= MAX_MUTATIONS_PER_CALL or near_term_days < 1:
            return json_response({"error": f"count must be 0..{MAX_MUTATIONS_PER_CALL}, near_term_days >= 1"}, 400)
        now = clock()
        try:
            applied = apply_mutations(
                state,
                rng=random.Random(seed),  # noqa: S311 -- seeded, reproducible test data, not a secret
                now=now,
                count=count,
                near_term_days=near_term_days,
                accounts=accounts,
                providers=[str(p) for p in providers],
                kinds=kinds,
            )
        except KeyError as exc:
            raise not_found(f"no account {exc}") from exc
        except ValueError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"now": now.isoformat(), "applied": [m.to_json() for m in applied]})

    async def truth(request: web.Request) -> web.Response:
        provider, text = request.match_info["provider"], request.match_info["account"]
        if not text.isdigit():
            raise not_found(f"no account {text}")
        number = int(text)
        records: list[TruthRecord]
        try:
            if provider == ACUITY:
                records = acuity_truth(state.acuity, number, currency=request.query.get("currency", "USD").upper())
            elif provider == CALENDLY:
                records = calendly_truth(state.calendly, number)
            elif provider == GOOGLE:
                records = google_truth(state.google, number)
            else:
                raise not_found(f"no provider {provider}")
        except KeyError as exc:
            raise not_found(f"no {provider} account {text}") from exc
        return json_response([r.to_json() for r in records])

    async def contacts(request: web.Request) -> web.Response:
        provider, text = request.match_info["provider"], request.match_info["account"]
        if not text.isdigit():
            raise not_found(f"no account {text}")
        number, currency = int(text), request.query.get("currency", "USD").upper()
        summary: ContactsSummary
        try:
            if provider == ACUITY:
                summary = acuity_contacts(state.acuity, number, currency=currency)
            elif provider == CALENDLY:
                summary = calendly_contacts(state.calendly, number, currency=currency)
            elif provider == GOOGLE:
                summary = google_contacts(state.google, number, currency=currency)
            else:
                raise not_found(f"no provider {provider}")
        except KeyError as exc:
            raise not_found(f"no {provider} account {text}") from exc
        return json_response(summary.to_json())

    app.router.add_post("/_admin/mutations", mutations)
    app.router.add_get("/_admin/{provider}/truth/{account}", truth)
    app.router.add_get("/_admin/{provider}/truth/{account}/contacts", contacts)


def _int(body: dict[str, object], key: str, default: int | None) -> int:
    value = body.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer")
    return value


def _accounts(value: object) -> dict[str, int]:
    if not isinstance(value, dict) or not all(isinstance(v, int) for v in value.values()):
        raise ValueError("accounts must map provider names to account numbers")
    return {str(k): int(v) for k, v in value.items()}


def _kinds(value: object) -> set[Kind] | None:
    if value is None:
        return None
    known = {kind.value for kind in Kind}
    if not isinstance(value, list) or not value or not all(isinstance(k, str) and k in known for k in value):
        raise ValueError(f"kinds must be a non-empty list of {sorted(known)}")
    return {Kind(k) for k in value}
