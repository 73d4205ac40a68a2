"""SQLite event store: embedded, zero set-up, the default for demos and newcomers.

One connection per store, in WAL mode. SQLite runs one write transaction at a time, so
positions commit in order: the autoincrement position alone is a gap-free global order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
import tempfile
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from ..defaults import DEFAULT_BATCH_SIZE, DEFAULT_POLL_INTERVAL
from ..errors import (
    BackendError,
    ConcurrencyError,
    ConfigurationError,
    InvalidInputError,
    MalformedStatementError,
    MissingTableError,
    ProjectionistError,
    SchemaError,
    StoreUnavailableError,
    UnsupportedFeatureError,
)
from ..events import START, NewEvent, Position, RecordedEvent, validate_name
from ..identifiers import quote_identifier
from ..migrations import (
    EVENTS,
    READ_MODELS,
    VERSION_TABLE,
    Dialect,
    applied_version,
    apply_migrations,
)
from ..partitions import Partition, partition_of
from ..readmodel import (
    Checkpoint,
    CheckpointConflictError,
    ReadModelStore,
    ReadModelTransaction,
    SqlFeatures,
)
from ..store import (
    ANY,
    BACKLOG_COUNTED,
    AppendResult,
    Backlog,
    ChangeSignal,
    EventBatch,
    EventStore,
    ExclusiveReplay,
    ExpectedVersion,
    prepare_append,
    validate_batch_size,
    validate_max_bytes,
    validate_types,
)

_PLACEHOLDER = re.compile(r"\$(\d+)")
_CHECKPOINT_SELECT = (
    "SELECT name, version, tx_id, position, events_processed, updated_at "
    "FROM projection_checkpoints"
)
# Tables of our migrations: a statement that misses one means the schema was not applied.
OWN_TABLES = (
    "events",
    "streams",
    VERSION_TABLE,
    "projection_checkpoints",
    "projection_leases",
    "projection_workers",
    "projection_faults",
    "projection_dead_letters",
)
_EVENT_COLUMNS = (
    "e.position, e.id, e.stream_id, e.version, e.type, e.data, e.metadata, e.recorded_at"
)
_SQLITE_MAX_VARIABLES = 32766
_APPEND_COLUMNS = 7


def sqlite_path(url: str) -> str:
    """``sqlite:///relative.db`` -> ``relative.db``; ``sqlite:////abs.db`` -> ``/abs.db``."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigurationError(
            f"invalid SQLite URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    return url[len(prefix) :].partition("?")[0]


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


def _event_from_row(row: Sequence[Any]) -> RecordedEvent:
    return RecordedEvent(
        id=uuid.UUID(row[1]),
        stream_id=row[2],
        version=row[3],
        type=row[4],
        data=orjson.loads(row[5]),
        metadata=orjson.loads(row[6]),
        recorded_at=datetime.fromisoformat(row[7]),
        position=Position(0, row[0]),
    )


class SqliteDatabase:
    """One SQLite connection in WAL mode, shared by the event store and its read models.

    The lock keeps one transaction at a time on the connection; write transactions begin
    IMMEDIATE, so they also exclude writers in other processes.
    """

    def __init__(self, path: str, url: str, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.url = url
        self._busy_timeout = busy_timeout
        self._connection: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self._connection is not None:
            return
        if self.path != ":memory:" and not Path(self.path).parent.exists():
            raise StoreUnavailableError(
                f"cannot open {self.url}: directory {str(Path(self.path).parent)!r} does not exist"
            )
        try:
            connection = await aiosqlite.connect(
                self.path, isolation_level=None, timeout=self._busy_timeout
            )
            await connection.execute("PRAGMA journal_mode=WAL")
            await connection.execute("PRAGMA synchronous=NORMAL")
            await connection.execute("PRAGMA foreign_keys=ON")
            await connection.create_function("pj_partition", 2, partition_of, deterministic=True)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open {self.url}: {exc}") from exc
        self._connection = connection

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()

    @contextlib.asynccontextmanager
    async def transaction(self, doing: str, *, write: bool) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the connection inside one transaction; roll back on any error."""
        if self._connection is None:
            raise StoreUnavailableError(f"store {self.url} is not open: call open() first")
        connection = self._connection
        async with self._lock:
            try:
                try:
                    await _uncancellable(
                        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    )
                except asyncio.CancelledError:
                    await _uncancellable(connection.execute("ROLLBACK"))
                    raise
                try:
                    yield connection
                except BaseException:
                    await _rollback(connection)
                    raise
                try:
                    await _uncancellable(connection.execute("COMMIT"))
                except sqlite3.Error:
                    # A failed COMMIT (a deferred constraint) leaves the transaction open on
                    # the store's only connection: end it, or nothing could run after.
                    await _rollback(connection)
                    raise
            except sqlite3.OperationalError as exc:
                raise _translate_operational_error(exc, doing, self.url) from exc
            except sqlite3.Error as exc:
                raise BackendError(f"{doing} failed in {self.url}: {exc}") from exc


async def _rollback(connection: aiosqlite.Connection) -> None:
    """Roll back if a transaction is open, keeping the error that led here if it fails."""
    if connection.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            await _uncancellable(connection.execute("ROLLBACK"))


async def _uncancellable(statement: Awaitable[object]) -> None:
    """Let BEGIN, COMMIT and ROLLBACK finish even if the caller is cancelled meanwhile.

    aiosqlite runs a statement in its thread whether or not anyone still awaits it, so a
    cancelled BEGIN would otherwise leave a transaction open that nobody ends.
    """
    task = asyncio.ensure_future(statement)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise


def _translate_operational_error(
    exc: sqlite3.OperationalError, doing: str, url: str
) -> ProjectionistError:
    message = str(exc)
    table = message.removeprefix("no such table: ") if message.startswith("no such table") else ""
    if table in OWN_TABLES:
        return SchemaError(
            f"the projectionist schema is missing in {url} (no table {table!r}): "
            "run 'projectionist schema apply' (or await store.apply_schema())"
        )
    if table:
        return MissingTableError(
            f"{doing} failed in {url}: table {table!r} does not exist; "
            "does the projection's setup create it?",
            table,
        )
    if message.startswith("no such module: "):
        return UnsupportedFeatureError(
            f"this SQLite ({sqlite3.sqlite_version}) was built without the "
            f"{message.removeprefix('no such module: ')!r} module"
        )
    # FTS5 reports a malformed MATCH query as its own error, a syntax error, or (for a
    # "word:" prefix) an unknown column.
    if "fts5" in message or "syntax error" in message or "no such column" in message:
        return MalformedStatementError(f"{doing} failed in {url}: {message}")
    return BackendError(f"{doing} failed in {url}: {exc}")


@contextlib.contextmanager
def _translated(doing: str, url: str) -> Iterator[None]:
    """Driver errors of one statement as projectionist errors, the driver's as the cause."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise _translate_operational_error(exc, doing, url) from exc
    except sqlite3.Error as exc:
        raise BackendError(f"{doing} failed in {url}: {type(exc).__name__}: {exc}") from exc


@functools.lru_cache(maxsize=512)
def to_sqlite_placeholders(sql: str) -> str:
    """``$1`` -> ``?1``: SQLite's numbered parameters, so SQL is written once for both."""
    translated: str = _PLACEHOLDER.sub(r"?\1", sql)
    return translated


class _MigrationSession:
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


SQLITE_FEATURES = SqlFeatures(
    document_type="TEXT",
    document_as_text="",
    clock="((julianday('now') - 2440587.5) * 86400.0)",
    take_or_skip="",  # write transactions are exclusive: there is nothing to skip or share
    share_with_takers="",
    one_of_texts="{column} IN (SELECT value FROM json_each({param}))",
    texts_as_json=True,
    full_text="fts5",
)


class SqliteReadModelTransaction(ReadModelTransaction):
    dialect = "sqlite"
    sql = SQLITE_FEATURES

    def __init__(
        self, connection: aiosqlite.Connection, url: str = "the read-model database"
    ) -> None:
        self.connection = connection
        self._url = url

    async def execute(self, sql: str, *args: object) -> int:
        with _translated("a statement", self._url):
            cursor = await self.connection.execute(to_sqlite_placeholders(sql), args)
        return int(cursor.rowcount)

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        with _translated("a statement", self._url):
            await self.connection.executemany(to_sqlite_placeholders(sql), rows)

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with _translated("a query", self._url):
            cursor = await self.connection.execute(to_sqlite_placeholders(sql), args)
            return [tuple(row) for row in await cursor.fetchall()]

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
        for table in tables:
            await self.execute(f"DROP TABLE IF EXISTS {quote_identifier(table)}")


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
            yield SqliteReadModelTransaction(connection, self.database.url)

    async def apply_schema(self) -> None:
        """Apply the ``read_models`` migrations."""
        await apply_migrations(_MigrationSession(self.database), (READ_MODELS,))

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

    def transaction(
        self, doing: str, *, write: bool
    ) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        return self.database.transaction(doing, write=write)

    # -- schema -----------------------------------------------------------------------------

    async def apply_schema(self) -> int:
        """Apply the ``events`` and the ``read_models`` migrations; the events version."""
        reached = await apply_migrations(_MigrationSession(self.database), (EVENTS, READ_MODELS))
        return reached[EVENTS]

    async def schema_version(self) -> int:
        return await applied_version(_MigrationSession(self.database), EVENTS)

    # -- writing ----------------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        expected, encoded = prepare_append(stream_id, events, expected_version)
        recorded_at = datetime.now(UTC)
        stamp = recorded_at.isoformat()
        async with self.transaction(f"appending to stream {stream_id!r}", write=True) as connection:
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
            positions: list[int] = []
            chunk = _SQLITE_MAX_VARIABLES // _APPEND_COLUMNS
            for start in range(0, len(encoded), chunk):
                part = encoded[start : start + chunk]
                values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(part))
                params: list[object] = []
                for offset, event in enumerate(part, start=current + start + 1):
                    params += (
                        str(event.id),
                        stream_id,
                        offset,
                        event.type,
                        event.data,
                        event.metadata,
                        stamp,
                    )
                try:
                    cursor = await connection.execute(
                        "INSERT INTO events (id, stream_id, version, type, data, metadata, "
                        f"recorded_at) VALUES {values} RETURNING position",
                        params,
                    )
                except sqlite3.IntegrityError as exc:
                    raise InvalidInputError(
                        f"append to stream {stream_id!r}: an event id already exists ({exc})"
                    ) from exc
                positions += sorted(row[0] for row in await cursor.fetchall())
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
        self._changes.notify()
        return AppendResult(recorded)

    # -- reading ----------------------------------------------------------------------------

    async def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        validate_name(stream_id, "stream id")
        if limit is not None:
            validate_batch_size(limit)
        async with self.transaction(f"reading stream {stream_id!r}", write=False) as connection:
            cursor = await connection.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events e WHERE e.stream_id = ? AND e.version >= ? "
                "ORDER BY e.version LIMIT ?",
                (stream_id, from_version, -1 if limit is None else limit),
            )
            rows = await cursor.fetchall()
        return [_event_from_row(row) for row in rows]

    async def read_all(
        self,
        after: Position = START,
        limit: int = DEFAULT_BATCH_SIZE,
        types: Collection[str] | None = None,
        max_bytes: int | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        validate_batch_size(limit)
        wanted = validate_types(types)
        async with self.transaction("reading all events", write=False) as connection:
            return await _read_all_on(connection, after, limit, wanted, max_bytes, partition)

    async def head(self) -> Position:
        async with self.transaction("reading the head", write=False) as connection:
            cursor = await connection.execute("SELECT max(position) FROM events")
            row = await cursor.fetchone()
        return Position(0, row[0]) if row and row[0] is not None else START

    async def count_after(self, after: Position, partition: Partition | None = None) -> int:
        part = (partition or Partition(0, 1)).validate()
        sql, params = "SELECT count(*) FROM events WHERE position > ?", [after.seq]
        if part.count > 1:
            sql += " AND pj_partition(stream_id, ?) = ?"
            params += [part.count, part.index]
        async with self.transaction("counting events", write=False) as connection:
            cursor = await connection.execute(sql, params)
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def backlog(self, after: Position, partition: Partition | None = None) -> Backlog:
        part = (partition or Partition(0, 1)).validate()
        async with self.transaction("measuring the backlog", write=False) as connection:
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
        async with self.transaction("replaying", write=True) as connection:
            yield _SqliteReplay(connection)


class _SqliteReplay(ExclusiveReplay):
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.read_model = SqliteReadModelTransaction(connection)
        self._connection = connection

    async def read_all(
        self,
        after: Position,
        limit: int,
        types: Collection[str] | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        return await _read_all_on(
            self._connection, after, limit, validate_types(types), None, partition
        )


async def _read_all_on(
    connection: aiosqlite.Connection,
    after: Position,
    limit: int,
    wanted: list[str] | None,
    max_bytes: int | None = None,
    partition: Partition | None = None,
) -> EventBatch:
    type_filter = ""
    params: list[object] = [after.seq]
    if wanted is not None:
        type_filter = f"AND e.type IN ({', '.join('?' * len(wanted))})" if wanted else "AND 0"
        params += wanted
    part = (partition or Partition(0, 1)).validate()
    if part.count > 1:  # pj_partition is partition_of, registered on every connection
        type_filter += " AND pj_partition(e.stream_id, ?) = ?"
        params += [part.count, part.index]
    params += [limit, validate_max_bytes(max_bytes)]
    # One statement: the page and the head it was read against, from one snapshot. The page
    # ends at ``limit`` events or once ``max_bytes`` of payload are reached.
    sql = (
        f"SELECT h.head, page.* FROM (SELECT max(position) AS head FROM events) h "
        "LEFT JOIN (SELECT w.* FROM (SELECT c.*, count(*) OVER () AS fetched, "
        "sum(c.size) OVER (ORDER BY c.position) - c.size AS before FROM ("
        f"SELECT {_EVENT_COLUMNS}, length(e.data) + length(e.metadata) AS size FROM events e "
        f"WHERE e.position > ? {type_filter} ORDER BY e.position LIMIT ?) c) w "
        "WHERE w.before < ?) page ON 1 ORDER BY page.position"
    )
    cursor = await connection.execute(sql, params)
    rows = list(await cursor.fetchall())
    events = [_event_from_row(tuple(row)[1:9]) for row in rows if row[1] is not None]
    if len(events) == limit or (events and rows[0][10] > len(events)):
        return EventBatch(events, events[-1].position)  # cut by count or by bytes
    head = rows[0][0] if rows and rows[0][0] is not None else 0
    return EventBatch(events, max(after, Position(0, head)))


def _split_statements(script: str) -> list[str]:
    """Split a migration into statements (our SQLite migrations contain no ';' in literals)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]
