"""The connections table: a tenant's provider account, with credentials encrypted at rest.

Reads for clients (`get_connection`) never carry the secret; only `load_connection_secrets`, used by
the fetcher to call the provider, decrypts it. Every function is tenant-scoped (`tenant_transaction`,
row-level security) except `list_connections`, which spans the caller's tenants through the SECURITY
DEFINER function `apptsync_list_connections` (migration 0004).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from apptsync.shared.db import DbConnection
from apptsync.shared.credentials import CredentialDecryptError, Keyring
from apptsync.shared.db.pool import DATABASE_ERRORS, tenant_transaction, translate_database_error


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


@dataclass
class KeyRotationReport:
    """Counts of one `reencrypt_credentials` run; `unreadable` names (tenant, connection) of
    credentials no key of the keyring decrypts (never anything of the credentials themselves)."""

    scanned: int = 0
    reencrypted: int = 0
    already_current: int = 0
    batches: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)


async def reencrypt_credentials(
    connection: DbConnection,
    *,
    keyring: Keyring,
    batch_size: int,
    after_batch: Callable[[KeyRotationReport], Awaitable[None]] | None = None,
) -> KeyRotationReport:
    """Re-encrypts every connection's credentials that are not under `keyring`'s primary (first)
    key, `batch_size` connections per committed transaction, in (tenant, connection) order, calling
    `after_batch` with the running counts after each commit.

    Resumable and idempotent: a row is rewritten (under its row lock, so a concurrent refresh is
    neither lost nor overwritten with stale credentials) only when its key is not the primary one, and
    a commit covers whole rows; so after a crash at any point every row decrypts under the old or the
    new key, and a rerun rewrites what is left. Rows no key decrypts are counted and left as they are.
    Raises StorageUnavailableError / PermanentError for database failures, and what `after_batch`
    raises (the batch before it is committed)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report = KeyRotationReport()
    after: tuple[str, str] | None = None
    try:
        while True:
            page = await list_connections(connection, tenant_ids=None, limit=batch_size, after=after)
            if not page:
                return report
            async with connection.transaction():
                for record in page:
                    await _reencrypt_one(connection, keyring=keyring, record=record, report=report)
            report.batches += 1
            after = (page[-1].tenant_id, page[-1].connection_id)
            if after_batch is not None:
                await after_batch(report)
    except DATABASE_ERRORS as exc:
        raise translate_database_error(exc) from exc


async def _reencrypt_one(
    connection: DbConnection, *, keyring: Keyring, record: ConnectionRecord, report: KeyRotationReport
) -> None:
    tenant_id, connection_id = record.tenant_id, record.connection_id
    async with tenant_transaction(connection, tenant_id):
        ciphertext = await connection.fetchval(
            "SELECT credentials_ciphertext FROM connections WHERE tenant_id = $1 AND connection_id = $2 FOR UPDATE",
            uuid.UUID(tenant_id),
            connection_id,
        )
        if ciphertext is None:
            return  # deleted since it was listed
        report.scanned += 1
        if keyring.is_current(bytes(ciphertext)):
            report.already_current += 1
            return
        try:
            credentials = keyring.decrypt(bytes(ciphertext), tenant_id=tenant_id, connection_id=connection_id)
        except CredentialDecryptError:
            report.unreadable.append((tenant_id, connection_id))
            return
        # updated_at stays: the connection as clients see it has not changed.
        await connection.execute(
            "UPDATE connections SET credentials_ciphertext = $3 WHERE tenant_id = $1 AND connection_id = $2",
            uuid.UUID(tenant_id),
            connection_id,
            keyring.encrypt(credentials, tenant_id=tenant_id, connection_id=connection_id),
        )
        report.reencrypted += 1
