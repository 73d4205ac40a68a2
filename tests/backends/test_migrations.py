"""The versioned schema: fresh installs, upgrades of the previous release, concurrent appliers.

The expected schema is a snapshot of the database catalogue checked in beside this file
(``expected_schema_<backend>.txt``). After adding a migration, regenerate it with
``PROJECTIONIST_WRITE_SCHEMA=1 pytest tests/backends/test_migrations.py`` and review the diff.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import os
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from projectionist import NewEvent, SchemaError, create_store
from projectionist.backends.postgres import PostgresReadModelStore
from projectionist.migrations import Track, latest_version
from projectionist.operations import all_faults, dead_letters
from tests.backends import previous_release as previous
from tests.conftest import PG_DSN, new_schema_name

HERE = Path(__file__).parent
TRACKS: tuple[Track, ...] = ("events", "read_models")
CHECKPOINT_COLUMN = "column projection_checkpoints."
EVENT_ID = uuid.UUID("6f1d8e52-52f4-4f43-9c55-3d7b8f0a0001")


def latest(dialect: str) -> list[tuple[str, int]]:
    return [(t, v) for t in TRACKS for v in range(1, latest_version(dialect, t) + 1)]


def read_models_track(dialect: str) -> list[tuple[str, int]]:
    return [v for v in latest(dialect) if v[0] == "read_models"]


def check_snapshot(dialect: str, actual: str) -> None:
    path = HERE / f"expected_schema_{dialect}.txt"
    if os.environ.get("PROJECTIONIST_WRITE_SCHEMA"):
        path.write_text(actual)
    expected = path.read_text()
    diff = "\n".join(
        difflib.unified_diff(
            expected.splitlines(), actual.splitlines(), str(path), "database", lineterm=""
        )
    )
    assert actual == expected, f"the migrations do not give the expected schema:\n{diff}"


# -- catalogue snapshots ------------------------------------------------------------------------

_PG_COLUMNS = """
    SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
           pg_get_expr(d.adbin, d.adrelid), a.attidentity::text
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
    WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY c.relname, a.attnum
"""
_PG_CONSTRAINTS = """
    SELECT cl.relname, co.conname, pg_get_constraintdef(co.oid)
    FROM pg_constraint co JOIN pg_class cl ON cl.oid = co.conrelid
    JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE n.nspname = $1 ORDER BY 1, 2
"""
_PG_FUNCTIONS = """
    SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
           l.lanname, p.provolatile::text, p.prosrc
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    JOIN pg_language l ON l.oid = p.prolang WHERE n.nspname = $1 ORDER BY 1, 2
"""


async def postgres_catalogue(schema: str) -> str:
    """Tables, columns (type, nullability, default, identity), constraints, indexes,
    sequences and functions (signature and a hash of the body) of ``schema``."""
    connection = await asyncpg.connect(PG_DSN)
    try:
        lines = []
        for table, column, kind, not_null, default, identity in await connection.fetch(
            _PG_COLUMNS, schema
        ):
            lines.append(
                f"column {table}.{column} {kind}{' not null' if not_null else ''}"
                f"{f' default {default}' if default else ''}"
                f"{f' identity {identity}' if identity else ''}"
            )
        for table, name, definition in await connection.fetch(_PG_CONSTRAINTS, schema):
            lines.append(f"constraint {table}.{name} {definition}")
        for name, definition in await connection.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY 1", schema
        ):
            lines.append(f"index {name} {definition}")
        for (name,) in await connection.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind = 'S' ORDER BY 1",
            schema,
        ):
            lines.append(f"sequence {name}")
        for name, args, result, language, volatility, body in await connection.fetch(
            _PG_FUNCTIONS, schema
        ):
            digest = hashlib.sha256(_normalise(body, schema).encode()).hexdigest()[:16]
            lines.append(
                f"function {name}({args}) returns {result} language {language} "
                f"volatility {volatility} body {digest}"
            )
    finally:
        await connection.close()
    return _normalise("\n".join(lines) + "\n", schema)


def _normalise(text: str, schema: str) -> str:
    """Test schemas have random names: write them as the migrations do."""
    return text.replace(f'"{schema}"', "{{schema}}").replace(schema, "{{schema}}")


def sqlite_catalogue(path: Path) -> str:
    """Tables (rowid, strictness, autoincrement), columns (type, nullability, default,
    primary key), indexes and their columns, and each table's statement (whitespace and
    IF NOT EXISTS aside, so that CHECK constraints count too)."""
    connection = sqlite3.connect(path)
    try:
        lines = []
        tables = connection.execute(
            "SELECT name, wr, strict FROM pragma_table_list WHERE schema = 'main' "
            "AND type = 'table' AND name <> 'sqlite_schema' ORDER BY name"
        ).fetchall()
        for table, without_rowid, strict in tables:
            lines.append(f"table {table} without_rowid={without_rowid} strict={strict}")
            for _, column, kind, not_null, default, pk in connection.execute(
                "SELECT * FROM pragma_table_info(?)", (table,)
            ):
                lines.append(
                    f"column {table}.{column} {kind} notnull={not_null} default={default} pk={pk}"
                )
            for _, index, unique, origin, partial in connection.execute(
                "SELECT * FROM pragma_index_list(?) ORDER BY name", (table,)
            ):
                columns = [
                    r[2] for r in connection.execute("SELECT * FROM pragma_index_info(?)", (index,))
                ]
                lines.append(
                    f"index {table}.{index} unique={unique} origin={origin} partial={partial} "
                    f"columns={','.join(columns)}"
                )
        for (sql,) in connection.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name"
        ):
            statement = " ".join(sql.replace("IF NOT EXISTS ", "").split())
            lines.append(f"sql {statement}")
    finally:
        connection.close()
    return "\n".join(lines) + "\n"


# -- databases made by the previous release -----------------------------------------------------

_OLD_PG_VERSIONS = (
    "CREATE TABLE IF NOT EXISTS {q}.schema_migrations (version integer PRIMARY KEY, "
    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
)


async def create_previous_postgres(schema: str) -> None:
    """The schema as the previous release's ``apply_schema`` left it, with rows in it."""
    q = f'"{schema}"'
    connection = await asyncpg.connect(PG_DSN)
    try:
        async with connection.transaction():
            await connection.execute(f"CREATE SCHEMA {q}")
            await connection.execute(_OLD_PG_VERSIONS.format(q=q))
            for version, name, sql in previous.POSTGRES_EVENT_MIGRATIONS:
                await connection.execute(sql.replace("{{schema}}", q))
                await connection.execute(
                    f"INSERT INTO {q}.schema_migrations (version, name) VALUES ($1, $2)",
                    version,
                    name,
                )
            await connection.execute(previous.POSTGRES_CHECKPOINTS_TABLE.replace("{{schema}}", q))
            for statement in previous.operations_statements("postgres", f"{q}."):
                await connection.execute(statement)
        await connection.execute(
            f"SELECT * FROM {q}.append_events('order-1', NULL, $1, $2, $3, $4)",
            [EVENT_ID], ["Placed"], ['{"total": 3}'], ["{}"],
        )  # fmt: skip
        await connection.execute(
            f"INSERT INTO {q}.projection_checkpoints "
            "(name, version, tx_id, position, events_processed) VALUES ('orders', 1, 5, 1, 1)"
        )
        for statement in operations_rows(f"{q}."):
            await connection.execute(statement)
    finally:
        await connection.close()


def create_previous_sqlite(path: Path) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        for version, name, sql in previous.SQLITE_EVENT_MIGRATIONS:
            for statement in previous.sqlite_statements(sql):
                connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                (version, name, datetime.now(UTC).isoformat()),
            )
        connection.execute(previous.SQLITE_CHECKPOINTS_TABLE)
        for statement in previous.operations_statements("sqlite"):
            connection.execute(statement)
        connection.execute("INSERT INTO streams VALUES ('order-1', 1)")
        connection.execute(
            "INSERT INTO events (id, stream_id, version, type, data, metadata, recorded_at) "
            "VALUES (?, 'order-1', 1, 'Placed', '{\"total\": 3}', '{}', ?)",
            (str(EVENT_ID), datetime.now(UTC).isoformat()),
        )
        connection.execute(
            "INSERT INTO projection_checkpoints VALUES ('orders', 1, 0, 1, 1, ?)",
            (datetime.now(UTC).isoformat(),),
        )
        for statement in operations_rows(""):
            connection.execute(statement)
        connection.execute("COMMIT")
    finally:
        connection.close()


def operations_rows(prefix: str) -> list[str]:
    """A lease, a worker, a fault and a dead letter (``prefix``: a quoted schema and a dot)."""
    return [
        f"INSERT INTO {prefix}projection_leases (unit, projection, owner, token, expires_at) "
        "VALUES ('orders', 'orders', 'worker-1', 7, 1.5)",
        f"INSERT INTO {prefix}projection_workers VALUES ('worker-1', 'host', 42, 1.0, 2.0)",
        f"INSERT INTO {prefix}projection_faults VALUES ('orders', 'orders', 1, '0/1', 'order-1', "
        "1, 'Placed', 'ValueError: bad', 'Traceback', 3, 9.0)",
        f"INSERT INTO {prefix}projection_dead_letters (projection, unit, version, position, "
        "event_id, stream_id, stream_version, event_type, data, metadata, recorded_at, error, "
        f"traceback, attempts, failed_at) VALUES ('orders', 'orders', 1, '0/1', '{EVENT_ID}', "
        "'order-1', 1, 'Placed', '{}', '{}', '2024-01-01T00:00:00+00:00', 'ValueError: bad', "
        "'Traceback', 1, 8.0)",
    ]


# -- upgrades in place --------------------------------------------------------------------------


async def assert_rows_intact(url: str) -> None:
    """The previous release's rows, read through the current code."""
    async with create_store(url) as store:
        [event] = await store.read_stream("order-1")
        assert (event.id, event.type, event.data) == (EVENT_ID, "Placed", {"total": 3})
        read_models = store.read_models()
        checkpoint = await read_models.checkpoint("orders")
        assert checkpoint is not None and checkpoint.events_processed == 1
        faults = await all_faults(read_models)
        assert faults["orders"].error == "ValueError: bad" and faults["orders"].attempts == 3
        async with read_models.transaction() as tx:
            [letter] = await dead_letters(tx, "orders")
            leases = await tx.fetch("SELECT unit, owner, token FROM projection_leases")
            workers = await tx.fetch("SELECT worker_id, pid FROM projection_workers")
        assert letter.event.id == EVENT_ID and letter.error == "ValueError: bad"
        assert leases == [("orders", "worker-1", 7)] and workers == [("worker-1", 42)]
        # and the upgraded tables take new rows as the current code writes them
        await store.append("order-2", [NewEvent("Placed", {"total": 5})])


async def recorded_versions(url: str) -> list[tuple[str, int, str]]:
    async with create_store(url) as store, store.read_models().transaction() as tx:
        rows = await tx.fetch(
            "SELECT track, version, applied_at FROM projectionist_migrations ORDER BY 1, 2"
        )
    return [(str(track), int(version), str(at)) for track, version, at in rows]


async def test_previous_release_postgres_upgrades_in_place(pg_schema: str) -> None:
    await create_previous_postgres(pg_schema)
    url = f"{PG_DSN}?schema={pg_schema}"
    async with create_store(url) as store:
        assert await store.schema_version() == 2  # read from the old table, before adoption
        assert await store.apply_schema() == latest_version("postgres")
        assert await store.schema_version() == latest_version("postgres")
    await assert_rows_intact(url)
    recorded = await recorded_versions(url)
    assert [(track, version) for track, version, _ in recorded] == latest("postgres")
    upgraded = await postgres_catalogue(pg_schema)
    assert "schema_migrations" not in upgraded  # adopted, then dropped
    async with create_store(url) as store:  # applying again changes nothing
        await store.apply_schema()
        await store.read_models().apply_schema()
    assert await recorded_versions(url) == recorded
    assert await postgres_catalogue(pg_schema) == upgraded
    fresh = new_schema_name()
    try:
        async with create_store(PG_DSN, schema=fresh) as store:
            await store.apply_schema()
        assert upgraded == await postgres_catalogue(fresh), "upgrade and fresh install differ"
    finally:
        connection = await asyncpg.connect(PG_DSN)
        await connection.execute(f'DROP SCHEMA IF EXISTS "{fresh}" CASCADE')
        await connection.close()


async def test_previous_release_sqlite_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    create_previous_sqlite(path)
    url = f"sqlite:///{path}"
    async with create_store(url) as store:
        assert await store.schema_version() == 2
        assert await store.apply_schema() == latest_version("sqlite")
    await assert_rows_intact(url)
    recorded = await recorded_versions(url)
    assert [(track, version) for track, version, _ in recorded] == latest("sqlite")
    upgraded = sqlite_catalogue(path)
    assert "schema_migrations" not in upgraded
    async with create_store(url) as store:
        await store.apply_schema()
        await store.read_models().apply_schema()
    assert await recorded_versions(url) == recorded
    assert sqlite_catalogue(path) == upgraded
    async with create_store(f"sqlite:///{tmp_path / 'fresh.db'}") as store:
        await store.apply_schema()
    assert upgraded == sqlite_catalogue(tmp_path / "fresh.db"), "upgrade and fresh install differ"


async def test_previous_release_read_model_database_is_adopted(pg_schema: str) -> None:
    """A read-model database of the previous release (``read_model_url``) had the checkpoint
    and operations tables but no migrations at all."""
    q = f'"{pg_schema}"'
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(f"CREATE SCHEMA {q}")
        await connection.execute(previous.POSTGRES_CHECKPOINTS_TABLE.replace("{{schema}}", q))
        for statement in previous.operations_statements("postgres", f"{q}."):
            await connection.execute(statement)
        for statement in operations_rows(f"{q}."):
            await connection.execute(statement)
    finally:
        await connection.close()
    async with create_store(PG_DSN, schema=pg_schema) as host:
        await host.read_models().apply_schema()
        assert "orders" in await all_faults(host.read_models())
    recorded = await recorded_versions(f"{PG_DSN}?schema={pg_schema}")
    assert [(t, v) for t, v, _ in recorded] == read_models_track("postgres")


# -- fresh installs -----------------------------------------------------------------------------


async def test_migrations_give_the_expected_postgres_schema(pg_schema: str) -> None:
    async with create_store(PG_DSN, schema=pg_schema) as store:
        assert await store.schema_version() == 0
        assert await store.apply_schema() == latest_version("postgres")
    check_snapshot("postgres", await postgres_catalogue(pg_schema))


async def test_migrations_give_the_expected_sqlite_schema(tmp_path: Path) -> None:
    async with create_store(f"sqlite:///{tmp_path / 'fresh.db'}") as store:
        assert await store.schema_version() == 0
        assert await store.apply_schema() == latest_version("sqlite")
    check_snapshot("sqlite", sqlite_catalogue(tmp_path / "fresh.db"))


async def test_two_stores_applying_at_once_on_an_empty_schema(pg_schema: str) -> None:
    """Separate pools, so the appliers really race: the locks queue them, nothing collides."""
    url = f"{PG_DSN}?schema={pg_schema}"
    stores = [create_store(url), create_store(url), create_store(url)]
    for store in stores:
        await store.open()
    try:
        first, second, third = stores
        versions = await asyncio.gather(
            first.apply_schema(), second.apply_schema(), third.read_models().apply_schema()
        )
        assert versions[0] == versions[1] == latest_version("postgres")
    finally:
        for store in stores:
            await store.close()
    recorded = await recorded_versions(url)
    assert [(track, version) for track, version, _ in recorded] == latest("postgres")


async def test_read_model_database_gets_only_the_read_models_track(
    pg_schema: str, tmp_path: Path
) -> None:
    url = f"{PG_DSN}?schema={pg_schema}"
    async with create_store(url) as host:
        await host.read_models().apply_schema()
    catalogue = await postgres_catalogue(pg_schema)
    assert "projection_leases" in catalogue and "projection_dead_letters" in catalogue
    assert "column events." not in catalogue and "column streams." not in catalogue
    assert "function" not in catalogue
    assert [(t, v) for t, v, _ in await recorded_versions(url)] == read_models_track("postgres")
    sqlite_url = f"sqlite:///{tmp_path / 'models.db'}"
    async with create_store(sqlite_url) as host:
        await host.read_models().apply_schema()
        assert await host.schema_version() == 0  # no event tables
    assert "table events" not in sqlite_catalogue(tmp_path / "models.db")
    recorded = await recorded_versions(sqlite_url)
    assert [(t, v) for t, v, _ in recorded] == read_models_track("sqlite")


async def test_side_schema_holds_only_checkpoints_shaped_like_the_base(pg_schema: str) -> None:
    """A side schema (blue/green build, verification) must not shadow the base schema's
    operations tables: its search_path finds leases and faults in the base."""
    side = new_schema_name()
    try:
        async with create_store(PG_DSN, schema=pg_schema) as store:
            await store.apply_schema()
            read_models = store.read_models()
            assert isinstance(read_models, PostgresReadModelStore)
            await read_models.in_schema(side).apply_schema()
            await read_models.in_schema(side).apply_schema()  # idempotent
        catalogue = await postgres_catalogue(side)
        base = await postgres_catalogue(pg_schema)
        columns = [line for line in catalogue.splitlines() if line.startswith("column ")]
        assert columns and all(line.startswith(CHECKPOINT_COLUMN) for line in columns)
        assert columns == [line for line in base.splitlines() if line.startswith(CHECKPOINT_COLUMN)]
    finally:
        connection = await asyncpg.connect(PG_DSN)
        await connection.execute(f'DROP SCHEMA IF EXISTS "{side}" CASCADE')
        await connection.close()


async def test_memory_store_applies_the_read_models_track() -> None:
    async with create_store("memory://") as store:
        assert await store.apply_schema() == latest_version("sqlite")
        async with store.read_models().transaction() as tx:
            rows = await tx.fetch("SELECT track, version FROM projectionist_migrations")
            tables = await tx.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
    assert sorted(rows) == read_models_track("sqlite")
    assert {"projection_checkpoints", "projection_leases"} <= {name for (name,) in tables}


async def test_a_newer_schema_than_the_code_knows_is_refused(tmp_path: Path) -> None:
    async with create_store(f"sqlite:///{tmp_path / 'x.db'}") as store:
        await store.apply_schema()
        async with store.read_models().transaction() as tx:
            await tx.execute(
                "INSERT INTO projectionist_migrations (track, version, name) "
                "VALUES ('read_models', 99, '0099_future.sql')"
            )
        with pytest.raises(SchemaError, match="read_models migrations are at version 99"):
            await store.apply_schema()
