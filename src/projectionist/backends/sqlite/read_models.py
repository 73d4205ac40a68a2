"""SQLite read models: the read-model store and its transactions, on the store's database."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from ...events import Position
from ...identifiers import quote_identifier
from ...migrations import READ_MODELS, apply_migrations
from ...readmodel import (
    Checkpoint,
    CheckpointConflictError,
    ReadModelStore,
    ReadModelTransaction,
    SqlFeatures,
)
from .database import SqliteDatabase
from .errors import translated
from .migrating import MigrationSession
from .statements import to_sqlite_placeholders

_CHECKPOINT_SELECT = (
    "SELECT name, version, tx_id, position, events_processed, updated_at "
    "FROM projection_checkpoints"
)
SQLITE_FEATURES = SqlFeatures(
    document_type="TEXT",
    document_as_text="",
    clock="((julianday('now') - 2440587.5) * 86400.0)",
    take_or_skip="",  # write transactions are exclusive: there is nothing to skip or share
    share_with_takers="",
    one_of_texts="{column} IN (SELECT value FROM json_each({param}))",
    texts_as_json=True,
    table_columns="SELECT name, pk > 0 FROM pragma_table_info($1) ORDER BY cid",
    full_text="fts5",
)


class SqliteReadModelTransaction(ReadModelTransaction):
    """A read-model transaction on the store's one connection; statements' driver errors
    arrive as projectionist errors (see ``errors.translate_operational_error``)."""

    dialect = "sqlite"
    sql = SQLITE_FEATURES

    def __init__(
        self, connection: aiosqlite.Connection, url: str = "the read-model database"
    ) -> None:
        self.connection = connection
        self._url = url

    async def execute(self, sql: str, *args: object) -> int:
        if self._queued:
            await self.flush()
        with translated("a statement", self._url):
            cursor = await self.connection.execute(to_sqlite_placeholders(sql), args)
        return int(cursor.rowcount)

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        if self._queued:
            await self.flush()
        with translated("a statement", self._url):
            await self.connection.executemany(to_sqlite_placeholders(sql), rows)

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        if self._queued:
            await self.flush()
        with translated("a query", self._url):
            # One hop to the connection's thread for the statement and its rows.
            rows = await self.connection.execute_fetchall(to_sqlite_placeholders(sql), args)
        return [tuple(row) for row in rows]

    async def load_checkpoint(self, name: str, *, lock: bool = False) -> Checkpoint | None:
        # Write transactions are exclusive on SQLite: the lock is implied.
        rows = await self.fetch(f"{_CHECKPOINT_SELECT} WHERE name = $1", name)
        return _checkpoint_from_row(rows[0]) if rows else None

    async def save_checkpoint(
        self, name: str, version: int, expected: Position | None, new: Position, processed: int
    ) -> None:
        now = datetime.now(UTC).isoformat()
        if expected is None:
            changed = await self.execute(
                "INSERT INTO projection_checkpoints VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (name) DO NOTHING",
                name, version, new.tx, new.seq, processed, now,
            )  # fmt: skip
        else:
            changed = await self.execute(
                "UPDATE projection_checkpoints SET version = $2, tx_id = $3, position = $4, "
                "events_processed = events_processed + $5, updated_at = $6 "
                "WHERE name = $1 AND tx_id = $7 AND position = $8",
                name, version, new.tx, new.seq, processed, now, expected.tx, expected.seq,
            )  # fmt: skip
        if changed != 1:
            raise CheckpointConflictError(
                f"projection {name!r}: another runner moved the checkpoint first"
            )

    async def lock_projection(self, name: str) -> None:
        pass  # write transactions are exclusive on SQLite

    async def delete_checkpoint(self, name: str) -> None:
        await self.execute("DELETE FROM projection_checkpoints WHERE name = $1", name)

    async def drop_tables(self, tables: Sequence[str]) -> None:
        # In ``main``: unqualified, a TEMP table of that name on the connection comes first.
        for table in tables:
            await self.execute(f"DROP TABLE IF EXISTS main.{quote_identifier(table)}")


class SqliteReadModelStore(ReadModelStore):
    """Read models and checkpoints in a SQLite database."""

    dialect = "sqlite"

    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database

    @contextlib.asynccontextmanager
    async def scratch(self, label: str) -> AsyncIterator[ReadModelStore]:
        with tempfile.TemporaryDirectory(prefix=f"projectionist-{label}-") as directory:
            path = str(Path(directory) / "scratch.db")
            database = SqliteDatabase(path, f"sqlite:///{path}")
            await database.open()
            try:
                store = SqliteReadModelStore(database)
                await store.apply_schema()
                yield store
            finally:
                await database.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[ReadModelTransaction]:
        async with self.database.transaction("projecting", write=True) as connection:
            tx = SqliteReadModelTransaction(connection, self.database.url)
            yield tx
            await tx.flush()  # writes queued after the last statement

    async def apply_schema(self) -> None:
        """Apply the ``read_models`` migrations."""
        await apply_migrations(MigrationSession(self.database), (READ_MODELS,))

    async def checkpoints(self) -> dict[str, Checkpoint]:
        async with self.database.transaction("reading checkpoints", write=False) as connection:
            cursor = await connection.execute(_CHECKPOINT_SELECT)
            rows = await cursor.fetchall()
        return {row[0]: _checkpoint_from_row(tuple(row)) for row in rows}


def _checkpoint_from_row(row: Sequence[Any]) -> Checkpoint:
    return Checkpoint(
        name=row[0],
        version=row[1],
        position=Position(row[2], row[3]),
        events_processed=row[4],
        updated_at=datetime.fromisoformat(row[5]),
    )
