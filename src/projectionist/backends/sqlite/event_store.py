"""SQLite event store: embedded, zero set-up, the default for demos and newcomers.

One connection per store, in WAL mode. SQLite runs one write transaction at a time, so
positions commit in order: the autoincrement position alone is a gap-free global order.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from ...defaults import DEFAULT_BATCH_SIZE, DEFAULT_POLL_INTERVAL
from ...errors import ConcurrencyError, InvalidInputError
from ...events import (
    START,
    EncodedEvent,
    NewEvent,
    Position,
    RecordedEvent,
    validate_batch_size,
    validate_position,
    validate_read_stream,
    validate_types,
)
from ...importing import BatchWritten, ImportRow
from ...migrations import EVENTS, READ_MODELS, applied_version, apply_migrations
from ...partitions import Partition
from ...readmodel import ReadModelStore
from ...store import (
    ANY,
    BACKLOG_COUNTED,
    AppendResult,
    Backlog,
    ChangeSignal,
    EventBatch,
    EventStore,
    ExclusiveReplay,
    ExpectedVersion,
    StoreTransaction,
    append_savepoint,
    prepare_append,
)
from ...upcasting import Rewrite
from .database import SqliteDatabase, sqlite_path
from .importing import import_batch
from .migrating import MigrationSession
from .read_models import SqliteReadModelStore, SqliteReadModelTransaction
from .statements import EVENT_COLUMNS, event_from_row, insert_events, read_all_on
from .upgrading import rewrite_events

# Stores on the same file in one process share one signal, so an append through one wakes
# readers of the others at once. Other processes are noticed by polling.
_SIGNALS: weakref.WeakValueDictionary[str, ChangeSignal] = weakref.WeakValueDictionary()


def _signal_for(path: str) -> ChangeSignal:
    if path == ":memory:":
        return ChangeSignal()
    key = str(Path(path).resolve())
    signal = _SIGNALS.get(key)
    if signal is None:
        signal = _SIGNALS[key] = ChangeSignal()
    return signal


class SqliteEventStore(EventStore):
    """Event store in one SQLite file (or ``sqlite:///:memory:``)."""

    def __init__(
        self, url: str, *, poll_interval: float = DEFAULT_POLL_INTERVAL, busy_timeout: float = 5.0
    ) -> None:
        super().__init__()
        self.url = url
        self.path = sqlite_path(url)
        self._changes = _signal_for(self.path)
        self.poll_interval = poll_interval
        self.database = SqliteDatabase(self.path, url, busy_timeout)
        self._read_models = SqliteReadModelStore(self.database)

    async def open(self) -> None:
        await self.database.open()

    async def close(self) -> None:
        await self.database.close()

    def read_models(self) -> ReadModelStore:
        return self._read_models

    def _transaction(
        self, doing: str, *, write: bool
    ) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        return self.database.transaction(doing, write=write)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTransaction]:
        """The store's write transaction (BEGIN IMMEDIATE on its connection) for your own
        writes and appends; see ``EventStore.transaction``."""
        try:
            async with self._transaction("running a transaction", write=True) as connection:
                yield StoreTransaction(self, SqliteReadModelTransaction(connection, self.url))
        finally:
            self._changes.notify()  # wake readers (a rollback wakes them for nothing)

    # -- schema -----------------------------------------------------------------------------

    async def apply_schema(self) -> int:
        """Apply the ``events`` and the ``read_models`` migrations; the events version."""
        reached = await apply_migrations(MigrationSession(self.database), (EVENTS, READ_MODELS))
        return reached[EVENTS]

    async def schema_version(self) -> int:
        return await applied_version(MigrationSession(self.database), EVENTS)

    # -- writing ----------------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        expected, encoded = prepare_append(stream_id, events, expected_version, self.upcasters)
        async with self._transaction(
            f"appending to stream {stream_id!r}", write=True
        ) as connection:
            result = await self._append_rows(
                connection, stream_id, expected, encoded, expected_version
            )
        self._changes.notify()
        return result

    async def append_on(
        self,
        connection: Any,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        """Append on an aiosqlite connection inside its open transaction (``transaction()``'s
        ``tx.connection``); see ``EventStore.append_on``."""
        if not isinstance(connection, aiosqlite.Connection) or not connection.in_transaction:
            raise InvalidInputError(
                "SqliteEventStore.append_on takes an aiosqlite connection inside an open "
                f"transaction (tx.connection of store.transaction()), not {connection!r}"
            )
        expected, encoded = prepare_append(stream_id, events, expected_version, self.upcasters)
        async with append_savepoint(SqliteReadModelTransaction(connection, self.url)):
            return await self._append_rows(
                connection, stream_id, expected, encoded, expected_version
            )

    async def _append_rows(
        self,
        connection: aiosqlite.Connection,
        stream_id: str,
        expected: int | None,
        encoded: list[EncodedEvent],
        expected_version: ExpectedVersion,
    ) -> AppendResult:
        """Write validated events inside the connection's transaction, then project inline."""
        cursor = await connection.execute(
            "SELECT version FROM streams WHERE stream_id = ?", (stream_id,)
        )
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        if expected is not None and current != expected:
            raise ConcurrencyError(stream_id, expected_version, current)
        await connection.execute(
            "INSERT INTO streams (stream_id, version) VALUES (?, ?) "
            "ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
            (stream_id, current + len(encoded)),
        )
        recorded_at = datetime.now(UTC)
        stamp = recorded_at.isoformat()
        positions = await insert_events(connection, stream_id, current, encoded, stamp)
        recorded = tuple(
            RecordedEvent(
                id=event.id,
                stream_id=stream_id,
                version=current + index,
                type=event.type,
                data=orjson.loads(event.data),
                metadata=orjson.loads(event.metadata),
                recorded_at=recorded_at,
                position=Position(0, position),
            )
            for index, (event, position) in enumerate(zip(encoded, positions, strict=True), 1)
        )
        # Inline projections: same connection, same transaction as the events.
        for hook in self.inline_hooks:
            await hook(SqliteReadModelTransaction(connection, self.url), recorded)
        return AppendResult(recorded)

    async def _import_batch(self, rows: list[ImportRow]) -> BatchWritten:
        """One batch of an import in one write transaction (docs/importing.md)."""
        async with self._transaction("importing events", write=True) as connection:
            written = await import_batch(connection, rows)
        if written.written:
            self._changes.notify()
        return written

    async def rewrite_events(self, rewrites: Sequence[Rewrite]) -> int:
        return await rewrite_events(self.database, rewrites)

    # -- reading ----------------------------------------------------------------------------

    async def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        from_version = validate_read_stream(stream_id, from_version, limit)
        async with self._transaction(f"reading stream {stream_id!r}", write=False) as connection:
            cursor = await connection.execute(
                f"SELECT {EVENT_COLUMNS} FROM events e WHERE e.stream_id = ? AND e.version >= ? "
                "ORDER BY e.version LIMIT ?",
                (stream_id, from_version, -1 if limit is None else limit),
            )
            rows = await cursor.fetchall()
        return [event_from_row(row) for row in rows]

    async def read_all(
        self,
        after: Position = START,
        limit: int = DEFAULT_BATCH_SIZE,
        types: Collection[str] | None = None,
        max_bytes: int | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        validate_position(after, "after")
        validate_batch_size(limit)
        wanted = validate_types(types)
        async with self._transaction("reading all events", write=False) as connection:
            return await read_all_on(connection, after, limit, wanted, max_bytes, partition)

    async def head(self) -> Position:
        async with self._transaction("reading the head", write=False) as connection:
            cursor = await connection.execute("SELECT max(position) FROM events")
            row = await cursor.fetchone()
        return Position(0, row[0]) if row and row[0] is not None else START

    async def count_after(self, after: Position, partition: Partition | None = None) -> int:
        validate_position(after, "after")
        part = (partition or Partition(0, 1)).validate()
        sql, params = "SELECT count(*) FROM events WHERE position > ?", [after.seq]
        if part.count > 1:
            sql += " AND pj_partition(stream_id, ?) = ?"
            params += [part.count, part.index]
        async with self._transaction("counting events", write=False) as connection:
            cursor = await connection.execute(sql, params)
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def backlog(self, after: Position, partition: Partition | None = None) -> Backlog:
        validate_position(after, "after")
        part = (partition or Partition(0, 1)).validate()
        async with self._transaction("measuring the backlog", write=False) as connection:
            cursor = await connection.execute(
                "SELECT count(*), max(c.position), min(c.recorded_at), "
                "(SELECT max(position) FROM events) FROM (SELECT position, recorded_at "
                "FROM events WHERE position > ? AND (? = 1 OR pj_partition(stream_id, ?) = ?) "
                "ORDER BY position LIMIT ?) c",
                (after.seq, part.count, part.count, part.index, BACKLOG_COUNTED),
            )
            row = await cursor.fetchone()
        assert row is not None
        oldest = None if row[2] is None else datetime.fromisoformat(row[2])
        return Backlog.measured(row[0], row[1], row[3], oldest, part.count)

    @contextlib.asynccontextmanager
    async def exclusive_replay(self) -> AsyncIterator[ExclusiveReplay]:
        async with self._transaction("replaying", write=True) as connection:
            yield _SqliteReplay(connection, self.url)


class _SqliteReplay(ExclusiveReplay):
    def __init__(self, connection: aiosqlite.Connection, url: str) -> None:
        self.read_model = SqliteReadModelTransaction(connection, url)
        self._connection = connection

    async def read_all(
        self,
        after: Position,
        limit: int,
        types: Collection[str] | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        return await read_all_on(
            self._connection, after, limit, validate_types(types), None, partition
        )
