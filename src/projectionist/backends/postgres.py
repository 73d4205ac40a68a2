"""PostgreSQL event store through asyncpg: the production backend.

The global order is the pair (appending transaction id, position); readers only see events of
transactions older than the oldest one still running, which makes the order gap-free without
serializing appends. docs/global-order.md explains why and what it costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy
from orjson import loads

from ..defaults import DEFAULT_BATCH_SIZE, DEFAULT_POLL_INTERVAL
from ..errors import (
    BackendError,
    ConcurrencyError,
    ConfigurationError,
    InvalidInputError,
    SchemaError,
    StoreUnavailableError,
    TransactionConflictError,
)
from ..events import START, EncodedEvent, NewEvent, Position, RecordedEvent, validate_name
from ..identifiers import quote_identifier, validate_identifier
from ..migrations import (
    EVENTS,
    READ_MODELS,
    VERSION_TABLE,
    Dialect,
    applied_version,
    apply_migrations,
)
from ..partitions import PARTITION_SQL, Partition
from ..readmodel import (
    Checkpoint,
    CheckpointConflictError,
    ReadModelStore,
    ReadModelTransaction,
)
from ..store import (
    ANY,
    BACKLOG_COUNTED,
    AppendResult,
    Backlog,
    EventBatch,
    EventStore,
    ExclusiveReplay,
    ExpectedVersion,
    HeldBack,
    prepare_append,
    validate_batch_size,
    validate_max_bytes,
    validate_types,
)
from ..urls import pop_query_option, redact_url

logger = logging.getLogger("projectionist.store.postgres")

Connection = asyncpg.Connection | PoolConnectionProxy
"""A connection of your own or one borrowed from the store's pool."""

DEFAULT_SCHEMA = "projectionist"
# The first half of every store's advisory lock key (migration 0002): appenders hold it.
STORE_LOCK_CLASS = 1886547818
# Above every order key: reads in an exclusive replay (appends locked out) see everything.
_NO_HORIZON = 9223372036854775807
_EVENT_COLUMNS = (
    "e.position, e.tx_id, e.id, e.stream_id, e.version, e.type, "
    "e.data::text AS data, e.metadata::text AS metadata, e.recorded_at"
)
_APPEND_ATTEMPTS = 5
# Objects of our migrations: a statement that misses one means the schema was not applied.
_OWN_OBJECTS = (
    "events",
    "streams",
    VERSION_TABLE,
    "projection_checkpoints",
    "projection_leases",
    "projection_workers",
    "projection_faults",
    "projection_dead_letters",
    "append_events",
    "horizon",
)
_CHECKPOINT_SELECT = "SELECT name, version, tx_id, position, events_processed, updated_at FROM"
_CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release: a round trip per use, and our statements
    change no session state (asyncpg still rolls back any open transaction)."""


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _: event.set()


def _why_no_connection(exc: BaseException) -> str:
    """What is wrong when a connection cannot be made, said without naming any tool."""
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"the server answers, but that database does not exist ({exc})"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):  # or a bad password
        return f"the server refused the login ({exc})"
    if isinstance(exc, asyncpg.PostgresError):
        return f"the server refused the connection ({exc})"
    return f"no PostgreSQL server answers at that address ({exc})"


class _MigrationSession:
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


def _event_from_row(row: asyncpg.Record, at: int = 0) -> RecordedEvent:
    """Columns position, tx_id, id, stream_id, version, type, data, metadata, recorded_at,
    from index ``at`` on (by index: on the hot path of every read, names cost a lookup)."""
    return RecordedEvent(
        row[at + 2],
        row[at + 3],
        row[at + 4],
        row[at + 5],
        loads(row[at + 6]),
        loads(row[at + 7]),
        row[at + 8],
        Position(row[at + 1], row[at]),
    )


class PostgresEventStore(EventStore):
    """Event store in one PostgreSQL schema (``projectionist`` unless told otherwise).

    The schema can be given as an argument or as ``?schema=name`` in the URL.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_size: int = 10,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        notify_interval: float = 0.01,
    ) -> None:
        super().__init__()
        if not 0 <= notify_interval <= 1:
            raise ConfigurationError(
                f"notify_interval must be between 0 and 1 second, not {notify_interval!r}"
            )
        self.notify_interval = notify_interval
        dsn, url_schema = pop_query_option(url, "schema")
        self.schema = validate_identifier(schema or url_schema or DEFAULT_SCHEMA, "schema name")
        self.url = redact_url(url)
        self.poll_interval = poll_interval
        self._dsn = dsn
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._background: list[asyncio.Task[None]] = []
        self._notify_requested = asyncio.Event()
        self._horizon_floor = 0
        self.channel = f"projectionist_{self.schema}"
        # The channel is built from a validated identifier, so it is safe as a literal.
        self._sql_notify = (
            "BEGIN; SET LOCAL synchronous_commit = off; "
            f"SELECT pg_notify('{self.channel}', ''); COMMIT"
        )
        q = quote_identifier(self.schema)
        self._q = q
        self._sql_append = f"SELECT * FROM {q}.append_events($1, $2, $3, $4, $5, $6)"
        # The horizon of this store (migration 0002, docs/global-order.md): read in its own
        # statement, before the statement that reads events below it.
        self._sql_horizon = f"SELECT {q}.horizon()"
        self._sql_head = (
            f"SELECT e.tx_id, e.position FROM {q}.events e WHERE e.tx_id < $1 "
            "ORDER BY e.tx_id DESC, e.position DESC LIMIT 1"
        )
        self._sql_last_committed = (
            f"SELECT e.tx_id, e.position FROM {q}.events e "
            "ORDER BY e.tx_id DESC, e.position DESC LIMIT 1"
        )
        self._sql_head_held_back = f"""
            SELECT h.tx_id, h.position, coalesce((
                -- the newest committed event (one index entry), not an EXISTS the planner
                -- may answer with a sequential scan
                SELECT b.tx_id FROM {q}.events b ORDER BY b.tx_id DESC, b.position DESC LIMIT 1
            ) >= $1, false) AS held_back
            FROM (SELECT) AS one LEFT JOIN LATERAL (
                SELECT e.tx_id, e.position FROM {q}.events e WHERE e.tx_id < $1
                ORDER BY e.tx_id DESC, e.position DESC LIMIT 1
            ) h ON true
        """
        # Committed events after a position, whether readers see them yet or not: counted up
        # to $3, the rest estimated from positions (status must not count a long backlog).
        part = PARTITION_SQL.format(column="e.stream_id", count="$4::bigint")
        self._sql_backlog = f"""
            SELECT count(*) AS counted, max(c.position) AS reached,
                   min(c.recorded_at) AS oldest,
                   (SELECT max(l.position) FROM {q}.events l) AS last
            FROM (
                SELECT e.position, e.recorded_at FROM {q}.events e
                WHERE (e.tx_id, e.position) > ($1, $2) AND ($4 = 1 OR {part} = $5)
                ORDER BY e.tx_id, e.position LIMIT $3
            ) c
        """
        # Seconds the first committed event beyond the horizon has waited, if there is one.
        self._sql_held_back_since = (
            "SELECT e.tx_id, extract(epoch from clock_timestamp() - e.recorded_at)::float8 "
            f"AS seconds FROM {q}.events e WHERE e.tx_id >= $1 "
            "ORDER BY e.tx_id, e.position LIMIT 1"
        )
        self._sql_oldest_appender = f"""
            SELECT a.pid, s.state,
                   extract(epoch from clock_timestamp() - s.xact_start)::float8 AS seconds
            FROM pg_locks a LEFT JOIN pg_stat_activity s ON s.pid = a.pid
            WHERE a.locktype = 'advisory' AND a.granted AND a.objsubid = 2
              AND a.classid = {STORE_LOCK_CLASS} AND a.objid = {q}.store_lock_key()::oid
              AND a.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              -- a prepared transaction has no process; a process whose transaction ended
              -- between the two reads (idle, or gone) is no holder
              AND (a.pid IS NULL OR (s.pid IS NOT NULL AND s.state IS DISTINCT FROM 'idle'))
            ORDER BY a.pid IS NOT NULL, s.xact_start NULLS LAST LIMIT 1
        """
        self._sql_read_stream = (
            f"SELECT {_EVENT_COLUMNS} FROM {q}.events e WHERE e.stream_id = $1 "
            "AND e.version >= $2 ORDER BY e.version LIMIT $3"
        )
        self._sql_count_after = (
            f"SELECT count(*) FROM {q}.events e WHERE (e.tx_id, e.position) > ($1, $2) "
            "AND e.tx_id < $3"
        )
        self._sql_count_after_partition = (
            self._sql_count_after
            + f" AND {PARTITION_SQL.format(column='e.stream_id', count='$4::bigint')} = $5"
        )
        self._read_models = PostgresReadModelStore(
            lambda: self.pool, self._q, self._translate_errors
        )
        self._sql_read_all = self._read_all_sql(filtered=False)
        self._sql_read_all_types = self._read_all_sql(filtered=True)
        self._sql_read_all_partition = self._read_all_sql(filtered=True, partitioned=True)

    def _read_all_sql(self, *, filtered: bool, partitioned: bool = False) -> str:
        # One statement, one snapshot: the page and the head it was read against. The head
        # lets a filtered read move its checkpoint past events of other types it scanned.
        # The page stops at $3 events or once $4 bytes of payload are reached (at least one
        # event); "fetched" tells the caller whether bytes cut it short. $5 is the horizon,
        # read by an earlier statement (only events below it are final). A partitioned read
        # ($7 of $8) keeps the streams whose hash falls in its partition.
        type_filter = "AND e.type = ANY($6::text[])" if filtered else ""
        if partitioned:  # types optional: NULL for all
            type_filter = "AND ($6::text[] IS NULL OR e.type = ANY($6))"
            part = PARTITION_SQL.format(column="e.stream_id", count="$8::bigint")
            type_filter += f" AND ($8::bigint = 1 OR {part} = $7::bigint)"
        q = self._q
        return f"""
            WITH horizon AS (SELECT $5::bigint AS xmin),
            head AS (
                SELECT h.tx_id, h.position FROM {q}.events h
                WHERE h.tx_id < (SELECT xmin FROM horizon)
                ORDER BY h.tx_id DESC, h.position DESC LIMIT 1
            )
            SELECT head.tx_id AS head_tx, head.position AS head_position, page.*
            FROM head LEFT JOIN LATERAL (
                SELECT w.position, w.tx_id, w.id, w.stream_id, w.version, w.type,
                       w.data::text AS data, w.metadata::text AS metadata, w.recorded_at,
                       w.fetched
                FROM (
                    SELECT c.*, count(*) OVER () AS fetched,
                           sum(c.size) OVER (ORDER BY c.tx_id, c.position) - c.size AS before
                    FROM (
                        SELECT e.position, e.tx_id, e.id, e.stream_id, e.version, e.type,
                               e.data, e.metadata, e.recorded_at,
                               pg_column_size(e.data) + pg_column_size(e.metadata) AS size
                        FROM {q}.events e
                        WHERE e.tx_id < (SELECT xmin FROM horizon)
                          AND (e.tx_id, e.position) > ($1::bigint, $2::bigint)
                          {type_filter}
                        ORDER BY e.tx_id, e.position
                        LIMIT $3
                    ) c
                ) w
                WHERE w.before < $4::bigint
            ) page ON true
            ORDER BY page.tx_id, page.position
        """

    # -- connection management ------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                reset=_keep_session,
                server_settings={"search_path": f"{self._q}, public"},
            )
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreUnavailableError(
                f"cannot connect to {self.url}: {_why_no_connection(exc)}"
            ) from exc
        except ValueError as exc:  # asyncpg's own parsing of the URL: a bad port or host
            raise ConfigurationError(f"invalid PostgreSQL URL {self.url}: {exc}") from exc
        self._background = [
            asyncio.create_task(self._listen_forever(), name=f"projectionist-listen-{self.schema}"),
            asyncio.create_task(self._notify_forever(), name=f"projectionist-notify-{self.schema}"),
        ]

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background = []
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailableError(f"store {self.url} is not open: call open() first")
        return self._pool

    async def _listen_forever(self) -> None:
        """Keep one connection LISTENing; reconnect with backoff when it dies.

        Notifications only wake readers, who then query. Every (re)connect also wakes them,
        since notifications sent while disconnected are lost.
        """
        backoff = 0.1
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                connection.add_termination_listener(_setter(lost))
                await connection.add_listener(self.channel, self._on_notification)
                logger.debug("listening", extra={"action": "listen_start", "channel": self.channel})
                self._changes.notify()
                backoff = 0.1
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 10)
                    if not lost.is_set():  # a half-open TCP connection never reports loss
                        await connection.fetchval("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: reconnect
                logger.warning(
                    "listen connection failed: %s",
                    exc,
                    extra={"action": "listen_failed", "channel": self.channel},
                )
            finally:
                if connection is not None and not connection.is_closed():
                    connection.terminate()
            self._changes.notify()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _on_notification(self, *_: Any) -> None:
        self._changes.notify()

    @contextlib.contextmanager
    def _translate_errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError) as exc:
            if not any(name in str(exc) for name in _OWN_OBJECTS):
                raise BackendError(f"{doing} failed: {exc}") from exc
            raise SchemaError(
                f"the projectionist schema {self.schema!r} is missing or not up to date in "
                f"{self.url}: run 'projectionist schema apply' (or await store.apply_schema())"
            ) from exc
        except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError) as exc:
            raise TransactionConflictError(
                f"{doing} failed: {exc}; roll back and retry the whole transaction"
            ) from exc
        except asyncpg.InvalidSchemaNameError as exc:
            raise SchemaError(
                f"schema {self.schema!r} does not exist in {self.url}: "
                "run 'projectionist schema apply'"
            ) from exc
        except _CONNECTION_ERRORS as exc:
            raise StoreUnavailableError(f"{doing} failed, {self.url}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise BackendError(f"{doing} failed: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[PoolConnectionProxy]:
        with self._translate_errors(doing):
            async with self.pool.acquire() as connection:
                try:
                    yield connection
                except _CONNECTION_ERRORS:
                    # Never hand a broken or confused connection to the next user (a dead
                    # one may be detached from the pool already: terminating it then fails).
                    with contextlib.suppress(Exception):
                        connection.terminate()
                    raise

    # -- schema -----------------------------------------------------------------------------

    async def apply_schema(self) -> int:
        """Apply the ``events`` and the ``read_models`` migrations; the events version."""
        async with self._connection("applying the schema") as connection:
            reached = await apply_migrations(
                _MigrationSession(connection, self._q), (EVENTS, READ_MODELS)
            )
        return reached[EVENTS]

    async def schema_version(self) -> int:
        async with self._connection("reading the schema version") as connection:
            return await applied_version(_MigrationSession(connection, self._q), EVENTS)

    # -- writing ----------------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        for attempt in range(1, _APPEND_ATTEMPTS + 1):
            try:
                async with self._connection(f"appending to stream {stream_id!r}") as connection:
                    result = await self.append_on(connection, stream_id, events, expected_version)
                break
            except TransactionConflictError:
                # Our single-statement transaction rolled back; a retry gets a newer id.
                if attempt == _APPEND_ATTEMPTS:
                    raise
        self.events_committed()
        return result

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        """A transaction on one connection: append events atomically with your own writes.

        ``async with store.transaction() as tx: await tx.append(...); await
        tx.connection.execute(...)``. Everything commits together, or nothing on an error.
        """
        try:
            async with (
                self._connection("running a transaction") as connection,
                connection.transaction(),
            ):
                yield PostgresTransaction(self, connection)
        finally:
            # Also after a rollback: ending a transaction moves the horizon, which may make
            # other transactions' events visible.
            self.events_committed()

    def events_committed(self) -> None:
        """Wake readers after a commit: in this process now, in others by a NOTIFY soon.

        The NOTIFY is sent after commit, from a background task that merges bursts of
        requests, because a NOTIFY inside the append would serialize every commit.
        """
        self._changes.notify()
        self._notify_requested.set()

    async def _notify_forever(self) -> None:
        """The first commit after a quiet spell is announced at once; the commits of the
        next ``notify_interval`` seconds share one NOTIFY after it. A NOTIFY is a transaction
        of its own and takes a transaction id: one per burst, not one per append."""
        while True:
            await self._notify_requested.wait()
            self._notify_requested.clear()
            try:
                async with self.pool.acquire() as connection:
                    # One round trip, and no wait for a WAL flush: a NOTIFY is delivered at
                    # commit whether or not the commit record reached the disk.
                    await connection.execute(self._sql_notify)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - readers still poll
                logger.warning(
                    "notify failed: %s",
                    exc,
                    extra={"action": "notify_failed", "channel": self.channel},
                )
                await asyncio.sleep(self.poll_interval)
            await asyncio.sleep(self.notify_interval)

    async def append_on(
        self,
        connection: Connection,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        """Append on the caller's connection, inside its transaction if one is open.

        The events commit with that transaction or vanish with its rollback. Readers in other
        processes learn of them by polling unless ``events_committed()`` is called after
        the commit (``transaction()`` does both for you).
        """
        expected, encoded = prepare_append(stream_id, events, expected_version)
        if not self.inline_hooks:
            return await self._append_rows(
                connection, stream_id, expected, encoded, expected_version
            )
        # Inline projections run in the append's transaction (a savepoint inside yours).
        async with connection.transaction():
            result = await self._append_rows(
                connection, stream_id, expected, encoded, expected_version
            )
            read_model = PostgresReadModelTransaction(connection, self._q)
            for hook in self.inline_hooks:
                await hook(read_model, result.events)
        return result

    async def _append_rows(
        self,
        connection: Connection,
        stream_id: str,
        expected: int | None,
        encoded: list[EncodedEvent],
        expected_version: ExpectedVersion,
    ) -> AppendResult:
        with self._translate_errors(f"appending to stream {stream_id!r}"):
            try:
                rows = await connection.fetch(
                    self._sql_append,
                    stream_id,
                    expected,
                    [e.id for e in encoded],
                    [e.type for e in encoded],
                    [e.data for e in encoded],
                    [e.metadata for e in encoded],
                )
            except asyncpg.UniqueViolationError as exc:
                raise InvalidInputError(
                    f"append to stream {stream_id!r}: an event id already exists ({exc.detail})"
                ) from exc
            except asyncpg.SerializationError as exc:
                raise TransactionConflictError(
                    f"append to stream {stream_id!r} conflicts with a younger transaction that "
                    "appended to it first: roll back and retry the whole transaction"
                ) from exc
        if rows[0]["position"] is None:
            raise ConcurrencyError(stream_id, expected_version, rows[0]["version"])
        rows = sorted(rows, key=lambda row: row["version"])
        return AppendResult(
            tuple(
                RecordedEvent(
                    id=event.id,
                    stream_id=stream_id,
                    version=row["version"],
                    type=event.type,
                    data=orjson.loads(event.data),
                    metadata=orjson.loads(event.metadata),
                    recorded_at=row["recorded_at"],
                    position=Position(row["tx_id"], row["position"]),
                )
                for event, row in zip(encoded, rows, strict=True)
            )
        )

    # -- reading ----------------------------------------------------------------------------

    async def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        validate_name(stream_id, "stream id")
        if limit is not None:
            validate_batch_size(limit)
        async with self._connection(f"reading stream {stream_id!r}") as connection:
            rows = await connection.fetch(self._sql_read_stream, stream_id, from_version, limit)
        return [_event_from_row(row) for row in rows]

    async def read_all(
        self,
        after: Position = START,
        limit: int = DEFAULT_BATCH_SIZE,
        types: Collection[str] | None = None,
        max_bytes: int | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        async with self._connection("reading all events") as connection:
            return await self._read_all_on(
                connection,
                after,
                limit,
                types,
                exclusive=False,
                max_bytes=max_bytes,
                partition=partition,
            )

    async def _read_all_on(
        self,
        connection: Connection,
        after: Position,
        limit: int,
        types: Collection[str] | None,
        *,
        exclusive: bool,
        max_bytes: int | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        validate_batch_size(limit)
        wanted = validate_types(types)
        part = (partition or Partition(0, 1)).validate()
        args: list[object] = [after.tx, after.seq, limit, validate_max_bytes(max_bytes)]
        # In an exclusive replay appends are locked out: every committed event is final.
        args.append(_NO_HORIZON if exclusive else await self._horizon(connection))
        if exclusive or part.count > 1:
            sql = self._sql_read_all_partition
            args += [wanted, part.index, part.count]
        elif wanted is None:
            sql = self._sql_read_all
        else:
            sql = self._sql_read_all_types
            args.append(wanted)
        with self._translate_errors("reading all events"):
            rows = await connection.fetch(sql, *args)
        if not rows:  # the store is empty (or nothing is visible yet)
            return EventBatch([], after)
        events = [_event_from_row(row, 2) for row in rows if row[2] is not None]
        if len(events) == limit or (events and rows[0]["fetched"] > len(events)):
            return EventBatch(events, events[-1].position)  # cut by count or by bytes
        head = Position(rows[0]["head_tx"], rows[0]["head_position"])
        return EventBatch(events, max(after, head))

    async def _horizon(self, connection: Connection) -> int:
        """This store's horizon, in a statement of its own: a later statement's snapshot sees
        every committed event below it, and no event can commit below it any more.

        Once true of a horizon, that stays true; so the highest one seen is kept. A fresh
        one can be lower: a transaction that wrote before it appended announces itself
        with its older id, a bound below its (younger) order key."""
        with self._translate_errors("reading the horizon"):
            horizon: int = await connection.fetchval(self._sql_horizon)
        self._horizon_floor = max(self._horizon_floor, horizon)
        return self._horizon_floor

    async def count_after(self, after: Position, partition: Partition | None = None) -> int:
        part = (partition or Partition(0, 1)).validate()
        async with self._connection("counting events") as connection:
            horizon = await self._horizon(connection)
            if part.count == 1:
                count: int = await connection.fetchval(
                    self._sql_count_after, after.tx, after.seq, horizon
                )
            else:
                count = await connection.fetchval(
                    self._sql_count_after_partition,
                    after.tx, after.seq, horizon, part.count, part.index,
                )  # fmt: skip
        return count

    async def backlog(self, after: Position, partition: Partition | None = None) -> Backlog:
        part = (partition or Partition(0, 1)).validate()
        async with self._connection("measuring the backlog") as connection:
            row = await connection.fetchrow(
                self._sql_backlog, after.tx, after.seq, BACKLOG_COUNTED, part.count, part.index
            )
        assert row is not None
        return Backlog.measured(
            row["counted"], row["reached"], row["last"], row["oldest"], part.count
        )

    def read_models(self) -> ReadModelStore:
        return self._read_models

    @contextlib.asynccontextmanager
    async def exclusive_replay(self) -> AsyncIterator[ExclusiveReplay]:
        async with (
            self._connection("replaying") as connection,
            connection.transaction(),
        ):
            # SHARE mode waits for appends in flight and blocks new ones; reads go on.
            await connection.execute(f"LOCK TABLE {self._q}.events IN SHARE MODE")
            yield _PostgresReplay(self, connection)

    async def head(self) -> Position:
        async with self._connection("reading the head") as connection:
            horizon = await self._horizon(connection)
            row = await connection.fetchrow(self._sql_head, horizon)
        return START if row is None else Position(row["tx_id"], row["position"])

    async def last_committed(self) -> Position:
        async with self._connection("reading the last committed event") as connection:
            row = await connection.fetchrow(self._sql_last_committed)
        return START if row is None else Position(row["tx_id"], row["position"])

    async def held_back(self) -> HeldBack | None:
        async with self._connection("looking for held back events") as connection:
            horizon = await self._horizon(connection)
            row = await connection.fetchrow(self._sql_held_back_since, horizon)
            # An event committed between the horizon and that read is not held back: it was
            # committing while we looked. Only one still beyond a fresh horizon waits.
            if row is None or row["tx_id"] < await self._horizon(connection):
                return None
            holder = await connection.fetchrow(self._sql_oldest_appender)
        by = None if holder is None else _describe_holder(holder)
        return HeldBack(max(0.0, row["seconds"]), by)

    async def _head_and_held_back(self) -> tuple[Position, bool]:
        async with self._connection("reading the head") as connection:
            horizon = await self._horizon(connection)
            row = await connection.fetchrow(self._sql_head_held_back, horizon)
        assert row is not None
        head = START if row["tx_id"] is None else Position(row["tx_id"], row["position"])
        return head, bool(row["held_back"])


def _describe_holder(row: asyncpg.Record) -> str:
    """The open appending transaction, without its SQL text (it may hold secrets)."""
    if row["pid"] is None:
        return "a prepared transaction (see pg_prepared_xacts)"
    state = row["state"] or "state not visible to this role"
    age = "" if row["seconds"] is None else f", open {row['seconds']:.1f}s"
    return f"transaction of pid {row['pid']} ({state}{age})"


class PostgresTransaction:
    """An open transaction of a PostgresEventStore (see ``PostgresEventStore.transaction``)."""

    def __init__(self, store: PostgresEventStore, connection: Connection) -> None:
        self.store = store
        self.connection = connection

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        return await self.store.append_on(self.connection, stream_id, events, expected_version)


class _PostgresReplay(ExclusiveReplay):
    def __init__(self, store: PostgresEventStore, connection: Connection) -> None:
        self.read_model = PostgresReadModelTransaction(connection, store._q)
        self._store = store
        self._connection = connection

    async def read_all(
        self,
        after: Position,
        limit: int,
        types: Collection[str] | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        return await self._store._read_all_on(
            self._connection, after, limit, types, exclusive=True, partition=partition
        )


@contextlib.contextmanager
def _lost_connection_is_unavailable() -> Iterator[None]:
    """A handler's statement on a dead connection: say so in our terms (retried as transient),
    keeping the driver's exception as the cause. Other driver errors stay as they are."""
    try:
        yield
    except _CONNECTION_ERRORS as exc:
        raise StoreUnavailableError(f"lost the read model's connection: {exc}") from exc


def _rows_changed(status: str) -> int:
    """``"UPDATE 3"`` -> 3; statements without a count -> 0."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class PostgresReadModelTransaction(ReadModelTransaction):
    dialect = "postgres"

    def __init__(self, connection: Connection, quoted_schema: str) -> None:
        self.connection = connection
        self._table = f"{quoted_schema}.projection_checkpoints"

    async def execute(self, sql: str, *args: object) -> int:
        with _lost_connection_is_unavailable():
            return _rows_changed(await self.connection.execute(sql, *args))

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        with _lost_connection_is_unavailable():
            await self.connection.executemany(sql, rows)

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with _lost_connection_is_unavailable():
            return [tuple(row) for row in await self.connection.fetch(sql, *args)]

    async def load_checkpoint(self, name: str, *, lock: bool = False) -> Checkpoint | None:
        row = await self.connection.fetchrow(
            f"{_CHECKPOINT_SELECT} {self._table} WHERE name = $1{' FOR UPDATE' if lock else ''}",
            name,
        )
        return None if row is None else _checkpoint_from_row(row)

    async def save_checkpoint(
        self, name: str, version: int, expected: Position | None, new: Position, processed: int
    ) -> None:
        if expected is None:
            status = await self.connection.execute(
                f"INSERT INTO {self._table} (name, version, tx_id, position, events_processed) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
                name, version, new.tx, new.seq, processed,
            )  # fmt: skip
        else:
            status = await self.connection.execute(
                f"UPDATE {self._table} SET version = $2, tx_id = $3, position = $4, "
                "events_processed = events_processed + $5, updated_at = now() "
                "WHERE name = $1 AND tx_id = $6 AND position = $7",
                name, version, new.tx, new.seq, processed, expected.tx, expected.seq,
            )  # fmt: skip
        if _rows_changed(status) != 1:
            raise CheckpointConflictError(
                f"projection {name!r}: another runner moved the checkpoint first"
            )

    async def lock_projection(self, name: str) -> None:
        await self.connection.execute(
            "SELECT pg_advisory_xact_lock(hashtext('projectionist.projection.' || $1))",
            f"{self._table}.{name}",
        )

    async def delete_checkpoint(self, name: str) -> None:
        await self.execute(f"DELETE FROM {self._table} WHERE name = $1", name)

    async def drop_tables(self, tables: Sequence[str]) -> None:
        for table in tables:
            await self.connection.execute(f"DROP TABLE IF EXISTS {quote_identifier(table)}")


class PostgresReadModelStore(ReadModelStore):
    """Read models and checkpoints in a PostgreSQL schema.

    Unqualified table names in handlers resolve in that schema first (the store's
    connections set ``search_path`` to it, then ``public``).
    """

    dialect = "postgres"

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        quoted_schema: str,
        translate_errors: Callable[[str], contextlib.AbstractContextManager[None]],
        base: str | None = None,
    ) -> None:
        self._pool = pool
        self._q = quoted_schema
        self._translate_errors = translate_errors
        self._base = base
        self._idle_ms = 0
        self._owner_label: str | None = None
        self._begin = self._begin_sql()

    def _begin_sql(self) -> str:
        begin = "BEGIN; SET LOCAL synchronous_commit = off"
        if self._idle_ms:
            begin += f"; SET LOCAL idle_in_transaction_session_timeout = {self._idle_ms}"
        if self._owner_label:  # hex digits after a fixed prefix: safe as a literal
            # Put in front of the session's own name (kept, shown after it) for this
            # transaction: end_stuck_transactions finds the owner's transactions by it.
            begin += (
                "; SELECT set_config('application_name', "
                f"'{self._owner_label}' || current_setting('application_name'), true)"
            )
        # A side schema (a blue/green build, a verification) puts itself first on the path:
        # handlers' unqualified tables land there, the operations tables resolve to the base.
        if self._base is not None:
            begin += f"; SET LOCAL search_path = {self._q}, {self._base}, public"
        return begin

    def guard_transactions(self, owner: str, idle_seconds: float) -> None:
        if not idle_seconds > 0:
            raise ConfigurationError(
                f"the idle transaction limit must be positive, not {idle_seconds!r}"
            )
        self._idle_ms = max(1, round(idle_seconds * 1000))
        self._owner_label = owner_label(owner)
        self._begin = self._begin_sql()

    async def end_stuck_transactions(self, owner: str, older_than: float) -> int:
        with self._translate_errors("ending stuck transactions"):
            async with self._pool().acquire() as connection:
                ended: int = await connection.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                    "FROM pg_stat_activity WHERE datname = current_database() "
                    "AND starts_with(application_name, $1) AND pid <> pg_backend_pid() "
                    "AND xact_start < clock_timestamp() - make_interval(secs => $2)",
                    owner_label(owner),
                    float(older_than),
                )
        return ended

    def in_schema(self, schema: str) -> PostgresReadModelStore:
        """The same database, with read models and checkpoints in ``schema`` (a side schema
        such as a blue/green build); the base schema stays on the path behind it."""
        side = PostgresReadModelStore(
            self._pool, quote_identifier(schema), self._translate_errors, base=self._q
        )
        side._idle_ms, side._owner_label = self._idle_ms, self._owner_label
        side._begin = side._begin_sql()
        return side

    @property
    def quoted_schema(self) -> str:
        return self._q

    @contextlib.asynccontextmanager
    async def scratch(self, label: str) -> AsyncIterator[ReadModelStore]:
        digest = hashlib.md5(label.encode(), usedforsecurity=False).hexdigest()[:16]
        side = self.in_schema(f"pj_scratch_{digest}")  # short, whatever the label
        drop = f"DROP SCHEMA IF EXISTS {side.quoted_schema} CASCADE"
        with self._translate_errors("preparing a scratch schema"):
            async with self._pool().acquire() as connection:
                await connection.execute(drop)
        await side.apply_schema()
        try:
            yield side
        finally:
            with self._translate_errors("dropping a scratch schema"):
                async with self._pool().acquire() as connection:
                    await connection.execute(drop)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[ReadModelTransaction]:
        # Driver errors of the engine's own statements (checkpoints, a lost connection)
        # become projectionist errors; a handler's failure arrives as a HandlerError already.
        with self._translate_errors("projecting"):
            async with self._pool().acquire() as connection:
                # Commit without waiting for the WAL flush: a server crash can lose the last
                # read-model commits, but rows and checkpoint together, so the projection
                # re-applies those batches; it never double-applies or skips. Appends (and
                # inline projections, in the append's transaction) stay fully durable.
                await connection.execute(self._begin)
                try:
                    yield PostgresReadModelTransaction(connection, self._q)
                except BaseException:
                    try:
                        await connection.execute("ROLLBACK")
                    except Exception:  # noqa: BLE001 - keep the original error
                        # It cannot roll back (dead, or busy with a cancelled command):
                        # close it rather than return it to the pool in that state.
                        with contextlib.suppress(Exception):
                            connection.terminate()
                    raise
                await connection.execute("COMMIT")

    async def apply_schema(self) -> None:
        """Apply the ``read_models`` migrations (a side schema: see ``_apply_side_schema``)."""
        if self._base is not None:
            await self._apply_side_schema(self._base)
            return
        with self._translate_errors("applying the read-model schema"):
            async with self._pool().acquire() as connection:
                await apply_migrations(_MigrationSession(connection, self._q), (READ_MODELS,))

    async def _apply_side_schema(self, base: str) -> None:
        """A side schema holds only checkpoints, in a table shaped like the base schema's
        (which the read_models track keeps): it is dropped or swapped in, never migrated.
        It has no operations tables, so that the side's search_path finds the base's."""
        with self._translate_errors("preparing a side schema"):
            async with self._pool().acquire() as connection, connection.transaction():
                # Builders of one side schema queue here rather than collide on CREATE.
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('projectionist.side.' || $1))",
                    self._q,
                )
                await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {self._q}")
                await connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._q}.projection_checkpoints "
                    f"(LIKE {base}.projection_checkpoints INCLUDING ALL)"
                )

    async def checkpoints(self) -> dict[str, Checkpoint]:
        with self._translate_errors("reading checkpoints"):
            async with self._pool().acquire() as connection:
                rows = await connection.fetch(
                    f"{_CHECKPOINT_SELECT} {self._q}.projection_checkpoints"
                )
        return {row["name"]: _checkpoint_from_row(row) for row in rows}


def owner_label(owner: str) -> str:
    """The ``application_name`` of an owner's transactions: short (names are cut at 63
    bytes) and made of hex digits, whatever the worker id holds."""
    return (
        "projectionist-worker-"
        + hashlib.md5(owner.encode(), usedforsecurity=False).hexdigest()[:16]
    )


def _checkpoint_from_row(row: asyncpg.Record) -> Checkpoint:
    return Checkpoint(
        name=row["name"],
        version=row["version"],
        position=Position(row["tx_id"], row["position"]),
        events_processed=row["events_processed"],
        updated_at=row["updated_at"],
    )
