"""Versioned schema migrations: ordered SQL files applied once each, safe under concurrent start-up.

Why not yoyo or alembic: both need a synchronous driver (psycopg / SQLAlchemy) beside asyncpg, and our
needs are small: numbered SQL files, each applied in its own transaction, serialized across processes
by a PostgreSQL advisory lock, with a checksum so an edited, already-applied migration is refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from apptsync.shared.errors import PermanentError

# Any constant works, as long as every apptsync process uses the same one.
MIGRATION_LOCK_KEY = 0x61707074  # "appt"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationChecksumError(PermanentError):
    """An applied migration's file changed since it was applied: migrations are append-only."""


def load_migrations() -> list[Migration]:
    """The packaged migrations in version order. Raises ValueError on a gap or a malformed name."""
    folder = resources.files("apptsync.shared.db").joinpath("migrations")
    migrations = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if entry.name.endswith(".sql") and not match:
            raise ValueError(f"malformed migration file name: {entry.name}")
        if match:
            migrations.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    migrations.sort(key=lambda m: m.version)
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise ValueError(f"migration {expected:04d} is missing (found {migration.version:04d})")
    return migrations


async def migrate(connection: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Applies the migrations not yet applied; returns their versions.

    Concurrent callers serialize on an advisory lock, so exactly one applies each migration and the
    others see it applied. Raises MigrationChecksumError when an applied file was edited.
    """
    pending_source = load_migrations() if migrations is None else migrations
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await connection.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer     PRIMARY KEY,
                   name       text        NOT NULL,
                   checksum   text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = {
            row["version"]: row["checksum"]
            for row in await connection.fetch("SELECT version, checksum FROM schema_migrations")
        }
        newly_applied = []
        for migration in pending_source:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationChecksumError(
                        f"migration {migration.version:04d}_{migration.name} changed after it was applied"
                    )
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            newly_applied.append(migration.version)
        return newly_applied
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
