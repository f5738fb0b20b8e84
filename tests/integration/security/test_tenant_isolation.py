"""Tenant isolation (invariant 6) through the services' own role, against a real PostgreSQL.

The migrations run as the owner (`database_url`, a superuser); everything under test connects as the
services' login role (`service_database_url`: a member of apptsync_service owning no table), so
row-level security is what stands between tenants. Each test names the mechanism it guards.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from apptsync.shared.credentials import Keyring
from apptsync.shared.db import connections as connections_db
from apptsync.shared.db import jobs as jobs_db
from apptsync.shared.db.migrator import migrate
from apptsync.shared.db.pool import tenant_transaction
from apptsync.shared.errors import PoisonMessageError
from apptsync.writer.accounting import decode_page
from apptsync.writer.store import write_pages
from tests.integration.writer.writer_database import insert_job, padded
from tests.unit.writer.page_builders import OTHER_TENANT, TENANT, page

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TENANT_TABLES = {"appointments", "connections", "contacts", "contact_identities", "import_job_dead_letters",
                 "import_job_pages", "import_jobs", "payments"}


@dataclasses.dataclass
class Databases:
    owner: asyncpg.Connection  # the truth, beyond row-level security
    service: asyncpg.Connection  # what the services are
    jobs: dict[str, str]  # tenant -> its import job


@pytest.fixture
async def databases(database_url: str, service_database_url: str) -> AsyncIterator[Databases]:
    """A migrated database holding one job, one connection and stored appointments per tenant."""
    owner = await asyncpg.connect(database_url)
    service = await asyncpg.connect(service_database_url)
    try:
        await migrate(owner)
        keyring = Keyring([("k1", bytes(32))])
        jobs = {}
        for tenant in (TENANT, OTHER_TENANT):
            jobs[tenant] = await insert_job(owner, tenant)
            await connections_db.put_connection(
                service, keyring=keyring, tenant_id=tenant, connection_id=f"conn-{tenant[:4]}",
                external_source="acuity", base_url="http://127.0.0.1:1", credentials={"api_key": "secret"},
                settings={}, now=NOW,
            )
            appointments = [padded(f"{tenant[:4]}-{i}", payments=[(f"{tenant[:4]}-t{i}", 100)]) for i in range(3)]
            decoded = decode_page(page(appointments, job_id=jobs[tenant], tenant_id=tenant).SerializeToString())
            await write_pages(service, [decoded])  # the writer, bound by the policies like any service
        yield Databases(owner, service, jobs)
    finally:
        await service.close()
        await owner.close()


async def test_every_table_with_a_tenant_id_has_forced_row_level_security(databases: Databases) -> None:
    """Guards migration 0004 and every later one: a new tenant table without enabled and forced row
    security fails here."""
    rows = await databases.owner.fetch(
        """SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                  EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid) AS has_policy
           FROM pg_class AS c
           JOIN pg_namespace AS n ON n.oid = c.relnamespace
           JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
           WHERE c.relkind IN ('r', 'p') AND n.nspname = 'public'""")
    tables = {row["relname"]: (row["relrowsecurity"], row["relforcerowsecurity"], row["has_policy"])
              for row in rows}

    assert set(tables) >= TENANT_TABLES
    unprotected = {name: flags for name, flags in tables.items() if flags != (True, True, True)}
    assert not unprotected, f"tables with tenant_id lacking enabled+forced row security or a policy: {unprotected}"


async def test_the_services_role_owns_nothing_and_cannot_bypass_row_security(databases: Databases) -> None:
    """Guards the role split: an owner, a superuser or a BYPASSRLS role would ignore every policy."""
    role = await databases.service.fetchrow(
        """SELECT rolsuper, rolbypassrls, pg_has_role(current_user, 'apptsync_service', 'MEMBER') AS member
           FROM pg_roles WHERE rolname = current_user""")
    owned = await databases.service.fetchval(
        "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)")

    assert role is not None and (role["rolsuper"], role["rolbypassrls"], role["member"]) == (False, False, True)
    assert owned == 0


async def test_without_a_tenant_every_table_is_empty_and_refuses_writes(databases: Databases) -> None:
    """Guards failing closed: no tenant context (never set, or set by an earlier transaction that
    ended: SET LOCAL) shows no row and accepts no write."""
    service = databases.service
    async with tenant_transaction(service, TENANT):
        assert await service.fetchval("SELECT count(*) FROM appointments") == 3
    # The same pooled-style connection, next transaction: the tenant did not leak.
    for table in sorted(TENANT_TABLES):
        assert await service.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    assert await service.fetchval("SELECT count(*) FROM contact_revenue") == 0
    assert await service.fetchval("SELECT count(*) FROM contact_revenue_by_currency") == 0
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await service.execute(
            """INSERT INTO contacts (tenant_id, external_source, match_key, name, email, phone, provider_client_id)
               VALUES ($1, 'acuity', 'email:x@example.org', '', '', '', '')""", uuid.UUID(TENANT))
    assert await service.execute("UPDATE appointments SET title = 'hijacked'") == "UPDATE 0"
    assert await service.execute("DELETE FROM import_jobs") == "DELETE 0"
    assert await databases.owner.fetchval("SELECT count(*) FROM appointments WHERE title = 'hijacked'") == 0


async def test_one_tenant_can_neither_read_nor_write_another_tenants_rows(databases: Databases) -> None:
    """Guards the tenant_isolation policies (USING and WITH CHECK): reads see one tenant, writes
    aimed at another tenant change nothing or are refused."""
    service, other = databases.service, uuid.UUID(OTHER_TENANT)
    async with tenant_transaction(service, TENANT):
        for table in sorted(TENANT_TABLES):
            tenants = await service.fetch(f"SELECT DISTINCT tenant_id::text AS t FROM {table}")
            assert {row["t"] for row in tenants} <= {TENANT}, table
        assert await service.fetchval("SELECT count(*) FROM appointments WHERE tenant_id = $1", other) == 0
        assert await service.fetchval("SELECT count(*) FROM contact_revenue WHERE tenant_id = $1", other) == 0
        assert await service.fetchval("SELECT count(*) FROM payments") == 3  # its own, written by the writer
        assert await service.execute("UPDATE appointments SET title = 'x' WHERE tenant_id = $1", other) == "UPDATE 0"
        assert await service.execute("DELETE FROM connections WHERE tenant_id = $1", other) == "DELETE 0"
    async with tenant_transaction(service, TENANT):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await service.execute("UPDATE appointments SET tenant_id = $1", other)  # moving rows out
    async with tenant_transaction(service, TENANT):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await service.execute(
                """INSERT INTO import_jobs (job_id, tenant_id, external_source, connection_id, window_start,
                       window_end, page_size, max_pages, max_in_flight_pages, stop_policy, stop_after_pages,
                       deadline_at, first_import)
                   VALUES ($1, $2, 'acuity', 'c', $3, $4, 1, 1, 1, 'NEVER', 1, $4, true)""",
                uuid.uuid4(), other, NOW, NOW + timedelta(days=1))
    untouched = await databases.owner.fetchval(
        "SELECT count(*) FROM appointments WHERE tenant_id = $1 AND title <> 'x'", other)
    assert untouched == 3


async def test_the_repositories_and_the_writer_stay_within_the_callers_tenant(databases: Databases) -> None:
    """Guards the tenant-scoped repositories (tenant_transaction) and the writer's tenant checks: a
    job or connection of tenant B is "not found" for tenant A, and a page claiming tenant B for
    tenant A's job writes nothing."""
    service = databases.service
    job_a = databases.jobs[TENANT]

    assert await jobs_db.get_job(service, tenant_id=OTHER_TENANT, job_id=job_a) is None
    assert (await jobs_db.get_job(service, tenant_id=TENANT, job_id=job_a)) is not None
    assert await jobs_db.request_cancel(service, tenant_id=OTHER_TENANT, job_id=job_a, now=NOW) is None
    assert await connections_db.get_connection(service, tenant_id=OTHER_TENANT,
                                               connection_id=f"conn-{TENANT[:4]}") is None
    listed = await connections_db.list_connections(service, tenant_ids=[TENANT], limit=10, after=None)
    assert [c.tenant_id for c in listed] == [TENANT]
    intruder = decode_page(page([padded("intruder")], page_no=2, job_id=job_a,
                                tenant_id=OTHER_TENANT).SerializeToString())
    with pytest.raises(PoisonMessageError):
        await write_pages(service, [intruder])
    assert await databases.owner.fetchval("SELECT count(*) FROM appointments WHERE external_id = 'intruder'") == 0


async def test_the_fetchers_cross_tenant_functions_work_for_the_services_role(databases: Databases) -> None:
    """Guards the SECURITY DEFINER functions: claiming over all tenants' queued jobs, then lease,
    progress, results and finish by job id, only for the lease owner."""
    service = databases.service
    claimed = [await jobs_db.claim_job(service, lease_owner="w1", lease_seconds=30, now=NOW) for _ in range(3)]

    assert sorted(job.tenant_id for job in claimed if job is not None) == sorted([TENANT, OTHER_TENANT])
    assert claimed[2] is None
    job_b = databases.jobs[OTHER_TENANT]
    assert await jobs_db.renew_lease(service, job_id=job_b, lease_owner="w1", lease_seconds=30, now=NOW) is False
    with pytest.raises(jobs_db.LeaseLostError):
        await jobs_db.renew_lease(service, job_id=job_b, lease_owner="intruder", lease_seconds=30, now=NOW)
    await jobs_db.save_progress(service, job_id=job_b, lease_owner="w1", cursor={"page": 2}, next_page_no=2,
                                pages_fetched=1, now=NOW)
    assert await jobs_db.page_results(service, job_b) == {1: (3, 3, 0, 0)}
    finished = await jobs_db.finish_job(service, job_id=job_b, lease_owner="w1", state="SUCCEEDED",
                                        stop_reason="provider exhausted", error="", now=NOW)
    assert (finished.state, finished.counts["inserted"], finished.next_page_no) == ("SUCCEEDED", 3, 2)
