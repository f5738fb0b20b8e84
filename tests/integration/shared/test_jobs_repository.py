"""import_jobs against real PostgreSQL: one active job per connection, leases, claims and their guards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg
import pytest

from apptsync.shared.db import jobs as jobs_db
from apptsync.shared.db.migrator import migrate
from apptsync.shared.db.pool import tenant_transaction

if TYPE_CHECKING:
    # Defined for type checking only (apptsync.shared.db): importing it at run time fails.
    from apptsync.shared.db import DbConnection

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
OPTIONS = jobs_db.JobOptions(
    page_size=100,
    max_pages=10,
    max_in_flight_pages=4,
    stop_policy="NO_NEW_RECORDS",
    stop_after_pages=1,
    deadline_seconds=600,
)


def new_job(
    tenant_id: str,
    connection_id: str = "main",
    idempotency_key: str | None = None,
    fingerprint: dict[str, jobs_db.FingerprintValue] | None = None,
) -> jobs_db.NewJob:
    return jobs_db.NewJob(
        tenant_id=tenant_id,
        external_source="acuity",
        connection_id=connection_id,
        window_start=NOW - timedelta(days=1),
        window_end=NOW + timedelta(days=1),
        options=OPTIONS,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
    )


async def job_count(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM import_jobs"))


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    connection = await asyncpg.connect(database_url)
    await migrate(connection)
    await connection.close()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=25)
    yield pool
    await pool.close()


async def test_concurrent_creates_make_one_active_job(pool: asyncpg.Pool) -> None:
    tenant = str(uuid.uuid4())

    async def create() -> tuple[jobs_db.JobRecord, bool]:
        async with pool.acquire() as conn:
            return await jobs_db.create_job(conn, new_job(tenant), now=NOW)

    results = await asyncio.gather(*(create() for _ in range(20)))
    assert len({job.job_id for job, _ in results}) == 1
    assert sum(not existed for _, existed in results) == 1


async def test_claim_renew_and_a_stale_owner_cannot_write(pool: asyncpg.Pool) -> None:
    tenant = str(uuid.uuid4())
    async with pool.acquire() as conn:
        created, _ = await jobs_db.create_job(conn, new_job(tenant), now=NOW)
        claimed = await jobs_db.claim_job(conn, lease_owner="a#1", lease_seconds=5, now=NOW)
        assert claimed is not None
        assert claimed.job_id == created.job_id
        assert await jobs_db.claim_job(conn, lease_owner="b#1", lease_seconds=5, now=NOW + timedelta(seconds=1)) is None
        assert (
            await jobs_db.renew_lease(
                conn, job_id=created.job_id, lease_owner="a#1", lease_seconds=5, now=NOW + timedelta(seconds=4)
            )
            is False
        )
        # The lease runs out 5 s after the renewal: another claim takes the job over.
        taken = await jobs_db.claim_job(conn, lease_owner="a#2", lease_seconds=5, now=NOW + timedelta(seconds=10))
        assert taken is not None
        assert taken.lease_owner == "a#2"
        with pytest.raises(jobs_db.LeaseLostError):
            await jobs_db.save_progress(
                conn,
                job_id=created.job_id,
                lease_owner="a#1",
                cursor={"c": 1},
                next_page_no=2,
                pages_fetched=1,
                now=NOW + timedelta(seconds=11),
            )
        with pytest.raises(jobs_db.LeaseLostError):
            await jobs_db.renew_lease(
                conn, job_id=created.job_id, lease_owner="a#1", lease_seconds=5, now=NOW + timedelta(seconds=11)
            )
        await jobs_db.save_progress(
            conn,
            job_id=created.job_id,
            lease_owner="a#2",
            cursor={"c": 2},
            next_page_no=3,
            pages_fetched=2,
            now=NOW + timedelta(seconds=11),
        )
        finished = await jobs_db.finish_job(
            conn,
            job_id=created.job_id,
            lease_owner="a#2",
            state="SUCCEEDED",
            stop_reason="provider exhausted",
            error="",
            now=NOW + timedelta(seconds=12),
        )
    assert finished.state == "SUCCEEDED"
    assert finished.cursor == {"c": 2}
    assert finished.next_page_no == 3


async def test_cancel_of_a_queued_job_is_immediate_and_of_a_running_job_is_a_request(pool: asyncpg.Pool) -> None:
    tenant = str(uuid.uuid4())
    async with pool.acquire() as conn:
        queued, _ = await jobs_db.create_job(conn, new_job(tenant, "one"), now=NOW)
        canceled = await jobs_db.request_cancel(conn, tenant_id=tenant, job_id=queued.job_id, now=NOW)
        assert canceled is not None
        assert canceled.state == "CANCELED"
        running, _ = await jobs_db.create_job(conn, new_job(tenant, "two"), now=NOW)
        await jobs_db.claim_job(conn, lease_owner="a#1", lease_seconds=30, now=NOW)
        requested = await jobs_db.request_cancel(conn, tenant_id=tenant, job_id=running.job_id, now=NOW)
        assert requested is not None
        assert requested.state == "RUNNING"
        assert await jobs_db.renew_lease(conn, job_id=running.job_id, lease_owner="a#1", lease_seconds=30, now=NOW)
        assert await jobs_db.request_cancel(conn, tenant_id=str(uuid.uuid4()), job_id=running.job_id, now=NOW) is None


async def test_only_the_cancel_of_a_running_job_is_notified_to_its_fetcher(pool: asyncpg.Pool) -> None:
    tenant = str(uuid.uuid4())
    heard: asyncio.Queue[str] = asyncio.Queue()
    async with pool.acquire() as listening, pool.acquire() as conn:
        def hear(_connection: object, _pid: int, _channel: str, payload: object) -> None:
            heard.put_nowait(str(payload))

        await listening.add_listener(jobs_db.JOB_CANCEL_CHANNEL, hear)
        queued, _ = await jobs_db.create_job(conn, new_job(tenant, "queued"), now=NOW)
        await jobs_db.request_cancel(conn, tenant_id=tenant, job_id=queued.job_id, now=NOW)
        running, _ = await jobs_db.create_job(conn, new_job(tenant, "running"), now=NOW)
        await jobs_db.claim_job(conn, lease_owner="a#1", lease_seconds=30, now=NOW)
        await jobs_db.request_cancel(conn, tenant_id=tenant, job_id=running.job_id, now=NOW)
        assert await asyncio.wait_for(heard.get(), timeout=5) == running.job_id
        # The canceled QUEUED job (no fetcher runs it) sent nothing: the running job's is the only one.
        await asyncio.sleep(0.2)
        assert heard.empty()
        await listening.remove_listener(jobs_db.JOB_CANCEL_CHANNEL, hear)


async def test_the_same_idempotency_key_returns_the_finished_job(pool: asyncpg.Pool) -> None:
    tenant = str(uuid.uuid4())
    async with pool.acquire() as conn:
        first, _ = await jobs_db.create_job(conn, new_job(tenant, idempotency_key="k"), now=NOW)
        await jobs_db.claim_job(conn, lease_owner="a#1", lease_seconds=30, now=NOW)
        await jobs_db.finish_job(
            conn, job_id=first.job_id, lease_owner="a#1", state="SUCCEEDED", stop_reason="x", error="", now=NOW
        )
        again, existed = await jobs_db.create_job(conn, new_job(tenant, idempotency_key="k"), now=NOW)
        assert existed
        assert again.job_id == first.job_id
        fresh, existed = await jobs_db.create_job(conn, new_job(tenant), now=NOW)
        assert not existed
        assert not fresh.first_import


async def insert_appointment(conn: DbConnection, tenant: str, external_id: str, *, starts_at: datetime,
                             connection_id: str = "main", source: str = "acuity") -> None:
    await conn.execute(
        """INSERT INTO appointments (tenant_id, external_source, external_id, connection_id, starts_at, ends_at,
               timezone, status, title, appointment_type, calendar, contact_name, contact_email, contact_phone,
               provider_client_id, external_url, raw, content_hash, observed_at, last_job_id)
           VALUES ($1::uuid, $2, $3, $4, $5::timestamptz, $5::timestamptz + interval '30 minutes', 'UTC',
                   'scheduled', '', '', '', '', '', '', '', '', '{}', '\\x00', $5::timestamptz, gen_random_uuid())""",
        tenant, source, external_id, connection_id, starts_at,
    )


async def test_reconciliation_marks_unseen_rows_of_the_connection_inside_the_window_once(
    database_url: str, service_database_url: str
) -> None:
    """As deployed: the tables and functions belong to an owner that is not a superuser (row-level
    security binds it), and the fetcher calls the function as the service role."""
    owner_role, owner_password = f"owner_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    superuser = await asyncpg.connect(database_url)
    try:
        database = database_url.rsplit("/", 1)[1]
        await superuser.execute(f"CREATE ROLE {owner_role} LOGIN PASSWORD '{owner_password}'")
        await superuser.execute(f"ALTER DATABASE {database} OWNER TO {owner_role}")
    finally:
        await superuser.close()
    owner_url = database_url.replace(database_url.split("//", 1)[1].split("@", 1)[0], f"{owner_role}:{owner_password}")
    owner = await asyncpg.connect(owner_url)
    service = await asyncpg.connect(service_database_url)
    try:
        await migrate(owner)
        tenant = str(uuid.uuid4())
        async with tenant_transaction(service, tenant):
            created, _ = await jobs_db.create_job(service, new_job(tenant), now=NOW)
        claimed = await jobs_db.claim_job(service, lease_owner="w#1", lease_seconds=30, now=NOW)
        assert claimed is not None and claimed.job_id == created.job_id
        inside = NOW + timedelta(hours=1)
        async with tenant_transaction(owner, tenant):
            for external_id in ("seen", "gone"):
                await insert_appointment(owner, tenant, external_id, starts_at=inside)
            await insert_appointment(owner, tenant, "outside-window", starts_at=NOW + timedelta(days=3))
            await insert_appointment(owner, tenant, "other-connection", starts_at=inside, connection_id="other")
            await insert_appointment(owner, tenant, "other-source", starts_at=inside, source="calendly")
            await owner.execute(
                """INSERT INTO import_job_pages (job_id, page_no, tenant_id, records_fetched, inserted, updated,
                       unchanged, skipped_out_of_window, skipped_invalid, skipped_dead_letter,
                       skipped_duplicate_in_page, contacts_unmatched, external_ids)
                   VALUES ($1::uuid, 1, $2::uuid, 1, 0, 0, 1, 0, 0, 0, 0, 0, ARRAY['seen'])""",
                created.job_id, tenant,
            )

        with pytest.raises(jobs_db.LeaseLostError):
            await jobs_db.reconcile_deletions(service, job_id=created.job_id, lease_owner="intruder", now=NOW)
        async with service.transaction():
            assert await jobs_db.reconcile_deletions(service, job_id=created.job_id, lease_owner="w#1", now=NOW) == 1
            # The function acted as the job's tenant only for its own statement.
            assert await service.fetchval("SELECT current_setting('app.tenant_id', true)") in ("", None)
        assert await jobs_db.reconcile_deletions(service, job_id=created.job_id, lease_owner="w#1", now=NOW) == 0

        async with tenant_transaction(owner, tenant):
            deleted = await owner.fetch("SELECT external_id FROM appointments WHERE deleted_at IS NOT NULL")
        assert [row["external_id"] for row in deleted] == ["gone"]
        finished = await jobs_db.finish_job(service, job_id=created.job_id, lease_owner="w#1", state="SUCCEEDED",
                                            stop_reason="provider exhausted", error="", now=NOW)
        assert finished.counts["deleted"] == 1
    finally:
        await owner.close()
        await service.close()
