"""The shop's read models: five projections, in the styles worth copying.

Two are **state projections** (``StateProjection``): one row per key, declared as an initial
state and pure evolve functions; the engine loads the touched rows, folds each batch in
memory and writes every touched row once, set-based. Two are **handler-style**
(``Projection``): SQL of your own per event or per run of events, for read models that are
not "one row per key", such as an aggregate over many orders. One is a **search index**
(``SearchProjection``): full-text search over the product catalogue.

The SQL is written once for PostgreSQL and SQLite: ``$1`` placeholders, portable types,
``INSERT ... ON CONFLICT DO UPDATE`` upserts, ``CAST`` instead of ``::``. Everything is safe
to replay (a rebuild replays all history; ``assert_idempotent`` checks it): evolve functions
and handlers *set* values from the event (rows upserted by key, lines keyed by sku, order
ids kept as a set, days as min/max) rather than add to counters, or count only events newer
than the row's version, so an event applied a second time leaves the read model as it
found it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from projectionist import (
    Projection,
    ReadModelTransaction,
    RecordedEvent,
    State,
    StateProjection,
)
from projectionist.live import Evolver, LiveProjection
from projectionist.search import SearchProjection


def cents(amount: float) -> int:
    """A price of the events (in currency units, to the cent) in exact integer cents."""
    return round(amount * 100)


ORDER_STATUS = {
    "OrderShipped": "shipped",
    "OrderCompleted": "completed",
    "OrderCancelled": "cancelled",
    "OrderRefunded": "refunded",
}


# -- 1. order summaries: a state projection, one row per order stream --------------------------
#
# Typed columns, so the summary is an ordinary table to query and sort. The order's lines
# (sku -> [quantity, unit price in cents]) are kept in the state too, in a JSON column: items
# and total are recomputed from them, so ItemRemoved subtracts exactly what was added, and a
# replayed ItemAdded sets its line again instead of counting it twice. Money is integer
# cents everywhere: sums are exact on every database, whatever order they are taken in.

order_summaries = StateProjection(
    "order_summaries",
    table="order_summary",
    version=2,  # 2: money in integer cents
    key_column="order_id",  # key: the event's stream id, i.e. the order id
    columns={
        "customer_id": "TEXT",
        "day": "TEXT",
        "status": "TEXT NOT NULL",
        "items": "BIGINT NOT NULL",
        "total_cents": "BIGINT NOT NULL",
        "lines": "JSON",
    },
    initial=lambda: {
        "customer_id": None,
        "day": None,
        "status": "open",
        "items": 0,
        "total_cents": 0,
        "lines": {},
    },
)


@order_summaries.evolve("OrderCreated")
def _order_created(state: State, event: RecordedEvent) -> State:
    # Sets only what the event says: replayed onto a shipped order, it leaves it shipped.
    return {**state, "customer_id": event.data["customer_id"], "day": event.data["day"]}


@order_summaries.evolve("ItemAdded", "ItemRemoved")
def _order_line_changed(state: State, event: RecordedEvent) -> State:
    lines: dict[str, list[Any]] = dict(state["lines"])
    if event.type == "ItemAdded":
        lines[event.data["sku"]] = [event.data["quantity"], cents(event.data["unit_price"])]
    else:
        lines.pop(event.data["sku"], None)
    return {
        **state,
        "lines": lines,
        "items": sum(quantity for quantity, _ in lines.values()),
        "total_cents": sum(quantity * price for quantity, price in lines.values()),
    }


@order_summaries.evolve(*ORDER_STATUS)
def _order_status(state: State, event: RecordedEvent) -> State:
    return {**state, "status": ORDER_STATUS[event.type]}


# -- 2. daily sales: handler-style, an aggregation in one batch handler with set-based writes --

daily_sales = Projection(
    "daily_sales", version=2, tables=["daily_sales", "sales_orders", "sales_lines"]
)  # 2: money in integer cents


@daily_sales.setup
async def _create_daily_sales(tx: ReadModelTransaction) -> None:
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS sales_orders (order_id TEXT PRIMARY KEY, day TEXT NOT NULL, "
        "status TEXT NOT NULL)"
    )
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS sales_lines (order_id TEXT NOT NULL, sku TEXT NOT NULL, "
        "amount_cents BIGINT NOT NULL, PRIMARY KEY (order_id, sku))"
    )
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS daily_sales (day TEXT PRIMARY KEY, orders BIGINT NOT NULL, "
        "completed BIGINT NOT NULL, cancelled BIGINT NOT NULL, refunded BIGINT NOT NULL, "
        "revenue_cents BIGINT NOT NULL)"
    )


@daily_sales.on_batch("OrderCreated", "ItemAdded", "ItemRemoved", *ORDER_STATUS)
async def _sales(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
    # Fold the batch in memory: the last value per key wins, then write each key once.
    created: dict[str, str] = {}
    statuses: dict[str, str] = {}
    lines: dict[tuple[str, str], int | None] = {}
    for event in events:
        order_id = event.stream_id
        if event.type == "OrderCreated":
            created[order_id] = event.data["day"]
        elif event.type == "ItemAdded":
            amount = event.data["quantity"] * cents(event.data["unit_price"])
            lines[order_id, event.data["sku"]] = amount
        elif event.type == "ItemRemoved":
            lines[order_id, event.data["sku"]] = None
        else:
            statuses[order_id] = ORDER_STATUS[event.type]
    await tx.executemany(
        "INSERT INTO sales_orders VALUES ($1, $2, 'open') ON CONFLICT (order_id) DO NOTHING",
        list(created.items()),
    )
    await tx.executemany(
        "UPDATE sales_orders SET status = $2 WHERE order_id = $1", list(statuses.items())
    )
    await tx.executemany(
        "INSERT INTO sales_lines VALUES ($1, $2, $3) ON CONFLICT (order_id, sku) "
        "DO UPDATE SET amount_cents = excluded.amount_cents",
        [(order, sku, amount) for (order, sku), amount in lines.items() if amount is not None],
    )
    await tx.executemany(
        "DELETE FROM sales_lines WHERE order_id = $1 AND sku = $2",
        [(order, sku) for (order, sku), amount in lines.items() if amount is None],
    )
    touched = sorted(set(created) | set(statuses) | {order for order, _ in lines})
    if touched:
        await _recompute_days(tx, touched)


async def _recompute_days(tx: ReadModelTransaction, orders: list[str]) -> None:
    """Recompute the aggregate rows of the days these orders belong to, in one statement."""
    placeholders = ", ".join(f"${n}" for n in range(1, len(orders) + 1))
    await tx.execute(
        "INSERT INTO daily_sales (day, orders, completed, cancelled, refunded, revenue_cents) "
        "SELECT o.day, count(*), "
        "sum(CASE WHEN o.status = 'completed' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN o.status = 'cancelled' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN o.status = 'refunded' THEN 1 ELSE 0 END), "
        "coalesce(sum(CASE WHEN o.status = 'completed' THEN "
        "(SELECT coalesce(sum(l.amount_cents), 0) FROM sales_lines l "
        "WHERE l.order_id = o.order_id) ELSE 0 END), 0) "
        "FROM sales_orders o WHERE o.day IN (SELECT day FROM sales_orders "
        f"WHERE order_id IN ({placeholders})) GROUP BY o.day "
        "ON CONFLICT (day) DO UPDATE SET orders = excluded.orders, "
        "completed = excluded.completed, cancelled = excluded.cancelled, "
        "refunded = excluded.refunded, revenue_cents = excluded.revenue_cents",
        *orders,
    )


# -- 3. customer activity: a state projection keyed by a data field, fed by two streams ---------
#
# CustomerRegistered (a customer stream) and OrderCreated (an order stream) both carry
# customer_id, so the key is that field and each customer's row folds events from many
# streams. The order ids are kept as a set (a sorted JSON list) and ``orders`` is its size,
# so a replayed OrderCreated is not counted twice; first and last order days are a min and
# a max, which a replay cannot move either. (Order status events do not carry customer_id:
# per-customer statuses come from joining order_summary, as the demo does. A set of ids
# grows with the customer; for keys with very many orders a handler-style projection with
# a (customer, order) table, like daily_sales' sales_orders, scales better.)

customer_activity = StateProjection(
    "customer_activity",
    table="customers",
    key="customer_id",
    key_column="customer_id",
    columns={
        "name": "TEXT",
        "country": "TEXT",
        "orders": "BIGINT NOT NULL",
        "first_order_day": "TEXT",
        "last_order_day": "TEXT",
        "order_ids": "JSON",
    },
    initial=lambda: {
        "name": None,  # None until the customer's registration is folded in
        "country": None,
        "orders": 0,
        "first_order_day": None,
        "last_order_day": None,
        "order_ids": [],
    },
)


@customer_activity.evolve("CustomerRegistered")
def _customer_registered(state: State, event: RecordedEvent) -> State:
    return {**state, "name": event.data["name"], "country": event.data["country"]}


@customer_activity.evolve("OrderCreated")
def _customer_ordered(state: State, event: RecordedEvent) -> State:
    order_ids = {*state["order_ids"], event.stream_id}
    day = event.data["day"]
    return {
        **state,
        "order_ids": sorted(order_ids),
        "orders": len(order_ids),
        "first_order_day": min(day, state["first_order_day"] or day),
        "last_order_day": max(day, state["last_order_day"] or day),
    }


# -- 4. product catalogue: handler-style and inline, so it is never behind the events ---------
#
# Each product is one stream, so the stream version orders a product's events: every handler
# writes only when its event is newer than the row's version. A replayed event changes
# nothing, and a delisted product stays a row (listed = false) that a replayed listing cannot
# bring back.

product_catalogue = Projection(
    "product_catalogue", version=3, kind="inline", tables=["products"]
)  # 2: listed, version; 3: price in integer cents


@product_catalogue.setup
async def _create_products(tx: ReadModelTransaction) -> None:
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS products (sku TEXT PRIMARY KEY, name TEXT NOT NULL, "
        "price_cents BIGINT NOT NULL, price_changes BIGINT NOT NULL, "
        "listed BOOLEAN NOT NULL, version BIGINT NOT NULL)"
    )


@product_catalogue.on("ProductListed")
async def _product_listed(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    await tx.execute(
        "INSERT INTO products VALUES ($1, $2, $3, 0, TRUE, $4) ON CONFLICT (sku) "
        "DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents, listed = TRUE, "
        "version = excluded.version WHERE products.version < excluded.version",
        event.data["sku"], event.data["name"], cents(event.data["price"]), event.version,
    )  # fmt: skip


@product_catalogue.on("ProductUpdated")
async def _product_updated(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    await tx.execute(
        "UPDATE products SET name = $2, version = $3 WHERE sku = $1 AND version < $3",
        event.data["sku"], event.data["name"], event.version,
    )  # fmt: skip


@product_catalogue.on("ProductPriceChanged")
async def _price_changed(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    await tx.execute(
        "UPDATE products SET price_cents = $2, price_changes = price_changes + 1, version = $3 "
        "WHERE sku = $1 AND version < $3",
        event.data["sku"], cents(event.data["price"]), event.version,
    )  # fmt: skip


@product_catalogue.on("ProductDelisted")
async def _product_delisted(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    await tx.execute(
        "UPDATE products SET listed = FALSE, version = $2 WHERE sku = $1 AND version < $2",
        event.data["sku"], event.version,
    )  # fmt: skip


# -- 5. product search: a full-text index of the catalogue (projectionist.search) -------------
#
# One document per product: the name weighs most, description and category less, and the
# price is stored with each document to show in results. On PostgreSQL a weighted tsvector
# with a GIN index, on SQLite an FTS5 table ranked with bm25(); the same definition for both.

product_search = SearchProjection(
    "product_search",
    table="product_search",
    key="sku",
    text={"name": "A", "description": "B", "category": "B"},
    stored=["price"],
)


@product_search.upsert("ProductListed", "ProductUpdated", "ProductPriceChanged")
def _product_document(event: RecordedEvent) -> Mapping[str, object]:
    # The fields an event names are set, the others kept: a price change keeps the text.
    return event.data


product_search.delete("ProductDelisted")


# -- live: in memory, no checkpoint ------------------------------------------------------------


def _no_counts() -> dict[str, int]:
    return {}


live_counts: LiveProjection[dict[str, int]] = LiveProjection("live_counts", _no_counts)


@live_counts.on(*ORDER_STATUS, "OrderCreated")
def _count(state: dict[str, int], event: RecordedEvent) -> dict[str, int]:
    return {**state, event.type: state.get(event.type, 0) + 1}


# -- on demand: one order's state, folded now ------------------------------------------------

order_state: Evolver[dict[str, object]] = Evolver()


@order_state.on("OrderCreated")
def _opened(state: dict[str, object], event: RecordedEvent) -> dict[str, object]:
    return {"order_id": event.stream_id, "status": "open", "lines": {}, **event.data}


@order_state.on("ItemAdded", "ItemRemoved")
def _lines(state: dict[str, object], event: RecordedEvent) -> dict[str, object]:
    lines = dict(state["lines"])  # type: ignore[call-overload]
    if event.type == "ItemAdded":
        lines[event.data["sku"]] = event.data["quantity"]
    else:
        lines.pop(event.data["sku"], None)
    return {**state, "lines": lines}


@order_state.on(*ORDER_STATUS)
def _status(state: dict[str, object], event: RecordedEvent) -> dict[str, object]:
    return {**state, "status": ORDER_STATUS[event.type]}


ALL = [order_summaries, daily_sales, customer_activity, product_catalogue, product_search]
