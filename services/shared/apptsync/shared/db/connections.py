"""The connections table: a tenant's provider account, with credentials encrypted at rest.

Reads for clients (`get_connection`) never carry the secret; only `load_connection_secrets`, used by
the fetcher to call the provider, decrypts it. Every function is tenant-scoped (`tenant_transaction`,
row-level security) except `list_connections`, which spans the caller's tenants through the SECURITY
DEFINER function `apptsync_list_connections` (migration 0004).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from apptsync.shared.db import DbConnection
from apptsync.shared.credentials import Keyring
from apptsync.shared.db.pool import tenant_transaction


@dataclass(frozen=True)
class ConnectionRecord:
    """A connection as clients may see it: credential field names, never their values."""

    tenant_id: str
    connection_id: str
    external_source: str
    base_url: str
    settings: dict[str, str]
    credential_fields: list[str]
    created_at: datetime
    updated_at: datetime


def _record(row: asyncpg.Record) -> ConnectionRecord:
    return ConnectionRecord(
        tenant_id=str(row["tenant_id"]),
        connection_id=row["connection_id"],
        external_source=row["external_source"],
        base_url=row["base_url"],
        settings={str(k): str(v) for k, v in json.loads(row["settings"]).items()},
        credential_fields=list(row["credential_fields"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def put_connection(
    connection: DbConnection,
    *,
    keyring: Keyring,
    tenant_id: str,
    connection_id: str,
    external_source: str,
    base_url: str,
    credentials: Mapping[str, str],
    settings: Mapping[str, str],
    now: datetime,
) -> ConnectionRecord:
    """Creates or replaces the connection; credentials are encrypted bound to (tenant, connection)."""
    ciphertext = keyring.encrypt(credentials, tenant_id=tenant_id, connection_id=connection_id)
    async with tenant_transaction(connection, tenant_id):
        row = await connection.fetchrow(
        """INSERT INTO connections (tenant_id, connection_id, external_source, base_url, settings,
               credentials_ciphertext, credential_fields, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $8)
           ON CONFLICT (tenant_id, connection_id) DO UPDATE SET
               external_source = EXCLUDED.external_source, base_url = EXCLUDED.base_url,
               settings = EXCLUDED.settings, credentials_ciphertext = EXCLUDED.credentials_ciphertext,
               credential_fields = EXCLUDED.credential_fields, updated_at = EXCLUDED.updated_at
           RETURNING *""",
            uuid.UUID(tenant_id),
            connection_id,
            external_source,
            base_url,
            json.dumps(dict(settings)),
            ciphertext,
            sorted(credentials),
            now,
        )
    assert row is not None  # noqa: S101 -- narrows the type; an upsert's RETURNING always yields its row
    return _record(row)


async def get_connection(connection: DbConnection, *, tenant_id: str, connection_id: str) -> ConnectionRecord | None:
    async with tenant_transaction(connection, tenant_id):
        row = await connection.fetchrow(
            "SELECT * FROM connections WHERE tenant_id = $1 AND connection_id = $2", uuid.UUID(tenant_id), connection_id
        )
    return None if row is None else _record(row)


async def load_connection_secrets(
    connection: DbConnection, *, keyring: Keyring, tenant_id: str, connection_id: str
) -> tuple[ConnectionRecord, dict[str, str]] | None:
    """The connection and its decrypted credentials, or None when it does not exist.

    Raises CredentialDecryptError when the stored ciphertext does not authenticate."""
    async with tenant_transaction(connection, tenant_id):
        row = await connection.fetchrow(
            "SELECT * FROM connections WHERE tenant_id = $1 AND connection_id = $2", uuid.UUID(tenant_id), connection_id
        )
    if row is None:
        return None
    secrets = keyring.decrypt(bytes(row["credentials_ciphertext"]), tenant_id=tenant_id, connection_id=connection_id)
    return _record(row), secrets


async def list_connections(
    connection: DbConnection, *, tenant_ids: list[str] | None, limit: int, after: tuple[str, str] | None
) -> list[ConnectionRecord]:
    """Connections of `tenant_ids` (None: every tenant) ordered by (tenant, connection id), starting
    after the keyset of the previous page's last connection."""
    rows = await connection.fetch(
        "SELECT * FROM apptsync_list_connections($1::uuid[], $2::uuid, $3::text, $4::integer)",
        None if tenant_ids is None else [uuid.UUID(t) for t in tenant_ids],
        None if after is None else uuid.UUID(after[0]),
        None if after is None else after[1],
        limit,
    )
    return [_record(row) for row in rows]


async def delete_connection(connection: DbConnection, *, tenant_id: str, connection_id: str) -> bool:
    """Deletes the connection and its encrypted credentials; False when there was none."""
    async with tenant_transaction(connection, tenant_id):
        status = await connection.execute(
            "DELETE FROM connections WHERE tenant_id = $1 AND connection_id = $2", uuid.UUID(tenant_id), connection_id
        )
    return bool(status == "DELETE 1")
