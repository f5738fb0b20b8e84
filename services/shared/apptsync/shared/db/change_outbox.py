"""The change outbox `appointment_changes` (migration 0013) from the relay's side: claim, delete, count.

Triggers on `appointments` fill the outbox in the transaction that changes a row; the relay reads it
across tenants through the SECURITY DEFINER functions of the migration only (docs/design.md
invariant 6). A claim holds its shard until the caller's transaction ends, so the caller claims,
publishes, deletes and commits in one transaction: another relay never publishes the same shard at
the same time (per-key order), and a relay that dies before its commit leaves the rows for the next
claim (at least once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from apptsync.shared.change_events import OutboxChange
from apptsync.shared.db.pool import DATABASE_ERRORS, translate_database_error

if TYPE_CHECKING:
    from apptsync.shared.db import DbConnection

# Shards of the outbox (apptsync_change_shard in migration 0013).
SHARDS = 16

CLAIM_CHANGES = """
SELECT c.change_id, c.tenant_id::text AS tenant_id, c.external_source, c.external_id, c.row_version,
       c.previous::text AS previous, c.state::text AS state, c.raw_changed
FROM apptsync_claim_changes($1, $2) AS c
"""
DELETE_CHANGES = "SELECT apptsync_delete_changes($1::bigint[])"
PENDING_CHANGES = "SELECT apptsync_pending_changes()"


def outbox_change(record: Any) -> OutboxChange:
    """An OutboxChange from a CLAIM_CHANGES row (jsonb as text, parsed here; orjson because the
    standard library's parser was 6 % of the writer's CPU in a 100,000-row first import)."""
    previous = record["previous"]
    return OutboxChange(
        change_id=record["change_id"],
        tenant_id=record["tenant_id"],
        external_source=record["external_source"],
        external_id=record["external_id"],
        row_version=record["row_version"],
        previous=None if previous is None else orjson.loads(previous),
        state=orjson.loads(record["state"]),
        raw_changed=record["raw_changed"],
    )


async def claim_changes(connection: DbConnection, *, limit: int, first_shard: int) -> list[OutboxChange]:
    """The oldest changes (at most `limit`) of one shard no other transaction holds, trying shards from
    `first_shard` on; empty when there is none. Call inside a transaction: the shard stays held until
    it ends. Raises StorageUnavailableError / PermanentError."""
    try:
        rows = await connection.fetch(CLAIM_CHANGES, limit, first_shard % SHARDS)
    except DATABASE_ERRORS as exc:
        raise translate_database_error(exc) from exc
    return [outbox_change(row) for row in rows]


async def delete_changes(connection: DbConnection, change_ids: list[int]) -> int:
    """Deletes published changes; returns how many were there. Raises like claim_changes."""
    try:
        deleted: int = await connection.fetchval(DELETE_CHANGES, change_ids)
    except DATABASE_ERRORS as exc:
        raise translate_database_error(exc) from exc
    return deleted


async def pending_changes(connection: DbConnection) -> int:
    """Changes waiting to be published, every tenant. Raises like claim_changes."""
    try:
        pending: int = await connection.fetchval(PENDING_CHANGES)
    except DATABASE_ERRORS as exc:
        raise translate_database_error(exc) from exc
    return pending
