"""The shop's read models: four projections, one of each style worth copying.

The SQL is written once for PostgreSQL and SQLite: ``$1`` placeholders, portable types,
``INSERT ... ON CONFLICT DO UPDATE`` upserts, ``CAST`` instead of ``::``. Every handler is
safe to replay: rows are upserted by key, and aggregates are recomputed from facts rather
than incremented.
"""

from __future__ import annotations

from collections.abc import Sequence

from projectionist import Projection, ReadModelTransaction, RecordedEvent
from projectionist.live import Evolver, LiveProjection

# -- 1. order summaries: one row per order, per-event handlers ---------------------------------

order_summaries = Projection("order_summaries", tables=["order_summary", "order_lines"])


@order_summaries.setup
async def _create_order_summaries(tx: ReadModelTransaction) -> None:
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS order_summary (order_id TEXT PRIMARY KEY, "
        "customer_id TEXT NOT NULL, day TEXT NOT NULL, status TEXT NOT NULL, "
        "items BIGINT NOT NULL, total DOUBLE PRECISION NOT NULL)"
    )
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS order_lines (order_id TEXT NOT NULL, sku TEXT NOT NULL, "
        "quantity BIGINT NOT NULL, unit_price DOUBLE PRECISION NOT NULL, "
        "PRIMARY KEY (order_id, sku))"
    )


@order_summaries.on("OrderCreated")
async def _order_created(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    await tx.execute(
        "INSERT INTO order_summary VALUES ($1, $2, $3, 'open', 0, 0) "
        "ON CONFLICT (order_id) DO UPDATE SET customer_id = excluded.customer_id, "
        "day = excluded.day",
        event.stream_id, event.data["customer_id"], event.data["day"],
    )  # fmt: skip


@order_summaries.on("ItemAdded", "ItemRemoved")
async def _order_line_changed(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    if event.type == "ItemAdded":
        await tx.execute(
            "INSERT INTO order_lines VALUES ($1, $2, $3, $4) ON CONFLICT (order_id, sku) "
            "DO UPDATE SET quantity = excluded.quantity, unit_price = excluded.unit_price",
            event.stream_id, event.data["sku"], event.data["quantity"], event.data["unit_price"],
        )  # fmt: skip
    else:
        await tx.execute(
            "DELETE FROM order_lines WHERE order_id = $1 AND sku = $2",
            event.stream_id,
            event.data["sku"],
        )
    await tx.execute(
        "UPDATE order_summary SET "
        "items = (SELECT coalesce(sum(quantity), 0) FROM order_lines WHERE order_id = $1), "
        "total = (SELECT coalesce(sum(quantity * unit_price), 0) FROM order_lines "
        "WHERE order_id = $1) WHERE order_id = $1",
        event.stream_id,
    )


ORDER_STATUS = {
    "OrderShipped": "shipped",
    "OrderCompleted": "completed",
    "OrderCancelled": "cancelled",
    "OrderRefunded": "refunded",
}


@order_summaries.on(*ORDER_STATUS)
async def _order_status(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    await tx.execute(
        "UPDATE order_summary SET status = $2 WHERE order_id = $1",
        event.stream_id,
        ORDER_STATUS[event.type],
    )


# -- 2. daily sales: an aggregation, one batch handler with set-based writes ------------------

daily_sales = Projection("daily_sales", tables=["daily_sales", "sales_orders", "sales_lines"])


@daily_sales.setup
async def _create_daily_sales(tx: ReadModelTransaction) -> None:
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS sales_orders (order_id TEXT PRIMARY KEY, day TEXT NOT NULL, "
        "status TEXT NOT NULL)"
    )
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS sales_lines (order_id TEXT NOT NULL, sku TEXT NOT NULL, "
        "amount DOUBLE PRECISION NOT NULL, PRIMARY KEY (order_id, sku))"
    )
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS daily_sales (day TEXT PRIMARY KEY, orders BIGINT NOT NULL, "
        "completed BIGINT NOT NULL, cancelled BIGINT NOT NULL, refunded BIGINT NOT NULL, "
        "revenue DOUBLE PRECISION NOT NULL)"
    )


@daily_sales.on_batch("OrderCreated", "ItemAdded", "ItemRemoved", *ORDER_STATUS)
async def _sales(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
    # Fold the batch in memory: the last value per key wins, then write each key once.
    created: dict[str, str] = {}
    statuses: dict[str, str] = {}
    lines: dict[tuple[str, str], float | None] = {}
    for event in events:
        order_id = event.stream_id
        if event.type == "OrderCreated":
            created[order_id] = event.data["day"]
        elif event.type == "ItemAdded":
            lines[order_id, event.data["sku"]] = event.data["quantity"] * event.data["unit_price"]
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
        "DO UPDATE SET amount = excluded.amount",
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
        "INSERT INTO daily_sales (day, orders, completed, cancelled, refunded, revenue) "
        "SELECT o.day, count(*), "
        "sum(CASE WHEN o.status = 'completed' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN o.status = 'cancelled' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN o.status = 'refunded' THEN 1 ELSE 0 END), "
        "coalesce(sum(CASE WHEN o.status = 'completed' THEN (SELECT coalesce(sum(l.amount), 0) "
        "FROM sales_lines l WHERE l.order_id = o.order_id) ELSE 0 END), 0) "
        "FROM sales_orders o WHERE o.day IN (SELECT day FROM sales_orders "
        f"WHERE order_id IN ({placeholders})) GROUP BY o.day "
        "ON CONFLICT (day) DO UPDATE SET orders = excluded.orders, "
        "completed = excluded.completed, cancelled = excluded.cancelled, "
        "refunded = excluded.refunded, revenue = excluded.revenue",
        *orders,
    )


# -- 3. customer activity: several tables from several streams --------------------------------

customer_activity = Projection("customer_activity", tables=["customers", "customer_orders"])


@customer_activity.setup
async def _create_customer_activity(tx: ReadModelTransaction) -> None:
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS customers (customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, "
        "country TEXT NOT NULL, orders BIGINT NOT NULL, last_order_day TEXT)"
    )
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS customer_orders (order_id TEXT PRIMARY KEY, "
        "customer_id TEXT NOT NULL, day TEXT NOT NULL, status TEXT NOT NULL)"
    )


@customer_activity.on("CustomerRegistered")
async def _customer_registered(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    await tx.execute(
        "INSERT INTO customers VALUES ($1, $2, $3, 0, NULL) ON CONFLICT (customer_id) "
        "DO UPDATE SET name = excluded.name, country = excluded.country",
        event.data["customer_id"], event.data["name"], event.data["country"],
    )  # fmt: skip


@customer_activity.on("OrderCreated")
async def _customer_ordered(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    customer = event.data["customer_id"]
    await tx.execute(
        "INSERT INTO customer_orders VALUES ($1, $2, $3, 'open') ON CONFLICT (order_id) DO NOTHING",
        event.stream_id, customer, event.data["day"],
    )  # fmt: skip
    await tx.execute(
        "UPDATE customers SET "
        "orders = (SELECT count(*) FROM customer_orders WHERE customer_id = $1), "
        "last_order_day = (SELECT max(day) FROM customer_orders WHERE customer_id = $1) "
        "WHERE customer_id = $1",
        customer,
    )


@customer_activity.on(*ORDER_STATUS)
async def _customer_order_status(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    await tx.execute(
        "UPDATE customer_orders SET status = $2 WHERE order_id = $1",
        event.stream_id,
        ORDER_STATUS[event.type],
    )


# -- 4. product catalogue: inline, so it is never behind the events ---------------------------

product_catalogue = Projection("product_catalogue", kind="inline", tables=["products"])


@product_catalogue.setup
async def _create_products(tx: ReadModelTransaction) -> None:
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS products (sku TEXT PRIMARY KEY, name TEXT NOT NULL, "
        "price DOUBLE PRECISION NOT NULL, price_changes BIGINT NOT NULL)"
    )


@product_catalogue.on("ProductListed")
async def _product_listed(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    await tx.execute(
        "INSERT INTO products VALUES ($1, $2, $3, 0) ON CONFLICT (sku) "
        "DO UPDATE SET name = excluded.name, price = excluded.price",
        event.data["sku"], event.data["name"], event.data["price"],
    )  # fmt: skip


@product_catalogue.on("ProductPriceChanged")
async def _price_changed(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    # price_changes counts from the stream version, so a replayed event changes nothing.
    await tx.execute(
        "UPDATE products SET price = $2, price_changes = $3 WHERE sku = $1",
        event.data["sku"], event.data["price"], event.version - 1,
    )  # fmt: skip


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


ALL = [order_summaries, daily_sales, customer_activity, product_catalogue]
