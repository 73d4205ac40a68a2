"""An Application over the notification log of a real ``eventsourcing`` application.

The library's application writes from several threads at once (its SQLite recorder in a
temporary file, and its PostgreSQL recorder) with compression and a custom transcoding on,
while our application follows with SQLite read models: the projection equals the library's
own aggregates, a rebuild equals a fresh run, and a restart resumes without doubles.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from eventsourcing.application import Application as EventsourcingApplication
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import JSONTranscoder, Transcoding
from eventsourcing.utils import get_topic

from projectionist import (
    Application,
    ConfigurationError,
    InvalidInputError,
    Projection,
    ReadModelTransaction,
    RecordedEvent,
)
from projectionist.events import START, Position
from projectionist.partitions import Partition
from projectionist.sources.eventsourcing import EventsourcingSource
from tests.conftest import PG_DSN, _drop_schema, new_schema_name, require_postgres
from tests.doc_examples import doc_example, run_example

WRITERS = 6
ORDERS_PER_WRITER = 5


@dataclass(frozen=True)
class Sku:
    """A value the library cannot encode without the application's own transcoding."""

    code: str

    def __str__(self) -> str:
        return self.code


class SkuAsText(Transcoding):
    type = Sku
    name = "sku"

    def encode(self, obj: Sku) -> str:
        return obj.code

    def decode(self, data: str) -> Sku:
        return Sku(data)


class Order(Aggregate):
    class Placed(Aggregate.Created):
        customer: str

    class ItemAdded(Aggregate.Event):
        sku: Sku
        price: Decimal

    class Noted(Aggregate.Event):
        text: str

    class Shipped(Aggregate.Event):
        pass

    @event(Placed)
    def __init__(self, customer: str) -> None:
        self.customer = customer
        self.items: list[tuple[Sku, Decimal]] = []
        self.shipped = False

    @event(ItemAdded)
    def add_item(self, sku: Sku, price: Decimal) -> None:
        self.items.append((sku, price))

    @event(Noted)
    def note(self, text: str) -> None:
        """An event no projection handles."""

    @event(Shipped)
    def ship(self) -> None:
        self.shipped = True


PLACED, ITEM_ADDED, SHIPPED = (get_topic(e) for e in (Order.Placed, Order.ItemAdded, Order.Shipped))
HANDLED_PER_ORDER = 4  # placed, two items, shipped (the note is not handled)


class Shop(EventsourcingApplication[uuid.UUID]):
    env = {"COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor"}

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(SkuAsText())

    def place_order(self, n: int) -> uuid.UUID:
        order = Order(customer=f"customer-{n}")
        self.save(order)
        for k in range(2):
            order.add_item(Sku(f"sku-{n}-{k}"), Decimal(n) + Decimal("0.25") * k)
            self.save(order)
        order.note("ignored")
        order.ship()
        self.save(order)
        return order.id


def order_totals() -> Projection:
    """One row per order; ``orders_seen``'s primary key makes a double delivery fail."""
    projection = Projection("order_totals", tables=["orders_seen", "order_totals"])

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS orders_seen (stream TEXT NOT NULL, "
            "version BIGINT NOT NULL, PRIMARY KEY (stream, version))"
        )
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS order_totals (order_id TEXT PRIMARY KEY, "
            "customer TEXT, skus TEXT NOT NULL, cents BIGINT NOT NULL, shipped BIGINT NOT NULL)"
        )

    @projection.on(PLACED, ITEM_ADDED, SHIPPED)
    async def record(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        await tx.execute(
            "INSERT INTO orders_seen (stream, version) VALUES ($1, $2)",
            *(event.stream_id, event.version),
        )
        sku = str(event.data.get("sku", ""))
        cents = int(Decimal(str(event.data.get("price", "0"))) * 100)
        await tx.execute(
            "INSERT INTO order_totals (order_id, customer, skus, cents, shipped) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO UPDATE SET "
            "customer = coalesce(order_totals.customer, excluded.customer), "
            "skus = order_totals.skus || excluded.skus, "
            "cents = order_totals.cents + excluded.cents, "
            "shipped = order_totals.shipped + excluded.shipped",
            event.stream_id,
            event.data.get("customer"),
            sku + " " if sku else "",
            cents,
            1 if event.type == SHIPPED else 0,
        )

    return projection


def library_rows(shop: Shop, order_ids: list[uuid.UUID]) -> list[tuple[object, ...]]:
    """What the library's own aggregates say, in the projection's row form."""
    rows = []
    for order_id in order_ids:
        order: Order = shop.repository.get(order_id)
        skus = "".join(f"{sku} " for sku, _ in order.items)
        cents = int(sum(price for _, price in order.items) * 100)
        rows.append((str(order_id), order.customer, skus, cents, int(order.shipped)))
    return sorted(rows, key=lambda row: str(row[0]))


async def projected_rows(app: Application) -> list[tuple[object, ...]]:
    async with app.read_models.transaction() as tx:
        return [
            tuple(row)
            for row in await tx.fetch(
                "SELECT order_id, customer, skus, cents, shipped FROM order_totals "
                "ORDER BY order_id"
            )
        ]


def postgres_env(schema: str) -> dict[str, str]:
    parts = urlsplit(PG_DSN)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": parts.path.lstrip("/") or "postgres",
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": parts.username or "postgres",
        "POSTGRES_PASSWORD": parts.password or "unused-with-trust",
        "POSTGRES_SCHEMA": schema,
    }


@pytest.fixture
async def shop_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """Where the library's application stores its events: SQLite file or PostgreSQL."""
    if request.param == "sqlite":
        yield {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(tmp_path / "es.db"),
        }
        return
    await require_postgres()
    schema = new_schema_name()
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await connection.close()
    yield postgres_env(schema)
    await _drop_schema(schema)


@pytest.fixture
def shop(shop_env: dict[str, str]) -> Iterator[Shop]:
    application = Shop(env=shop_env)
    yield application
    application.close()


def follower(shop: Shop, path: Path) -> Application:
    source = EventsourcingSource(shop, poll_interval=0.05)
    return Application(
        source=source, read_models=f"sqlite:///{path / 'rm.db'}", projections=[order_totals()]
    )


async def place_concurrently(shop: Shop, first: int) -> list[uuid.UUID]:
    """WRITERS threads at once, each placing ORDERS_PER_WRITER orders."""

    def writer(w: int) -> list[uuid.UUID]:
        start = first + w * ORDERS_PER_WRITER
        return [shop.place_order(n) for n in range(start, start + ORDERS_PER_WRITER)]

    batches = await asyncio.gather(*(asyncio.to_thread(writer, w) for w in range(WRITERS)))
    return [order_id for batch in batches for order_id in batch]


BOTH = pytest.mark.parametrize("shop_env", ["sqlite", "postgres"], indirect=True)


@BOTH
async def test_a_follower_projects_concurrent_writes_as_the_library_sees_them(
    shop: Shop, tmp_path: Path
) -> None:
    async with follower(shop, tmp_path) as app:
        await app.setup()
        running = asyncio.ensure_future(app.run())
        try:
            order_ids = await place_concurrently(shop, 0)
            head = await app.source.head()
            await app.wait_for("order_totals", head, timeout=60)
        finally:
            app.stop()
            await running
        assert await projected_rows(app) == library_rows(shop, order_ids)
        assert await app.source.count_after(START) == len(order_ids) * 5  # five per order
        fresh = await projected_rows(app)
        await app.rebuild("order_totals")
        assert await projected_rows(app) == fresh
        assert (await app.verify("order_totals")).ok


@BOTH
async def test_a_restart_resumes_without_doubles(shop: Shop, tmp_path: Path) -> None:
    first = await place_concurrently(shop, 0)
    async with follower(shop, tmp_path) as app:
        await app.setup()
        await app.run_until_caught_up()
        assert await projected_rows(app) == library_rows(shop, first)
    more = await place_concurrently(shop, 100)
    async with follower(shop, tmp_path) as app:
        await app.setup()
        [status] = await app.status()
        assert status.lag == len(more) * 5
        await app.run_until_caught_up()
        assert await projected_rows(app) == library_rows(shop, first + more)
        checkpoint = await app.read_models.checkpoint("order_totals")
        assert checkpoint is not None and checkpoint.position == await app.source.head()
        assert checkpoint.events_processed == len(first + more) * HANDLED_PER_ORDER


@pytest.mark.parametrize("shop_env", ["sqlite"], indirect=True)
async def test_reads_decode_filter_and_count_on_the_source(shop: Shop) -> None:
    order_id = shop.place_order(7)
    source = EventsourcingSource(shop)
    batch = await source.read_all(START, limit=10)
    assert [e.type for e in batch.events] == [
        PLACED,
        ITEM_ADDED,
        ITEM_ADDED,
        get_topic(Order.Noted),
        SHIPPED,
    ]
    added = batch.events[1]
    assert (added.stream_id, added.version, added.position) == (str(order_id), 2, Position(0, 2))
    assert added.data["sku"] == "sku-7-0" and added.data["price"] == "7.00"
    assert isinstance(added.data["timestamp"], str)  # datetimes become ISO text
    assert added.id == (await source.read_all(Position(0, 1), limit=1)).events[0].id
    shipped = await source.read_all(START, limit=10, types=[SHIPPED])
    assert [e.version for e in shipped.events] == [5]
    assert shipped.checkpoint == Position(0, 5)  # the scanned notifications are passed
    assert (await source.read_all(START, limit=10, types=[])).events == []
    small = await source.read_all(START, limit=10, max_bytes=1)
    assert len(small.events) == 1 and small.checkpoint == Position(0, 1)
    holder = Partition(0, 2) if Partition(0, 2).holds(str(order_id)) else Partition(1, 2)
    other = Partition(1 - holder.index, 2)
    assert len((await source.read_all(START, 10, partition=holder)).events) == 5
    assert (await source.read_all(START, 10, partition=other)).events == []
    assert await source.count_after(Position(0, 2)) == 3
    assert await source.count_after(START, other) == 0
    assert (await source.backlog(START)).events == 5


@pytest.mark.parametrize("shop_env", ["sqlite"], indirect=True)
async def test_what_the_source_refuses(shop: Shop, shop_env: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="mapper="):
        EventsourcingSource(shop.recorder)
    assert EventsourcingSource(shop.recorder, mapper=shop.mapper).recorder is shop.recorder
    with pytest.raises(ConfigurationError, match="Application or ApplicationRecorder"):
        EventsourcingSource(object())  # type: ignore[arg-type]
    source = EventsourcingSource(shop)
    for bad in ({"limit": 0}, {"after": "0/1"}, {"types": "Placed"}, {"max_bytes": -1}):
        with pytest.raises(InvalidInputError):
            await source.read_all(**bad)


async def test_a_postgres_recorder_without_a_table_lock_is_refused() -> None:
    await require_postgres()
    schema = new_schema_name()
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await connection.close()
    shop = Shop(env={**postgres_env(schema), "POSTGRES_ENABLE_DB_FUNCTIONS": "y"})
    try:
        with pytest.raises(ConfigurationError, match="no table lock"):
            EventsourcingSource(shop)
    finally:
        shop.close()
        await _drop_schema(schema)


def test_the_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/sources.md's eventsourcing example, run as written (in a fresh directory)."""
    monkeypatch.chdir(tmp_path)
    run_example(doc_example("sources.md", "## The `eventsourcing` library"), tmp_path)
