"""Schema migrations shipped as package data, and the one runner that applies them.

Two tracks, each numbered on its own (docs/schema.md):

- ``events``: the event store (``sql/<backend>/events/NNNN_name.sql``);
- ``read_models``: checkpoints and the operations tables (leases, workers, faults, dead
  letters) in ``sql/<backend>/read_models/``; a read-model database of its own
  (``read_model_url``) gets only this track.

Each file is applied once, in order, in one transaction with the row that records it in
``projectionist_migrations (track, version, name, applied_at)``; applying is idempotent and
safe when several processes apply at once (PostgreSQL: a transaction advisory lock per schema
and track; SQLite: ``BEGIN IMMEDIATE``, which excludes every other writer). PostgreSQL files
name the schema as ``{{schema}}``, replaced by the quoted, validated name.

A backend only says how to run statements, through a ``MigrationSession``. A database made by
a release that recorded event migrations in ``schema_migrations`` is adopted: its versions
are copied to the ``events`` track and that table is dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, Protocol

from .errors import SchemaError

logger = logging.getLogger("projectionist.migrations")

Dialect = Literal["postgres", "sqlite"]
Track = Literal["events", "read_models"]
EVENTS: Track = "events"
READ_MODELS: Track = "read_models"
VERSION_TABLE = "projectionist_migrations"
LEGACY_VERSION_TABLE = "schema_migrations"  # events versions, before there were tracks

_FILE_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(backend: Dialect | str, track: Track = EVENTS) -> list[Migration]:
    """The migrations of ``backend`` ("postgres" or "sqlite") on ``track``, numbered 1, 2, 3...
    in order."""
    folder = resources.files("projectionist") / "sql" / backend / track
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda migration: migration.version)
    if not found or [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(
            f"projectionist's {backend} {track} migrations are not numbered 1..n: {found}"
        )
    return found


def latest_version(backend: Dialect | str, track: Track = EVENTS) -> int:
    return len(load_migrations(backend, track))


class MigrationSession(Protocol):
    """What the runner needs of a backend: one connection, its transactions and statements.

    SQL given to ``execute`` and ``fetch`` uses ``$1, $2...`` placeholders (the SQLite session
    translates them). ``{{schema}}`` in it is already replaced by ``schema``.
    """

    @property
    def dialect(self) -> Dialect:
        """Which migration files apply ("postgres" or "sqlite")."""

    @property
    def schema(self) -> str:
        """The quoted schema that ``{{schema}}`` stands for ("" where there are no schemas)."""

    def transaction(self, *, exclusive: bool) -> AbstractAsyncContextManager[None]:
        """A transaction on the connection. ``exclusive``: SQLite begins it IMMEDIATE (no
        other writer until it ends); PostgreSQL ignores it (the runner takes its locks)."""

    async def execute(self, sql: str, *args: object) -> None:
        """One statement."""

    async def execute_script(self, script: str) -> None:
        """A migration file: several statements, no arguments, inside the open transaction."""

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """The rows of one query."""


@dataclass(frozen=True, slots=True)
class _DialectSql:
    """The few statements of the runner that differ between databases."""

    create_schema: str | None
    version_table: str
    table_exists: str  # $1: a table name (schema-qualified where there are schemas)
    lock: str | None  # $1: the lock's name, for a transaction-level lock


_SQL: dict[str, _DialectSql] = {
    "postgres": _DialectSql(
        create_schema="CREATE SCHEMA IF NOT EXISTS {{schema}}",
        version_table=(
            f"CREATE TABLE IF NOT EXISTS {{{{schema}}}}.{VERSION_TABLE} (track text NOT NULL, "
            "version integer NOT NULL, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (track, version))"
        ),
        table_exists="SELECT to_regclass($1) IS NOT NULL",
        lock="SELECT pg_advisory_xact_lock(hashtext('projectionist.migrations.' || $1))",
    ),
    "sqlite": _DialectSql(
        create_schema=None,
        version_table=(
            f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (track TEXT NOT NULL, "
            "version INTEGER NOT NULL, name TEXT NOT NULL, applied_at TEXT NOT NULL "
            "DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), PRIMARY KEY (track, version))"
        ),
        table_exists="SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
        lock=None,  # BEGIN IMMEDIATE already excludes every other writer of the file
    ),
}


def _render(session: MigrationSession, sql: str) -> str:
    return sql.replace("{{schema}}", session.schema)


def _table(session: MigrationSession, name: str) -> str:
    return f"{session.schema}.{name}" if session.schema else name


@asynccontextmanager
async def _exclusive(session: MigrationSession, lock_name: str) -> AsyncIterator[None]:
    """A transaction no other applier of the same schema and ``lock_name`` runs beside."""
    async with session.transaction(exclusive=True):
        lock = _SQL[session.dialect].lock
        if lock is not None:
            await session.execute(lock, f"{session.schema}.{lock_name}")
        yield


async def _table_exists(session: MigrationSession, name: str) -> bool:
    rows = await session.fetch(_SQL[session.dialect].table_exists, _table(session, name))
    return bool(rows and rows[0][0])


async def _prepare(session: MigrationSession) -> None:
    """The schema and the version table; a previous release's versions adopted."""
    dialect = _SQL[session.dialect]
    async with _exclusive(session, "*"):
        if dialect.create_schema is not None:
            await session.execute(_render(session, dialect.create_schema))
        await session.execute(_render(session, dialect.version_table))
        if await _table_exists(session, LEGACY_VERSION_TABLE):
            legacy = _table(session, LEGACY_VERSION_TABLE)
            await session.execute(
                f"INSERT INTO {_table(session, VERSION_TABLE)} (track, version, name, applied_at) "
                f"SELECT $1, version, name, applied_at FROM {legacy} WHERE true "
                "ON CONFLICT (track, version) DO NOTHING",
                EVENTS,
            )
            await session.execute(f"DROP TABLE {legacy}")
            logger.info(
                "adopted the event migrations recorded in %s",
                LEGACY_VERSION_TABLE,
                extra={"action": "migrations_adopted", "schema": session.schema},
            )


async def _recorded(session: MigrationSession, track: Track) -> int:
    rows = await session.fetch(
        f"SELECT coalesce(max(version), 0) FROM {_table(session, VERSION_TABLE)} WHERE track = $1",
        track,
    )
    return int(rows[0][0])


async def _apply_track(session: MigrationSession, track: Track) -> int:
    migrations = load_migrations(session.dialect, track)
    async with _exclusive(session, track):
        current = await _recorded(session, track)
        if current > len(migrations):
            where = f" of schema {session.schema}" if session.schema else ""
            raise SchemaError(
                f"the {track} migrations{where} are at version {current}, newer than this "
                f"projectionist knows ({len(migrations)}): upgrade projectionist"
            )
        for migration in migrations[current:]:
            await session.execute_script(_render(session, migration.sql))
            await session.execute(
                f"INSERT INTO {_table(session, VERSION_TABLE)} (track, version, name) "
                "VALUES ($1, $2, $3)",
                track,
                migration.version,
                migration.name,
            )
            logger.info(
                "applied migration %s/%s",
                track,
                migration.name,
                extra={"action": "migration_applied", "schema": session.schema, "track": track},
            )
    return len(migrations)


async def apply_migrations(session: MigrationSession, tracks: Sequence[Track]) -> dict[Track, int]:
    """Bring each of ``tracks`` to its latest version, in order; the versions reached."""
    await _prepare(session)
    return {track: await _apply_track(session, track) for track in tracks}


async def applied_version(session: MigrationSession, track: Track) -> int:
    """The version of ``track`` recorded in the database (0: none), without changing it.

    A database of the previous release, not yet adopted, reports its event versions."""
    async with session.transaction(exclusive=False):
        if await _table_exists(session, VERSION_TABLE):
            return await _recorded(session, track)
        if track == EVENTS and await _table_exists(session, LEGACY_VERSION_TABLE):
            rows = await session.fetch(
                f"SELECT coalesce(max(version), 0) FROM {_table(session, LEGACY_VERSION_TABLE)}"
            )
            return int(rows[0][0])
    return 0
