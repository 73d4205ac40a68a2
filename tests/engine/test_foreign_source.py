"""An Application over events that projectionist did not store: an ``EventSource`` over a
plain PostgreSQL table, with its read models on SQLite and on PostgreSQL.

The table's writers take a table lock, so they commit in ``id`` order (the promise that
makes ``ORDER BY id`` gap-safe): a reader that continues after the last id it saw never
skips a row that commits later with a smaller id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import asyncpg
import pytest

from projectionist import (
    Application,
    ConfigurationError,
    EventBatch,
    EventSource,
    Projection,
    ReadModelTransaction,
    RecordedEvent,
    open_read_models,
)
from projectionist.defaults import DEFAULT_BATCH_SIZE
from projectionist.events import START, Position
from projectionist.partitions import Partition
from tests.conftest import PG_DSN, _drop_schema, new_schema_name, require_postgres
from tests.targets.conftest import REDIS_URL, require_redis

ORDERS = ("OrderPlaced", "ItemAdded", "OrderShipped")


class OrdersLog(EventSource):
    """Rows of ``orders_log`` as events, in ``id`` order; the checkpoint is the last id."""

    def __init__(self, schema: str) -> None:
        super().__init__()
        self.url = f"postgresql://127.0.0.1/orders_log?schema={schema}"
        self.table = f'"{schema}".orders_log'
        self._dsn = PG_DSN
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=2)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "open the source first"
        return self._pool

    async def read_all(
        self,
        after: Position = START,
        limit: int = DEFAULT_BATCH_SIZE,
        types: Collection[str] | None = None,
        max_bytes: int | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        rows = await self.pool.fetch(
            f"SELECT id, stream, type, data::text, recorded_at FROM {self.table} "
            "WHERE id > $1 ORDER BY id LIMIT $2",
            after.seq,
            limit,
        )
        if not rows:
            return EventBatch([], after)
        events = [_event(row) for row in rows]
        kept = [
            event
            for event in events
            if (types is None or event.type in types)
            and (partition is None or partition.holds(event.stream_id))
        ]
        return EventBatch(kept, events[-1].position)

    async def head(self) -> Position:
        last = await self.pool.fetchval(f"SELECT max(id) FROM {self.table}")
        return START if last is None else Position(0, last)

    async def count_after(self, after: Position, partition: Partition | None = None) -> int:
        streams = await self.pool.fetch(f"SELECT stream FROM {self.table} WHERE id > $1", after.seq)
        return sum(1 for row in streams if partition is None or partition.holds(row[0]))

    async def write(self, stream: str, type_: str, data: dict[str, object]) -> Position:
        """Append a row as the table's writers do: under the table lock, so in id order."""
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute(f"LOCK TABLE {self.table} IN EXCLUSIVE MODE")
            row_id = await connection.fetchval(
                f"INSERT INTO {self.table} (stream, type, data) VALUES ($1, $2, $3::jsonb) "
                "RETURNING id",
                *(stream, type_, json.dumps(data)),
            )
        self.changes.notify()  # readers in this process look at once
        return Position(0, row_id)


def _event(row: asyncpg.Record) -> RecordedEvent:
    row_id, stream, type_, data, recorded_at = row
    return RecordedEvent(
        id=None,  # the table has neither: a source leaves them out, it does not make them up
        stream_id=stream,
        version=None,
        type=type_,
        data=json.loads(data),
        metadata={},
        recorded_at=recorded_at,
        position=Position(0, row_id),
    )


def order_totals() -> Projection:
    """One row per order; ``orders_seen``'s primary key makes a double delivery fail."""
    projection = Projection("order_totals", tables=["orders_seen", "order_totals"])

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS orders_seen (log_id BIGINT PRIMARY KEY)")
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS order_totals (order_id TEXT PRIMARY KEY, "
            "items BIGINT NOT NULL, amount BIGINT NOT NULL, shipped BIGINT NOT NULL)"
        )

    @projection.on(*ORDERS)
    async def record(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        await tx.execute("INSERT INTO orders_seen (log_id) VALUES ($1)", event.position.seq)
        items = 1 if event.type == "ItemAdded" else 0
        amount = int(str(event.data.get("price", 0)))
        shipped = 1 if event.type == "OrderShipped" else 0
        await tx.execute(
            "INSERT INTO order_totals (order_id, items, amount, shipped) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (order_id) DO UPDATE SET items = order_totals.items + excluded.items, "
            "amount = order_totals.amount + excluded.amount, "
            "shipped = order_totals.shipped + excluded.shipped",
            *(event.stream_id, items, amount, shipped),
        )

    return projection


@pytest.fixture
async def orders_log() -> AsyncIterator[OrdersLog]:
    """The foreign table, in a schema of its own (dropped after the test)."""
    await require_postgres()
    schema = new_schema_name()
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        await connection.execute(
            f'CREATE TABLE "{schema}".orders_log (id BIGSERIAL PRIMARY KEY, stream TEXT NOT NULL, '
            "type TEXT NOT NULL, data JSONB NOT NULL, "
            "recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
    finally:
        await connection.close()
    source = OrdersLog(schema)
    async with source:
        yield source
    await _drop_schema(schema)


@pytest.fixture(params=["sqlite", "postgres"])
async def read_models_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'read_models.db'}"
        return
    await require_postgres()
    schema = new_schema_name()
    yield f"{PG_DSN}?schema={schema}"
    await _drop_schema(schema)


async def write_orders(log: OrdersLog, orders: range) -> Position:
    """For each order: placed, two items, shipped, and a row of a type nobody handles."""
    last = START
    for n in orders:
        stream = f"order-{n}"
        await log.write(stream, "OrderPlaced", {})
        for price in (n, 10):
            await log.write(stream, "ItemAdded", {"price": price})
        await log.write(stream, "Noted", {"text": "ignored"})
        last = await log.write(stream, "OrderShipped", {})
    return last


def expected_rows(orders: range) -> list[tuple[object, ...]]:
    return [(f"order-{n}", 2, n + 10, 1) for n in sorted(orders, key=lambda n: f"order-{n}")]


async def rows(app: Application) -> list[tuple[object, ...]]:
    async with app.read_models.transaction() as tx:
        return [
            tuple(row)
            for row in await tx.fetch(
                "SELECT order_id, items, amount, shipped FROM order_totals ORDER BY order_id"
            )
        ]


def foreign_app(log: OrdersLog, url: str) -> Application:
    return Application(source=log, read_models=url, projections=[order_totals()])


async def test_rows_are_projected_and_a_restart_resumes_without_doubles(
    orders_log: OrdersLog, read_models_url: str
) -> None:
    await write_orders(orders_log, range(6))
    async with foreign_app(orders_log, read_models_url) as app:
        await app.setup()
        await app.run_until_caught_up()
        assert await rows(app) == expected_rows(range(6))
    last = await write_orders(orders_log, range(6, 10))
    async with foreign_app(orders_log, read_models_url) as app:
        await app.setup()
        await app.run_until_caught_up()
        assert await rows(app) == expected_rows(range(10))
        checkpoint = await app.read_models.checkpoint("order_totals")
        assert checkpoint is not None and checkpoint.position == last
        assert checkpoint.events_processed == 10 * 4  # the "Noted" rows are not handled


async def test_status_shows_the_lag_until_the_projection_catches_up(
    orders_log: OrdersLog, read_models_url: str
) -> None:
    last = await write_orders(orders_log, range(3))
    async with foreign_app(orders_log, read_models_url) as app:
        await app.setup()
        [before] = await app.status()
        assert (before.head, before.lag, before.position) == (last, 15, START)
        await app.run_until_caught_up()
        [after] = await app.status()
        assert (after.head, after.lag, after.position) == (last, 0, last)
        assert after.held_back_seconds == 0.0


async def test_wait_for_reads_its_writes_while_the_application_runs(
    orders_log: OrdersLog, read_models_url: str
) -> None:
    async with foreign_app(orders_log, read_models_url) as app:
        await app.setup()
        running = asyncio.ensure_future(app.run())
        try:
            for n in range(3):
                position = await write_orders(orders_log, range(n, n + 1))
                await app.wait_for("order_totals", position, timeout=30)
                assert await rows(app) == expected_rows(range(n + 1))
        finally:
            app.stop()
            await running


async def test_a_rebuild_equals_a_fresh_run(orders_log: OrdersLog, read_models_url: str) -> None:
    await write_orders(orders_log, range(5))
    async with foreign_app(orders_log, read_models_url) as app:
        await app.setup()
        await app.run_until_caught_up()
        fresh = await rows(app)
        applied = await app.rebuild("order_totals")
        assert applied == 5 * 5  # every row after the start was scanned again
        assert await rows(app) == fresh == expected_rows(range(5))
        verification = await app.verify("order_totals")
        assert verification.ok


async def test_what_an_application_over_another_source_refuses(orders_log: OrdersLog) -> None:
    inline = Projection("inline_totals", kind="inline")
    with pytest.raises(ConfigurationError, match="inline"):
        Application(source=orders_log, read_models="memory://", projections=[inline])
    with pytest.raises(ConfigurationError, match="read_models="):
        Application(source=orders_log)
    with pytest.raises(ConfigurationError, match="once"):
        Application("memory://", source=orders_log)
    async with Application(source=orders_log, read_models="memory://") as app:
        assert app.source is orders_log and app.url == orders_log.url
        with pytest.raises(ConfigurationError, match="not from an event store of ours"):
            app.store  # noqa: B018


async def test_sqlite_read_models_get_no_event_tables(
    orders_log: OrdersLog, tmp_path: Path
) -> None:
    path = tmp_path / "read_models.db"
    async with foreign_app(orders_log, f"sqlite:///{path}") as app:
        await app.setup()
    with contextlib.closing(sqlite3.connect(path)) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"projection_checkpoints", "orders_seen", "order_totals"} <= tables
    assert not tables & {"events", "streams"}


async def test_open_read_models_opens_redis_by_url() -> None:
    await require_redis()
    async with open_read_models(REDIS_URL) as read_models:
        assert read_models.dialect == "redis"
        assert await read_models.checkpoint(f"nothing_{uuid.uuid4().hex}") is None
    with pytest.raises(ConfigurationError, match="PostgreSQL only"):
        async with open_read_models(REDIS_URL, schema="x"):
            pass
