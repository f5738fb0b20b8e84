"""The webhook_subscriptions table and the durable handoff of notifications to targeted-sync jobs.

Used by the webhook receiver (route a token, load the subscription's secrets, hand a notification on)
and by the gateway (store, read and delete a connection's subscription). Row-level security as for
every tenant table (migration 0012); the two cross-tenant reads are the SECURITY DEFINER functions
`apptsync_webhook_route` (token digest -> tenant and connection) and `apptsync_webhooks_expiring`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from apptsync.shared.db import DbConnection
from apptsync.shared.credentials import Keyring
from apptsync.shared.db.jobs import JOBS_QUEUED_CHANNEL
from apptsync.shared.db.pool import tenant_transaction
from apptsync.shared.webhooks import MAX_TARGETS_PER_JOB

# A targeted job's fixed options: it walks its targets to the end (NEVER), a page per
# TARGETED_PAGE_SIZE targets, inside a window wide enough for any appointment it is told about
# (a notification may name a booking moved years ahead; the normalizer still counts a record
# outside it as skipped_out_of_window).
TARGETED_PAGE_SIZE = 25
TARGETED_MAX_PAGES = 1000
TARGETED_MAX_IN_FLIGHT_PAGES = 8
TARGETED_DEADLINE_SECONDS = 600.0
TARGETED_WINDOW_DAYS_BEFORE = 2 * 366
TARGETED_WINDOW_DAYS_AFTER = 3 * 366
# The AES-GCM associated data of a subscription's secrets: the connection id with this suffix, so a
# subscription secret copied into a connection's credentials (or back) does not decrypt.
_SECRET_BINDING_SUFFIX = "#webhook"  # noqa: S105 -- associated data, not a secret


@dataclass(frozen=True)
class Route:
    """Whom a notification URL's token names."""

    tenant_id: str
    connection_id: str
    external_source: str


@dataclass(frozen=True)
class Subscription:
    """A connection's webhook subscription as stored (secrets decrypted only by `load_subscription_secrets`)."""

    tenant_id: str
    connection_id: str
    external_source: str
    state: str  # PENDING | ACTIVE | FAILED
    last_error: str
    provider_refs: dict[str, Any]
    expires_at: datetime | None
    last_notification_at: datetime | None
    notifications_accepted: int
    updated_at: datetime


@dataclass(frozen=True)
class Handoff:
    """What `enqueue_targets` did: the queued job that holds the targets, whether it was created (False:
    the targets joined a queued job of the connection), and the targets that did not fit (the job is
    full; the polling sync reconciles them)."""

    job_id: str
    created: bool
    overflowed: list[str] = field(default_factory=list)


def _subscription(row: asyncpg.Record) -> Subscription:
    return Subscription(
        tenant_id=str(row["tenant_id"]),
        connection_id=row["connection_id"],
        external_source=row["external_source"],
        state=row["state"],
        last_error=row["last_error"],
        provider_refs=json.loads(row["provider_refs"]),
        expires_at=row["expires_at"],
        last_notification_at=row["last_notification_at"],
        notifications_accepted=int(row["notifications_accepted"]),
        updated_at=row["updated_at"],
    )


async def route_by_token_digest(connection: DbConnection, token_sha256: bytes) -> Route | None:
    """The tenant and connection whose subscription has this path-token digest; None when none has."""
    row = await connection.fetchrow("SELECT * FROM apptsync_webhook_route($1)", token_sha256)
    if row is None:
        return None
    return Route(str(row["tenant_id"]), row["connection_id"], row["external_source"])


async def put_subscription(
    connection: DbConnection,
    *,
    keyring: Keyring,
    tenant_id: str,
    connection_id: str,
    external_source: str,
    token_sha256: bytes,
    secrets: dict[str, str],
    provider_refs: dict[str, Any],
    state: str,
    last_error: str,
    expires_at: datetime | None,
    now: datetime,
) -> Subscription:
    """Creates or replaces the connection's subscription (new token, secrets and provider refs)."""
    ciphertext = keyring.encrypt(secrets, tenant_id=tenant_id, connection_id=connection_id + _SECRET_BINDING_SUFFIX)
    async with tenant_transaction(connection, tenant_id):
        row = await connection.fetchrow(
            """INSERT INTO webhook_subscriptions (tenant_id, connection_id, external_source, token_sha256,
                   secret_ciphertext, provider_refs, state, last_error, expires_at, created_at, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $10)
               ON CONFLICT (tenant_id, connection_id) DO UPDATE SET
                   external_source = EXCLUDED.external_source, token_sha256 = EXCLUDED.token_sha256,
                   secret_ciphertext = EXCLUDED.secret_ciphertext, provider_refs = EXCLUDED.provider_refs,
                   state = EXCLUDED.state, last_error = EXCLUDED.last_error, expires_at = EXCLUDED.expires_at,
                   updated_at = EXCLUDED.updated_at
               RETURNING *""",
            uuid.UUID(tenant_id),
            connection_id,
            external_source,
            token_sha256,
            ciphertext,
            json.dumps(provider_refs, sort_keys=True),
            state,
            last_error,
            expires_at,
            now,
        )
    assert row is not None  # noqa: S101 -- an upsert's RETURNING always yields its row
    return _subscription(row)


async def update_subscription(
    connection: DbConnection,
    *,
    tenant_id: str,
    connection_id: str,
    provider_refs: dict[str, Any],
    state: str,
    last_error: str,
    expires_at: datetime | None,
    now: datetime,
) -> Subscription | None:
    """Stores the outcome of a renewal (same token and secrets); None when the subscription is gone."""
    async with tenant_transaction(connection, tenant_id):
        row = await connection.fetchrow(
            """UPDATE webhook_subscriptions SET provider_refs = $3::jsonb, state = $4, last_error = $5,
                   expires_at = $6, updated_at = $7
               WHERE tenant_id = $1 AND connection_id = $2 RETURNING *""",
            uuid.UUID(tenant_id),
            connection_id,
            json.dumps(provider_refs, sort_keys=True),
            state,
            last_error,
            expires_at,
            now,
        )
    return None if row is None else _subscription(row)


async def _subscription_row(connection: DbConnection, tenant_id: str, connection_id: str) -> asyncpg.Record | None:
    async with tenant_transaction(connection, tenant_id):
        row: asyncpg.Record | None = await connection.fetchrow(
            "SELECT * FROM webhook_subscriptions WHERE tenant_id = $1 AND connection_id = $2",
            uuid.UUID(tenant_id),
            connection_id,
        )
    return row


async def get_subscription(connection: DbConnection, *, tenant_id: str, connection_id: str) -> Subscription | None:
    row = await _subscription_row(connection, tenant_id, connection_id)
    return None if row is None else _subscription(row)


async def load_subscription_secrets(
    connection: DbConnection, *, keyring: Keyring, tenant_id: str, connection_id: str
) -> tuple[Subscription, dict[str, str]] | None:
    """The subscription and its decrypted secrets; None when it does not exist.

    Raises CredentialDecryptError when the stored ciphertext does not authenticate."""
    row = await _subscription_row(connection, tenant_id, connection_id)
    if row is None:
        return None
    stored = row["secret_ciphertext"]
    secrets = (
        {}
        if stored is None
        else keyring.decrypt(bytes(stored), tenant_id=tenant_id, connection_id=connection_id + _SECRET_BINDING_SUFFIX)
    )
    return _subscription(row), secrets


async def delete_subscription(connection: DbConnection, *, tenant_id: str, connection_id: str) -> Subscription | None:
    """Deletes the subscription row; the deleted row (its provider refs: what to remove at the
    provider), or None when there was none."""
    async with tenant_transaction(connection, tenant_id):
        row = await connection.fetchrow(
            "DELETE FROM webhook_subscriptions WHERE tenant_id = $1 AND connection_id = $2 RETURNING *",
            uuid.UUID(tenant_id),
            connection_id,
        )
    return None if row is None else _subscription(row)


async def expiring_subscriptions(connection: DbConnection, *, before: datetime, limit: int) -> list[Route]:
    """Subscriptions (of every tenant) whose provider side expires before `before`, soonest first."""
    rows = await connection.fetch("SELECT * FROM apptsync_webhooks_expiring($1, $2)", before, limit)
    return [Route(str(row["tenant_id"]), row["connection_id"], row["external_source"]) for row in rows]


async def enqueue_targets(
    connection: DbConnection,
    *,
    route: Route,
    targets: list[str],
    traceparent: str,
    trace_id: str,
    now: datetime,
    google_channel: tuple[str, int] | None = None,
) -> Handoff | None:
    """Hands a verified notification on durably, in one short transaction: its targets join the
    connection's queued targeted job, or a new one is queued; the fetchers are notified at commit.
    The subscription's last notification time and count are updated in the same transaction.

    `google_channel` (channel id, message number): the message is handed on only when its number is
    above the channel's last one (stored in the same transaction); None is returned for a duplicate,
    and nothing is written.

    Coalescing (`apptsync.shared.webhooks.merge_targets` states the rule): the partial unique index
    `import_jobs_one_queued_targeted` admits one QUEUED targeted job per connection; the upsert appends
    new targets to it (a set, in arrival order, at most MAX_TARGETS_PER_JOB). A job claimed meanwhile
    has left that index, so the upsert then queues the next job: no target is ever added to a job that
    already runs."""
    tenant = uuid.UUID(route.tenant_id)
    async with tenant_transaction(connection, route.tenant_id):
        if google_channel is not None:
            channel_id, number = google_channel
            advanced = await connection.fetchval(
                """UPDATE webhook_subscriptions
                   SET provider_refs = jsonb_set(provider_refs, ARRAY['message_numbers', $3::text],
                                                 to_jsonb($4::bigint))
                   WHERE tenant_id = $1 AND connection_id = $2
                     AND provider_refs ? 'message_numbers'
                     AND COALESCE((provider_refs -> 'message_numbers' ->> $3::text)::bigint, -1) < $4
                   RETURNING 1""",
                tenant,
                route.connection_id,
                channel_id,
                number,
            )
            if advanced is None:
                # Either a duplicate, or the row predates message numbers: start them.
                started = await connection.fetchval(
                    """UPDATE webhook_subscriptions
                       SET provider_refs = provider_refs || jsonb_build_object('message_numbers',
                                                                               jsonb_build_object($3::text, $4::bigint))
                       WHERE tenant_id = $1 AND connection_id = $2 AND NOT provider_refs ? 'message_numbers'
                       RETURNING 1""",
                    tenant,
                    route.connection_id,
                    channel_id,
                    number,
                )
                if started is None:
                    return None
        row = await connection.fetchrow(
            """INSERT INTO import_jobs (job_id, tenant_id, external_source, connection_id, kind, targets,
                   window_start, window_end, page_size, max_pages, max_in_flight_pages, stop_policy,
                   stop_after_pages, deadline_at, first_import, trace_id, traceparent, created_at, updated_at)
               VALUES ($1, $2, $3, $4, 'targeted', $5::jsonb, $6, $7, $8, $9, $10, 'NEVER', 1, $11, false,
                       $12, $13, $14, $14)
               ON CONFLICT (tenant_id, external_source, connection_id) WHERE state = 'QUEUED' AND kind = 'targeted'
               DO UPDATE SET targets = (
                   SELECT COALESCE(jsonb_agg(merged.target ORDER BY merged.first_at), '[]'::jsonb)
                   FROM (SELECT element.target, min(element.at) AS first_at
                         FROM jsonb_array_elements_text(import_jobs.targets || EXCLUDED.targets)
                              WITH ORDINALITY AS element(target, at)
                         GROUP BY element.target
                         ORDER BY min(element.at)
                         LIMIT $15) AS merged),
                   updated_at = EXCLUDED.updated_at
               RETURNING job_id, (xmax = 0) AS created, targets""",
            uuid.uuid4(),
            tenant,
            route.external_source,
            route.connection_id,
            json.dumps(targets),
            now - timedelta(days=TARGETED_WINDOW_DAYS_BEFORE),
            now + timedelta(days=TARGETED_WINDOW_DAYS_AFTER),
            TARGETED_PAGE_SIZE,
            TARGETED_MAX_PAGES,
            TARGETED_MAX_IN_FLIGHT_PAGES,
            now + timedelta(seconds=TARGETED_DEADLINE_SECONDS),
            trace_id,
            traceparent,
            now,
            MAX_TARGETS_PER_JOB,
        )
        assert row is not None  # noqa: S101 -- an upsert's RETURNING always yields its row
        held = set(json.loads(row["targets"]))
        await connection.execute(
            """UPDATE webhook_subscriptions SET last_notification_at = $3,
                   notifications_accepted = notifications_accepted + 1
               WHERE tenant_id = $1 AND connection_id = $2""",
            tenant,
            route.connection_id,
            now,
        )
        # Also when the targets joined a queued job: a fetcher's claim that ran while this upsert held
        # the row's lock skipped it (SKIP LOCKED), and would otherwise wait for its next poll.
        await connection.execute("SELECT pg_notify($1, $2)", JOBS_QUEUED_CHANNEL, str(row["job_id"]))
    return Handoff(
        job_id=str(row["job_id"]), created=bool(row["created"]), overflowed=[t for t in targets if t not in held]
    )
