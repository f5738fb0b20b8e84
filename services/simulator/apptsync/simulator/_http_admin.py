"""Small aiohttp pieces the provider modules' admin routes share (bodies, JSON replies, 404s)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import cast

from aiohttp import web


def json_response(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(
        body, status=status, headers=headers, dumps=lambda value: json.dumps(value, ensure_ascii=False)
    )


def not_found(what: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=json.dumps({"error": what}), content_type="application/json")


async def json_body(request: web.Request) -> dict[str, object]:
    """The request's JSON object body ({} when there is none). Raises HTTPBadRequest."""
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


def account_number(request: web.Request, known: Mapping[int, object]) -> int:
    """The `{account}` path segment as a known account number. Raises HTTPNotFound."""
    text = request.match_info["account"]
    if not text.isdigit() or int(text) not in known:
        raise not_found(f"no account {text}")
    return int(text)


async def form_body(request: web.Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body as a dict (OAuth token requests)."""
    form = await request.post()
    return {key: value for key, value in form.items() if isinstance(value, str)}
