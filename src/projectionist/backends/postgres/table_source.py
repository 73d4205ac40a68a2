"""``PostgresTableSource``: the rows of any PostgreSQL table as events, read gap-safely.

A reader that orders by a bare sequence loses events: a transaction that took id 104 and
commits after id 105 was read is never seen (docs/global-order.md). So the source asks for
one of two explicit strategies (docs/sources.md):

- ``"transaction_id"``: the table has an xid8 column (``projectionist source prepare`` adds
  one, ``prepare_sql`` prints it). Rows are read in (tx, position) order, only below the
  reader's horizon ``pg_snapshot_xmin(pg_current_snapshot())``, read in a statement of its
  own before the page: no transaction below it is still open, so no row can appear there
  later. The checkpoint is Position(tx, position).
- ``"commit_order_promised"``: the writers commit in position order (e.g. under a table
  lock), which the user states; rows are read in position order, checkpoint Position(0, n).

A table without a version or an id column gives events with ``version`` or ``id`` None:
nothing is made up. ``data`` is a JSON object in a json, jsonb or text column, or anything
else (bytea, a custom encoding) that the ``decode=`` function given turns into a dict.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg
import orjson

from ...defaults import DEFAULT_BATCH_SIZE, DEFAULT_POLL_INTERVAL
from ...errors import BackendError, ConfigurationError, StoreUnavailableError
from ...events import (
    START,
    Position,
    RecordedEvent,
    validate_position,
)
from ...identifiers import quote_identifier, validate_identifier
from ...partitions import PARTITION_SQL, Partition
from ...source import (
    BACKLOG_COUNTED,
    Backlog,
    Decoder,
    EventBatch,
    HeldBack,
    decoded,
    validated_read,
)
from ...urls import redact_url
from .connections import Connection
from .errors import CONNECTION_ERRORS, why_no_connection
from .pooled_source import PooledPostgresSource

Strategy = Literal["transaction_id", "commit_order_promised"]
STRATEGIES: tuple[Strategy, ...] = ("transaction_id", "commit_order_promised")
DEFAULT_TX_COLUMN = "pj_tx"

WHY_A_STRATEGY = (
    "a reader that orders by a bare sequence loses events: a transaction that took a "
    "smaller position and commits after a younger one was read is never seen "
    "(docs/global-order.md). Either add a transaction id column with "
    "'projectionist source prepare' (or prepare_sql) and use strategy='transaction_id' "
    "with columns.tx, or state that the writers commit in position order (e.g. under a "
    "table lock) with strategy='commit_order_promised'"
)


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """Which column of the table holds what an event needs (None: the table has none)."""

    position: str = "id"
    stream: str = "stream"
    type: str = "type"
    data: str = "data"
    time: str = "recorded_at"
    version: str | None = None
    id: str | None = None
    metadata: str | None = None
    tx: str | None = None

    def validated(self) -> ColumnMap:
        for what in ("position", "stream", "type", "data", "time"):
            validate_identifier(getattr(self, what), f"{what} column")
        for what in ("version", "id", "metadata", "tx"):
            if (name := getattr(self, what)) is not None:
                validate_identifier(name, f"{what} column")
        return self


def prepare_sql(
    table: str, *, schema: str | None, column: str = DEFAULT_TX_COLUMN, position: str = "id"
) -> str:
    """The migration that makes ``table`` readable with strategy ``"transaction_id"``.

    Writers need no change: the column's default is their transaction's id. Rows that exist
    get the migrating transaction's id, which is fine: ALTER TABLE waits for the open
    writers, so those rows are all older than any later writer's. Adding a column with a
    volatile default rewrites the table under an exclusive lock: run it when that is fine.
    """
    name = _qualified(schema, table)
    tx, pos = quote_identifier(column), quote_identifier(position)
    index = quote_identifier(validate_identifier(f"{table}_{column}_order"[:48], "index name"))
    return (
        "BEGIN;\n"
        f"ALTER TABLE {name} ADD COLUMN {tx} xid8 NOT NULL DEFAULT pg_current_xact_id();\n"
        f"CREATE INDEX {index} ON {name} ({tx}, {pos});\n"
        "COMMIT;\n"
    )


def _qualified(schema: str | None, table: str) -> str:
    name = quote_identifier(validate_identifier(table, "table name"))
    if schema is None:
        return name
    return f"{quote_identifier(validate_identifier(schema, 'schema name'))}.{name}"


class PostgresTableSource(PooledPostgresSource):
    """The rows of one PostgreSQL table as events in a gap-safe global order."""

    def __init__(
        self,
        url: str,
        table: str,
        *,
        schema: str | None = None,
        columns: ColumnMap | None = None,
        strategy: Strategy | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        pool_size: int = 4,
        decode: Decoder | None = None,
    ) -> None:
        super().__init__(url, poll_interval=poll_interval, pool_size=pool_size, decode=decode)
        self.columns = (columns or ColumnMap()).validated()
        self.strategy = _checked_strategy(strategy, self.columns)
        self.table = self.what = _qualified(schema, table)
        self._horizon_floor = 0
        self._sql = _Statements(self.table, self.columns, raw_data=decode is not None)

    @property
    def _ordered_by_tx(self) -> bool:
        return self.strategy == "transaction_id"

    async def _horizon(self, connection: Connection) -> int:
        """The reader's horizon, in a statement of its own before the read: every
        transaction below it has ended, so the next statement sees all their rows and no
        row can appear below it any more. Once true, that stays true: keep the highest."""
        if not self._ordered_by_tx:
            return 0
        with self._translated("reading the horizon of"):
            horizon: int = await connection.fetchval(_HORIZON)
        self._horizon_floor = max(self._horizon_floor, horizon)
        return self._horizon_floor

    async def read_all(
        self,
        after: Position = START,
        limit: int = DEFAULT_BATCH_SIZE,
        types: Collection[str] | None = None,
        max_bytes: int | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        after, limit, budget, type_list, part = validated_read(
            after, limit, types, max_bytes, partition
        )
        async with self.pool.acquire() as connection:
            horizon = await self._horizon(connection)
            with self._translated("reading"):
                rows = await connection.fetch(
                    self._sql.page,
                    *(after.tx, after.seq, limit, horizon, type_list, part.count, part.index),
                    budget,
                )
        head = Position(rows[0]["head_tx"] or 0, rows[0]["head_seq"] or 0)
        events = [self._event(row) for row in rows if row["seq"] is not None]
        if len(events) == limit or (events and rows[0]["fetched"] > len(events)):
            return EventBatch(events, events[-1].position)  # cut by count or by bytes
        return EventBatch(events, max(after, head))

    def _event(self, row: asyncpg.Record) -> RecordedEvent:
        position = Position(row["tx"], row["seq"])
        metadata = row["metadata"]
        event_id = row["event_id"]
        return RecordedEvent(
            id=None if event_id is None else uuid.UUID(str(event_id)),
            stream_id=row["stream"],
            version=row["version"],
            type=row["type"],
            data=decoded(self.decode, row["data"], f"{self.table} row {position.seq}"),
            metadata={} if metadata is None else orjson.loads(metadata),
            recorded_at=row["recorded_at"],
            position=position,
        )

    async def head(self) -> Position:
        async with self.pool.acquire() as connection:
            horizon = await self._horizon(connection)
            with self._translated("reading the head of"):
                row = await connection.fetchrow(self._sql.head, horizon, not self._ordered_by_tx)
        return START if row is None else Position(row[0], row[1])

    async def held_back(self) -> HeldBack | None:
        """Committed rows at or above the horizon: an older transaction (of any table of
        the cluster) is still open. None under the promise, which cannot tell."""
        if not self._ordered_by_tx:
            return None
        async with self.pool.acquire() as connection:
            horizon = await self._horizon(connection)
            with self._translated("reading what is held back in"):
                seconds = await connection.fetchval(self._sql.held_back, horizon)
        return None if seconds is None else HeldBack(max(0.0, seconds), None)

    async def last_committed(self) -> Position:
        with self._translated("reading the last row of"):
            row = await self.pool.fetchrow(self._sql.head, 0, True)
        return START if row is None else Position(row[0], row[1])

    async def count_after(self, after: Position, partition: Partition | None = None) -> int:
        counted, _, _ = await self._count(after, partition, None)
        return counted

    async def backlog(self, after: Position, partition: Partition | None = None) -> Backlog:
        """Counted up to BACKLOG_COUNTED rows, estimated from positions beyond; it includes
        committed rows that readers cannot see yet (above the horizon)."""
        counted, reached, oldest = await self._count(after, partition, BACKLOG_COUNTED)
        last = await self.last_committed()
        parts = 1 if partition is None else partition.count
        return Backlog.measured(counted, reached, last.seq if last > START else None, oldest, parts)

    async def _count(
        self, after: Position, partition: Partition | None, bound: int | None
    ) -> tuple[int, int | None, datetime | None]:
        after = validate_position(after, "after")
        part = partition.validate() if partition is not None else Partition(0, 1)
        async with self.pool.acquire() as connection:
            horizon = await self._horizon(connection) if bound is None else 0
            with self._translated("counting the rows of"):
                rows = await connection.fetch(
                    self._sql.count,
                    *(after.tx, after.seq, horizon, bound is not None, part.count, part.index),
                    bound or 2**62,
                )
        return rows[0]["counted"], rows[0]["reached"], rows[0]["oldest"]


def _checked_strategy(strategy: object, columns: ColumnMap) -> Strategy:
    if strategy is None:
        raise ConfigurationError(
            f"PostgresTableSource needs an explicit strategy: {WHY_A_STRATEGY}"
        )
    if strategy not in STRATEGIES:
        raise ConfigurationError(
            f"unknown strategy {strategy!r}: use 'transaction_id' or 'commit_order_promised'"
        )
    if strategy == "transaction_id" and columns.tx is None:
        raise ConfigurationError(
            "strategy 'transaction_id' needs the table's xid8 column as columns.tx (ordering "
            f"by the position alone is a bare sequence): {WHY_A_STRATEGY}"
        )
    return "transaction_id" if strategy == "transaction_id" else "commit_order_promised"


_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


class _Statements:
    """The SQL text of one table and column map (identifiers quoted, values parameters).

    Without a tx column the tx of every row is 0 and the order is the position alone; the
    horizon parameter is then read but ignored (every committed row is below it)."""

    def __init__(self, table: str, columns: ColumnMap, *, raw_data: bool) -> None:
        self._table, self._columns, self._raw_data = table, columns, raw_data
        q = quote_identifier
        pos, tx_column = q(columns.position), columns.tx and q(columns.tx)
        self._pos = pos
        self._tx = f"{tx_column}::text::bigint" if tx_column else "0::bigint"
        self._order = f"{tx_column}, {pos}" if tx_column else pos
        self._order_desc = f"{tx_column} DESC, {pos} DESC" if tx_column else f"{pos} DESC"
        self.page = self._page()
        # $2: everything committed (last_committed, and the promise), else below horizon $1.
        self.head = (
            f"SELECT {self._tx}, {pos}::bigint FROM {table} "
            f"WHERE $2::bool OR {self._below('$1')} ORDER BY {self._order_desc} LIMIT 1"
        )
        self.held_back = (
            f"SELECT extract(epoch FROM clock_timestamp() - {quote_identifier(columns.time)})"
            f"::float8 FROM {table} WHERE NOT {self._below('$1')} "
            f"ORDER BY {self._order} LIMIT 1"
        )
        # $4: a bounded count (a backlog) reads past the horizon too: committed rows wait.
        self.count = f"""
            SELECT count(*) AS counted, max(c.seq) AS reached, min(c.recorded_at) AS oldest
            FROM (
                SELECT {pos}::bigint AS seq, {q(columns.time)} AS recorded_at FROM {table}
                WHERE {self._after()} AND ($4::bool OR {self._below("$3")})
                  AND {self._part("$5", "$6")}
                ORDER BY {self._order} LIMIT $7) c"""

    def _below(self, horizon: str) -> str:
        if self._columns.tx is None:
            return f"{horizon}::bigint IS NOT NULL"
        return f"{quote_identifier(self._columns.tx)} < {horizon}::bigint::text::xid8"

    def _after(self) -> str:
        """After the checkpoint ($1, $2): the row comparison the (tx, position) index serves."""
        if self._columns.tx is None:
            return f"{self._pos} > $2::bigint AND $1::bigint IS NOT NULL"
        tx = quote_identifier(self._columns.tx)
        return f"({tx}, {self._pos}) > ($1::bigint::text::xid8, $2::bigint)"

    def _part(self, count: str, index: str) -> str:
        stream = quote_identifier(self._columns.stream)
        return f"({count}::int = 1 OR {PARTITION_SQL.format(column=stream, count=count)} = {index})"

    def _page(self) -> str:
        """$1 $2 after, $3 limit, $4 horizon, $5 types, $6 $7 partition, $8 max bytes. The
        head is read in the same statement, so with the same snapshot as the page."""
        q, columns = quote_identifier, self._columns
        version = f"{q(columns.version)}::bigint" if columns.version else "NULL::bigint"
        event_id = f"{q(columns.id)}::text" if columns.id else "NULL::text"
        metadata = f"{q(columns.metadata)}::text" if columns.metadata else "NULL::text"
        # Raw for a decoder of the user's (bytea comes as bytes); as text for orjson.
        data = q(columns.data) if self._raw_data else f"{q(columns.data)}::text"
        data_size = f"pg_column_size({data})" if self._raw_data else f"octet_length({data})"
        return f"""
            WITH head AS (
                SELECT {self._tx} AS head_tx, {self._pos}::bigint AS head_seq FROM {self._table}
                WHERE {self._below("$4")} ORDER BY {self._order_desc} LIMIT 1),
            chosen AS (
                SELECT {self._tx} AS tx, {self._pos}::bigint AS seq,
                       {q(columns.stream)}::text AS stream, {q(columns.type)}::text AS type,
                       {data} AS data, {metadata} AS metadata, {version} AS version,
                       {event_id} AS event_id, {q(columns.time)} AS recorded_at,
                       {data_size} + coalesce(octet_length({metadata}), 0) AS size
                FROM {self._table}
                WHERE {self._after()} AND {self._below("$4")}
                  AND ($5::text[] IS NULL OR {q(columns.type)}::text = ANY($5::text[]))
                  AND {self._part("$6", "$7")}
                ORDER BY {self._order} LIMIT $3),
            page AS (
                SELECT c.*, count(*) OVER () AS fetched,
                       sum(c.size) OVER (ORDER BY c.tx, c.seq) - c.size AS before
                FROM chosen c)
            SELECT h.head_tx, h.head_seq, p.* FROM (SELECT 1) one
            LEFT JOIN head h ON true
            LEFT JOIN page p ON p.before < $8::bigint
            ORDER BY p.tx, p.seq"""


async def apply_sql(url: str, sql: str) -> None:
    """Run a reviewed migration (``prepare_sql``'s text) on the database at ``url``."""
    try:
        connection = await asyncpg.connect(url)
    except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
        raise StoreUnavailableError(
            f"cannot connect to {redact_url(url)}: {why_no_connection(exc)}"
        ) from exc
    try:
        await connection.execute(sql)
    except asyncpg.PostgresError as exc:
        raise BackendError(f"preparing the table failed: {exc}") from exc
    finally:
        await connection.close()
