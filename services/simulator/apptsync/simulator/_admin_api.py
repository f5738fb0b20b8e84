"""Provider-independent admin routes: health, fault knobs and request counters per provider."""

from __future__ import annotations

import json

import pydantic
from aiohttp import web

from apptsync.simulator._state import SimulatorState


def add_admin_routes(app: web.Application, state: SimulatorState) -> None:
    async def health(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "providers": sorted(state.providers), "anchor_date": state.anchor.isoformat()}
        )

    def provider_of(request: web.Request) -> str:
        name = request.match_info["provider"]
        if name not in state.providers:
            raise web.HTTPNotFound(text=json.dumps({"error": f"no provider {name}"}), content_type="application/json")
        return name

    async def get_faults(request: web.Request) -> web.Response:
        return web.json_response(state.providers[provider_of(request)].faults.knobs.model_dump())

    async def put_faults(request: web.Request) -> web.Response:
        faults = state.providers[provider_of(request)].faults
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise TypeError("fault knobs must be a JSON object")
            knobs = faults.update(changes)
        except (json.JSONDecodeError, TypeError, pydantic.ValidationError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(knobs.model_dump())

    async def delete_faults(request: web.Request) -> web.Response:
        faults = state.providers[provider_of(request)].faults
        defaults: dict[str, object] = {}
        faults.knobs = faults.knobs.model_validate(defaults)
        return web.json_response(faults.knobs.model_dump())

    async def get_counters(request: web.Request) -> web.Response:
        return web.json_response(state.providers[provider_of(request)].counters.snapshot())

    async def delete_counters(request: web.Request) -> web.Response:
        counters = state.providers[provider_of(request)].counters
        counters.reset()
        return web.json_response(counters.snapshot())

    app.router.add_get("/_admin/health", health)
    app.router.add_get("/_admin/{provider}/faults", get_faults)
    app.router.add_put("/_admin/{provider}/faults", put_faults)
    app.router.add_delete("/_admin/{provider}/faults", delete_faults)
    app.router.add_get("/_admin/{provider}/counters", get_counters)
    app.router.add_delete("/_admin/{provider}/counters", delete_counters)
