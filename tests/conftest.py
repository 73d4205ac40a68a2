"""Shared fixtures: a real PostgreSQL per test schema, SQLite files, and the memory backend.

PostgreSQL comes from PROJECTIONIST_TEST_DSN. When it cannot be reached, PostgreSQL tests
fail with a message saying how to start it; they never skip.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from projectionist import EventStore, create_store

PG_DSN = os.environ.get("PROJECTIONIST_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_START_HINT = (
    "PostgreSQL is not reachable at {dsn} ({error}). Start it with "
    "'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' "
    "or point PROJECTIONIST_TEST_DSN at a server."
)
BACKENDS = ["memory", "sqlite", "postgres"]


async def require_postgres() -> None:
    try:
        connection = await asyncpg.connect(PG_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(PG_START_HINT.format(dsn=PG_DSN, error=exc), pytrace=False)
    await connection.close()


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh, unique PostgreSQL schema name; the schema is dropped after the test."""
    await require_postgres()
    schema = new_schema_name()
    yield schema
    await _drop_schema(schema)


def store_url(backend: str, tmp_path: Path, schema: str | None) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    assert schema is not None
    return f"{PG_DSN}?schema={schema}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store_factory(backend: str, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores of the test's backend on one shared database/schema/file."""
    schema = None
    if backend == "postgres":
        await require_postgres()
        schema = new_schema_name()
    factory = StoreFactory(store_url(backend, tmp_path, schema))
    yield factory
    await factory.close_all()
    if schema is not None:
        await _drop_schema(schema)


def new_schema_name() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


async def _drop_schema(schema: str) -> None:
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        # Side schemas a blue/green swap retired from it (their comment names the base):
        # they outlive the test until their grace period, which a test does not wait for.
        retired = await connection.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pj\\_%' "
            "AND obj_description(oid, 'pg_namespace') LIKE '% base ' || $1 || ' %'",
            schema,
        )
        for (name,) in retired:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await connection.close()


class StoreFactory:
    def __init__(self, url: str) -> None:
        self.url = url
        self._opened: list[EventStore] = []
        self._memory: EventStore | None = None

    async def open(self, *, poll_interval: float = 1.0, apply_schema: bool = True) -> EventStore:
        """Another store on the same data; memory stores share one instance (no other way)."""
        if self.url == "memory://" and self._memory is not None:
            return self._memory
        store = create_store(self.url, poll_interval=poll_interval)
        await store.open()
        self._opened.append(store)
        if apply_schema:
            await store.apply_schema()
        if self.url == "memory://":
            self._memory = store
        return store

    async def close_all(self) -> None:
        for store in self._opened:
            await store.close()


@pytest.fixture
async def store(store_factory: StoreFactory) -> EventStore:
    return await store_factory.open()


async def settle(store: EventStore) -> None:
    """Wait until everything committed so far is visible to readers (PostgreSQL can hold
    a just-committed append back for a moment while an older transaction finishes)."""
    assert await store.wait_until_visible(await store.last_committed(), timeout=10)


OTHER_DATABASE = "projectionist_other"
"""A second database of the same cluster, for transactions that must not hold our readers."""


async def connect_other_database() -> asyncpg.Connection:
    """A connection to OTHER_DATABASE on the test server, created when it is missing."""
    await require_postgres()
    connection = await asyncpg.connect(PG_DSN)
    try:
        exists = await connection.fetchval(
            "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", OTHER_DATABASE
        )
        if not exists:
            # (created by a concurrent test meanwhile: fine)
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await connection.execute(f'CREATE DATABASE "{OTHER_DATABASE}"')
    finally:
        await connection.close()
    return await asyncpg.connect(PG_DSN, database=OTHER_DATABASE)
