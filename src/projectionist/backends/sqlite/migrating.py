"""The SQLite store's connection as the shared migration runner sees it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiosqlite

from ...migrations import Dialect
from .database import SqliteDatabase
from .statements import to_sqlite_placeholders


class MigrationSession:
    """The store's connection as the migration runner sees it (``migrations.MigrationSession``)."""

    dialect: Dialect = "sqlite"
    schema = ""  # one database per file: no schemas

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database
        self._connection: aiosqlite.Connection | None = None

    @contextlib.asynccontextmanager
    async def transaction(self, *, exclusive: bool) -> AsyncIterator[None]:
        # exclusive: BEGIN IMMEDIATE, so no other process writes until the migration is in.
        doing = "applying the schema" if exclusive else "reading the schema version"
        async with self._database.transaction(doing, write=exclusive) as connection:
            self._connection = connection
            try:
                yield
            finally:
                self._connection = None

    def _open(self) -> aiosqlite.Connection:
        assert self._connection is not None, "the migration runner runs inside a transaction"
        return self._connection

    async def execute(self, sql: str, *args: object) -> None:
        await self._open().execute(to_sqlite_placeholders(sql), args)

    async def execute_script(self, script: str) -> None:
        # executescript would COMMIT the runner's transaction: run statement by statement.
        for statement in _split_statements(script):
            await self._open().execute(statement)

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        cursor = await self._open().execute(to_sqlite_placeholders(sql), args)
        return [tuple(row) for row in await cursor.fetchall()]


def _split_statements(script: str) -> list[str]:
    """Split a migration into statements (our SQLite migrations contain no ';' in literals)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]
