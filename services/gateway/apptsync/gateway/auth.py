"""Per-call bearer tokens mapped to the tenants they may act for (pure; no gRPC here).

The tokens file (mounted from a Secret) stores only SHA-256 digests of tokens, so a leaked file or
log does not leak a usable token:

    {"tokens": [{"name": "cronjob", "sha256": "<hex digest of the token>", "tenants": ["*"]},
                {"name": "clinic-app", "sha256": "...", "tenants": ["7d3c9a64-..."]}]}
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apptsync.shared.errors import InvalidArgumentError, PermanentError

ALL_TENANTS = "*"


class UnauthenticatedError(PermanentError):
    """No token, a malformed header, or an unknown token."""


class PermissionDeniedError(PermanentError):
    """A valid token that may not act for the requested tenant."""


@dataclass(frozen=True)
class Principal:
    name: str
    # None: every tenant.
    tenants: frozenset[str] | None

    def may_act_for(self, tenant_id: str) -> bool:
        return self.tenants is None or tenant_id in self.tenants

    def require(self, tenant_id: str) -> None:
        """Raises PermissionDeniedError unless this principal may act for `tenant_id`."""
        if not self.may_act_for(tenant_id):
            raise PermissionDeniedError(f"{self.name} may not act for tenant {tenant_id}")


ANONYMOUS_DEVELOPER = Principal(name="unauthenticated (development)", tenants=None)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenTable:
    def __init__(self, principals_by_digest: Mapping[str, Principal]) -> None:
        self._by_digest = dict(principals_by_digest)

    @classmethod
    def parse(cls, document: Any) -> TokenTable:
        """Builds the table from the decoded JSON document. Raises InvalidArgumentError."""
        if not isinstance(document, dict) or not isinstance(document.get("tokens"), list):
            raise InvalidArgumentError("auth_tokens_file", 'must be a JSON object with a "tokens" list')
        table: dict[str, Principal] = {}
        for entry in document["tokens"]:
            if not isinstance(entry, dict):
                raise InvalidArgumentError("auth_tokens_file", "each token must be an object")
            name, digest, tenants = entry.get("name"), entry.get("sha256"), entry.get("tenants")
            if not isinstance(name, str) or not isinstance(digest, str) or len(digest) != 64:
                raise InvalidArgumentError("auth_tokens_file", "each token needs a name and a sha256 hex digest")
            if not isinstance(tenants, list) or not tenants:
                raise InvalidArgumentError("auth_tokens_file", f"token {name!r} needs a non-empty tenants list")
            table[digest.lower()] = Principal(name=name, tenants=_tenant_set(name, tenants))
        return cls(table)

    @classmethod
    def from_file(cls, path: str) -> TokenTable:
        return cls.parse(json.loads(Path(path).read_text("utf-8")))

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
        """The principal of the call's `authorization: Bearer <token>`. Raises UnauthenticatedError."""
        header = next((value for key, value in metadata if key.lower() == "authorization"), None)
        if header is None:
            raise UnauthenticatedError("missing authorization metadata (Bearer token)")
        text = header.decode() if isinstance(header, bytes) else header
        scheme, _, token = text.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError("authorization must be 'Bearer <token>'")
        principal = self._by_digest.get(token_digest(token.strip()))
        if principal is None:
            raise UnauthenticatedError("unknown token")
        return principal


def _tenant_set(name: str, tenants: list[Any]) -> frozenset[str] | None:
    if ALL_TENANTS in tenants:
        return None
    normalized = set()
    for tenant in tenants:
        try:
            normalized.add(str(uuid.UUID(str(tenant))))
        except ValueError as exc:
            raise InvalidArgumentError("auth_tokens_file", f"token {name!r} lists a tenant that is not a UUID") from exc
    return frozenset(normalized)
