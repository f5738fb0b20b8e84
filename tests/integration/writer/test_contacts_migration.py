"""Migration 0012 on a database that has per-source contacts: they become the tenant's people."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from apptsync.shared.db.migrator import load_migrations, migrate
from tests.integration.writer.writer_database import insert_job

pytestmark = pytest.mark.integration


async def test_per_source_contacts_sharing_an_email_merge_into_the_lowest_id_with_their_identities(
    database_url: str,
) -> None:
    """Guards the backfill: without it, the same email stored by two sources stays two contacts and no
    identity names them, so the next import creates a third."""
    connection = await asyncpg.connect(database_url)
    try:
        migrations = load_migrations()
        await migrate(connection, [m for m in migrations if m.version < 12])
        tenant = uuid.uuid4()
        job = uuid.UUID(await insert_job(connection, str(tenant)))
        ids = {}
        for source, key, email, client_id in [("acuity", "email:ada@x.org", "Ada@x.org ", ""),
                                              ("calendly", "email:ada@x.org", "ada@x.org", ""),
                                              ("google_calendar", "client:9", "", "9")]:
            ids[source] = await connection.fetchval(
                """INSERT INTO contacts (tenant_id, external_source, match_key, name, email, phone, provider_client_id)
                   VALUES ($1, $2, $3, 'Ada', $4, '', $5) RETURNING contact_id""",
                tenant, source, key, email, client_id)
            await connection.execute(
                """INSERT INTO appointments (tenant_id, external_source, external_id, connection_id, starts_at, ends_at,
                       timezone, status, title, appointment_type, calendar, contact_name, contact_email,
                       contact_phone, provider_client_id, external_url, raw, content_hash, observed_at, contact_id,
                       last_job_id)
                   VALUES ($1, $2, 'a-' || $2, 'c', now(), now(), 'UTC', 'scheduled', '', '', '', '', '', '', '',
                           '', '{}', '\\x00', now(), $3, $4)""", tenant, source, ids[source], job)

        await migrate(connection, migrations)

        contacts = await connection.fetch("SELECT contact_id, match_key FROM contacts ORDER BY contact_id")
        assert [(c["contact_id"], c["match_key"]) for c in contacts] == [
            (ids["acuity"], "acuity:email:ada@x.org"), (ids["google_calendar"], "google_calendar:client:9")]
        links = {row["external_source"]: row["contact_id"]
                 for row in await connection.fetch("SELECT external_source, contact_id FROM appointments")}
        assert links == {"acuity": ids["acuity"], "calendly": ids["acuity"], "google_calendar": ids["google_calendar"]}
        identities = await connection.fetch("SELECT kind, value, contact_id FROM contact_identities ORDER BY kind")
        assert [tuple(i) for i in identities] == [
            ("client", "google_calendar:9", ids["google_calendar"]), ("email", "ada@x.org", ids["acuity"])]
        forced = await connection.fetch(
            "SELECT relname, relforcerowsecurity FROM pg_class WHERE relname IN ('contacts', 'appointments')")
        assert all(row["relforcerowsecurity"] for row in forced)
    finally:
        await connection.close()
