"""A PostgreSQL connection as the shared migration runner sees it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ...migrations import Dialect
from .connections import Connection


class MigrationSession:
    """One pooled connection as the migration runner sees it (``migrations.MigrationSession``)."""

    dialect: Dialect = "postgres"

    def __init__(self, connection: Connection, quoted_schema: str) -> None:
        self._connection = connection
        self.schema = quoted_schema

    @contextlib.asynccontextmanager
    async def transaction(self, *, exclusive: bool) -> AsyncIterator[None]:
        async with self._connection.transaction():  # the runner takes the advisory locks
            yield

    async def execute(self, sql: str, *args: object) -> None:
        await self._connection.execute(sql, *args)

    async def execute_script(self, script: str) -> None:
        await self._connection.execute(script)  # no arguments: several statements may run

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._connection.fetch(sql, *args)]
