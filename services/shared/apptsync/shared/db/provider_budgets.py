"""Provider request budgets shared by every fetcher replica behind one egress IP (migration 0010).

A budget is one row per (provider, budget key): the next free request slot (slots one spacing apart,
whichever replica takes them), a pause set when the provider answered 429, and one lease per request
in flight (bounded concurrency; a lease expires on its own when its replica dies). Every function takes
a connection and runs one statement; the SECURITY DEFINER functions of the migrations do the work
atomically under the budget's row lock. `acquire` also ends the leases of requests the caller finished
since its previous statement (migration 0017): a busy fetcher pays one statement per request, not two. Why
PostgreSQL and not Redis or a per-replica share: see migration 0010.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from apptsync.shared.errors import PermanentError

# Every statement here commits on its own, about once per provider request. Budget rows are soft
# state (a lost slot or lease only lets a request start a moment early, as an expired lease does), so
# these commits do not wait for the WAL flush: with synchronous_commit on, two flushes per request
# serialized on the budget's row lock bounded a fetcher to ~140 requests/s (measured, 20,000
# appointments with their payment requests). set_config(..., true) lasts to the end of the statement's
# own transaction, which is the one that commits.
_ACQUIRE = (
    "SELECT set_config('synchronous_commit', 'off', true), lease_id, wait_seconds FROM apptsync_budget_acquire("
    "$1, $2, $3, $4::double precision, $5::integer, $6::double precision, $7::timestamptz, $8::bigint[])"
)
_RELEASE = "SELECT set_config('synchronous_commit', 'off', true), apptsync_budget_release($1::bigint)"
_RELEASE_MANY = "SELECT set_config('synchronous_commit', 'off', true), apptsync_budget_release_many($1::bigint[])"

if TYPE_CHECKING:
    from apptsync.shared.db import DbConnection


@dataclass(frozen=True, slots=True)
class BudgetGrant:
    """`lease_id` None: the budget's concurrency is spent, nothing was reserved; ask again after
    `wait_seconds`. Otherwise a request slot `wait_seconds` from now, held by the lease."""

    lease_id: int | None
    wait_seconds: float


async def acquire(
    connection: DbConnection,
    *,
    provider: str,
    budget_key: str,
    holder: str,
    spacing_seconds: float,
    max_concurrent: int,
    lease_seconds: float,
    now: datetime | None = None,
    finished_leases: Sequence[int] = (),
) -> BudgetGrant:
    """Reserves one request: a lease (at most `max_concurrent` live per budget) and the next slot,
    `spacing_seconds` after the previously reserved one and not before a pause ends. The lease expires
    `lease_seconds` after its slot. `now` None: the database's clock, the one every replica shares.

    First ends `finished_leases` (leases of the caller's requests that are done, of any budget), in the
    same statement and before the leases are counted: one of them frees room for this request. Ending
    them is idempotent (an unknown, expired or released lease is no error). When this raises, whether
    they were ended is unknown: the caller may hand them to a later statement."""
    row = await connection.fetchrow(
        _ACQUIRE,
        provider,
        budget_key,
        holder,
        spacing_seconds,
        max_concurrent,
        lease_seconds,
        now,
        list(finished_leases),
    )
    if row is None:  # the function always returns one row: a missing one is a broken deployment
        raise PermanentError("apptsync_budget_acquire returned no row")
    lease_id = row["lease_id"]
    return BudgetGrant(None if lease_id is None else int(lease_id), max(0.0, float(row["wait_seconds"])))


async def release(connection: DbConnection, *, lease_id: int) -> None:
    """Ends a request's lease (idempotent: an expired or released lease is no error)."""
    await connection.execute(_RELEASE, lease_id)


async def release_many(connection: DbConnection, *, lease_ids: Sequence[int]) -> None:
    """Ends the leases of several requests in one statement (idempotent, as `release`)."""
    await connection.execute(_RELEASE_MANY, list(lease_ids))


async def pause(
    connection: DbConnection, *, provider: str, budget_key: str, pause_seconds: float, now: datetime | None = None
) -> datetime:
    """No slot of the budget is granted for `pause_seconds` from `now` (None: the database's clock);
    a longer pause already set stays. Returns the end of the pause in force."""
    until: datetime = await connection.fetchval(
        "SELECT apptsync_budget_pause($1, $2, $3::double precision, $4::timestamptz)",
        provider,
        budget_key,
        pause_seconds,
        now,
    )
    return until
