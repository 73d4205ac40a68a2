"""PostgreSQL event store through asyncpg: the production backend.

The global order is the pair (appending transaction id, position); readers only see events of
transactions older than the oldest one still running, which makes the order gap-free without
serializing appends. docs/global-order.md explains why and what it costs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ...allocation import fewer_collections
from ...defaults import DEFAULT_BATCH_SIZE, DEFAULT_POLL_INTERVAL
from ...errors import (
    ConfigurationError,
    InvalidInputError,
    StoreUnavailableError,
    TransactionConflictError,
)
from ...events import (
    START,
    EncodedEvent,
    NewEvent,
    Position,
    RecordedEvent,
    validate_position,
    validate_read_stream,
)
from ...identifiers import quote_identifier, validate_identifier
from ...importing import BatchWritten, ImportRow
from ...migrations import EVENTS, READ_MODELS, applied_version, apply_migrations
from ...partitions import Partition
from ...readmodel import ReadModelStore
from ...source import validated_read
from ...store import (
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
)
from ...upcasting import Rewrite
from ...urls import pop_query_option, redact_url
from .appending import insert_events, run_inline_hooks
from .connections import Connection
from .errors import CONNECTION_ERRORS, translate_errors, why_no_connection
from .importing import ImportStatements, import_with_retries
from .migrating import MigrationSession
from .notifications import Notifier
from .read_models import PostgresReadModelStore
from .statements import NO_HORIZON, describe_holder, event_from_row, event_statements
from .transactions import PostgresReplay, PostgresTransaction
from .upgrading import rewrite_events

DEFAULT_SCHEMA = "projectionist"
_APPEND_ATTEMPTS = 5


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release: a round trip per use, and our statements
    change no session state (asyncpg still rolls back any open transaction)."""


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
        if "" in (schema, url_schema):
            raise ConfigurationError(
                f"empty schema name in {redact_url(url)}: give ?schema=NAME (or schema=) a "
                f"name, or leave it out for the default {DEFAULT_SCHEMA!r}"
            )
        self.schema = validate_identifier(schema or url_schema or DEFAULT_SCHEMA, "schema name")
        self.url = redact_url(url)
        self.poll_interval = poll_interval
        self._dsn = dsn
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._horizon_floor = 0
        self.channel = f"projectionist_{self.schema}"
        self._q = quote_identifier(self.schema)
        # Handlers write unqualified tables: every connection of the store resolves them in
        # its schema first (``public`` behind it, for extensions' functions).
        self._search_path = f"{self._q}, public"
        self._sql = event_statements(self._q, self.channel)
        self._import_sql = ImportStatements(self._q, self.schema)
        self._notifier = Notifier(
            dsn, self.channel, lambda: self.pool, self._changes, self._sql.notify
        )
        self._read_models = PostgresReadModelStore(
            lambda: self.pool, self._q, self._translate_errors
        )

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
                server_settings={"search_path": self._search_path},
            )
        except asyncpg.ClientConfigurationError as exc:  # e.g. ?sslmode=bogus
            raise ConfigurationError(f"invalid PostgreSQL URL {self.url}: {exc}") from exc
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreUnavailableError(
                f"cannot connect to {self.url}: {why_no_connection(exc)}"
            ) from exc
        except ValueError as exc:  # asyncpg's own parsing of the URL: a bad port or host
            raise ConfigurationError(f"invalid PostgreSQL URL {self.url}: {exc}") from exc
        self._notifier.start(self.schema, self.notify_interval, self.poll_interval)

    async def close(self) -> None:
        await self._notifier.stop()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailableError(f"store {self.url} is not open: call open() first")
        return self._pool

    def _translate_errors(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return translate_errors(doing, self.schema, self.url)

    @contextlib.asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[PoolConnectionProxy]:
        with self._translate_errors(doing):
            async with self.pool.acquire() as connection:
                try:
                    yield connection
                except CONNECTION_ERRORS:
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
                MigrationSession(connection, self._q), (EVENTS, READ_MODELS)
            )
        return reached[EVENTS]

    async def schema_version(self) -> int:
        async with self._connection("reading the schema version") as connection:
            return await applied_version(MigrationSession(connection, self._q), EVENTS)

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
        """A transaction on one pooled connection: append events atomically with your own
        writes; see ``EventStore.transaction``."""
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
        self._notifier.request()

    async def append_on(
        self,
        connection: Any,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        """Append on the caller's asyncpg connection, inside its transaction if one is open.

        The events commit with that transaction or vanish with its rollback. Readers in other
        processes learn of them by polling unless ``events_committed()`` is called after
        the commit (``transaction()`` does both for you).
        """
        if not isinstance(connection, Connection):
            raise InvalidInputError(
                "PostgresEventStore.append_on takes an asyncpg connection (or tx.connection of "
                f"store.transaction()), not {connection!r}"
            )
        expected, encoded = prepare_append(stream_id, events, expected_version, self.upcasters)
        args = (stream_id, expected, encoded, expected_version)
        if not self.inline_hooks:
            return (await self._append_rows(connection, self._sql.append, *args))[0]
        # Inline projections run in the append's transaction (a savepoint inside yours).
        nested = connection.is_in_transaction()
        async with connection.transaction():
            sql = self._sql.append_reading_path
            result, first = await self._append_rows(connection, sql, *args)
            paths = (self._search_path, first["search_path"])
            await run_inline_hooks(connection, self._q, paths, self.inline_hooks, result, nested)
        return result

    async def _append_rows(
        self,
        connection: Connection,
        sql: str,
        stream_id: str,
        expected: int | None,
        encoded: list[EncodedEvent],
        expected_version: ExpectedVersion,
    ) -> tuple[AppendResult, asyncpg.Record]:
        with self._translate_errors(f"appending to stream {stream_id!r}"):
            return await insert_events(
                connection, sql, stream_id, expected, encoded, expected_version
            )

    async def _import_batch(self, rows: list[ImportRow]) -> BatchWritten:
        """One batch of an import: binary COPY in one transaction (docs/importing.md)."""
        written = await import_with_retries(
            self._connection, self._import_sql, rows, _APPEND_ATTEMPTS
        )
        self.events_committed()
        return written

    async def rewrite_events(self, rewrites: Sequence[Rewrite]) -> int:
        async with self._connection("upgrading events") as connection:
            return await rewrite_events(connection, self._q, rewrites)

    # -- reading ----------------------------------------------------------------------------

    async def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        from_version = validate_read_stream(stream_id, from_version, limit)
        async with self._connection(f"reading stream {stream_id!r}") as connection:
            rows = await connection.fetch(self._sql.read_stream, stream_id, from_version, limit)
        return [event_from_row(row) for row in rows]

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
        after, limit, budget, wanted, part = validated_read(
            after, limit, types, max_bytes, partition
        )
        args: list[object] = [after.tx, after.seq, limit, budget]
        # In an exclusive replay appends are locked out: every committed event is final.
        horizon = NO_HORIZON if exclusive else await self._horizon(connection)
        args.append(horizon)
        if exclusive or part.count > 1:
            sql = self._sql.read_all_partition
            args += [wanted, part.index, part.count]
        elif wanted is None:
            sql = self._sql.read_all
        else:
            sql = self._sql.read_all_types
            args.append(wanted)
        with self._translate_errors("reading all events"), fewer_collections():
            rows = await connection.fetch(sql, *args)
            events = [event_from_row(row, 2) for row in rows]
        if len(events) == limit or (events and rows[-1]["reached"] >= budget):
            return EventBatch(events, events[-1].position)  # cut by count or by bytes
        if rows:
            head = Position(rows[0]["head_tx"], rows[0]["head_position"])
        elif sql is self._sql.read_all:
            return EventBatch([], after)  # nothing after it below the horizon at all
        else:  # a filtered read that found nothing may still have scanned past events
            head = await self._head_below(connection, horizon)
        return EventBatch(events, max(after, head))

    async def _head_below(self, connection: Connection, horizon: int) -> Position:
        with self._translate_errors("reading the head"):
            row = await connection.fetchrow(self._sql.head, horizon)
        return START if row is None else Position(row[0], row[1])

    async def _horizon(self, connection: Connection) -> int:
        """This store's horizon, in a statement of its own: a later statement's snapshot sees
        every committed event below it, and no event can commit below it any more.

        Once true of a horizon, that stays true; so the highest one seen is kept. A fresh
        one can be lower: a transaction that wrote before it appended announces itself
        with its older id, a bound below its (younger) order key."""
        with self._translate_errors("reading the horizon"):
            horizon: int = await connection.fetchval(self._sql.horizon)
        self._horizon_floor = max(self._horizon_floor, horizon)
        return self._horizon_floor

    async def count_after(self, after: Position, partition: Partition | None = None) -> int:
        validate_position(after, "after")
        part = (partition or Partition(0, 1)).validate()
        async with self._connection("counting events") as connection:
            horizon = await self._horizon(connection)
            if part.count == 1:
                count: int = await connection.fetchval(
                    self._sql.count_after, after.tx, after.seq, horizon
                )
            else:
                count = await connection.fetchval(
                    self._sql.count_after_partition,
                    after.tx, after.seq, horizon, part.count, part.index,
                )  # fmt: skip
        return count

    async def backlog(self, after: Position, partition: Partition | None = None) -> Backlog:
        validate_position(after, "after")
        part = (partition or Partition(0, 1)).validate()
        async with self._connection("measuring the backlog") as connection:
            row = await connection.fetchrow(
                self._sql.backlog, after.tx, after.seq, BACKLOG_COUNTED, part.count, part.index
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
            # SHARE mode waits for appends in flight and blocks new ones; reads go on. The
            # replay's handlers write in the store's schema, whatever a pooled session was
            # left with by a caller of transaction().
            await connection.execute(
                f"LOCK TABLE {self._q}.events IN SHARE MODE; "
                f"SET LOCAL search_path = {self._search_path}"
            )
            yield PostgresReplay(self, connection)

    async def head(self) -> Position:
        async with self._connection("reading the head") as connection:
            return await self._head_below(connection, await self._horizon(connection))

    async def last_committed(self) -> Position:
        async with self._connection("reading the last committed event") as connection:
            row = await connection.fetchrow(self._sql.last_committed)
        return START if row is None else Position(row["tx_id"], row["position"])

    async def held_back(self) -> HeldBack | None:
        async with self._connection("looking for held back events") as connection:
            horizon = await self._horizon(connection)
            row = await connection.fetchrow(self._sql.held_back_since, horizon)
            # An event committed between the horizon and that read is not held back: it was
            # committing while we looked. Only one still beyond a fresh horizon waits.
            if row is None or row["tx_id"] < await self._horizon(connection):
                return None
            holder = await connection.fetchrow(self._sql.oldest_appender)
        by = None if holder is None else describe_holder(holder)
        return HeldBack(max(0.0, row["seconds"]), by)

    async def _head_and_held_back(self) -> tuple[Position, bool]:
        async with self._connection("reading the head") as connection:
            horizon = await self._horizon(connection)
            row = await connection.fetchrow(self._sql.head_held_back, horizon)
        assert row is not None
        head = START if row["tx_id"] is None else Position(row["tx_id"], row["position"])
        return head, bool(row["held_back"])
