"""What ``projectionist demo`` runs: a shop's history into a fresh store, five read models.

Appends run while the async projections follow live (after their catch-up): two state
projections (order summaries, customer activity), a batch handler (daily sales) and a
search projection (product search). The
product catalogue is projected inline with each append by a per-event handler, a live
projection counts in memory, and one order is folded on demand. Then it prints each read
model and each projection's status. Last, it searches the product catalogue's full-text
index (a search projection) and prints the ranked hits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import orjson
from rich.console import Console
from rich.table import Table

from projectionist import Application, Projection, ReadModelTransaction, fold_stream
from projectionist.cli import status_table
from projectionist.search import search
from projectionist.targets.redis import RedisReadModelStore

from .history import generate_orders
from .projections import ALL, live_counts, order_state, product_search
from .redis_projections import redis_projections


async def run_demo(
    url: str,
    orders: int,
    console: Console,
    *,
    schema: str | None = None,
    redis_url: str | None = None,
    redis_prefix: str = "projectionist-demo",
) -> None:
    # With a Redis URL, two more async projections keep their read models on Redis.
    redis = None if redis_url is None else RedisReadModelStore(redis_url, prefix=redis_prefix)
    on_redis = [] if redis is None else redis_projections(redis)
    app = Application(url, [*ALL, *on_redis], live=[live_counts], schema=schema, poll_interval=0.2)
    if redis is not None:
        async with redis:
            await redis.forget_all()  # the demo starts afresh, in Redis too
    async with app:
        await app.setup()
        running = asyncio.create_task(app.run())
        await asyncio.sleep(0.05)  # let the live projection take the head before appends
        started = time.perf_counter()
        appended = 0
        for append in generate_orders(orders):
            result = await app.store.append(append.stream_id, append.events)
            appended += len(result.events)
        seconds = time.perf_counter() - started
        async_names = ("order_summaries", "daily_sales", "customer_activity", "product_search")
        for name in (*async_names, *_names(on_redis)):
            await app.wait_for(name, result.position, timeout=60)  # read your writes
        behind = time.perf_counter() - started - seconds
        await asyncio.sleep(0.3)  # the live projection polls no faster than this
        app.stop()
        await running
        console.print(
            f"[bold]Appended {appended:,} events[/bold] to {app.store.url} in {seconds:.2f}s "
            f"({appended / seconds:,.0f} events/s, one transaction per append, the product "
            f"catalogue projected inline); the last is at position {result.position}; the async "
            f"projections caught up with it {behind:.2f}s later\n"
        )
        async with app.read_models.transaction() as tx:
            await _show_read_models(tx, console)
        if redis is not None:
            await _show_redis_read_models(redis, console)
        console.print(f"[bold]live_counts[/bold] (in memory): {live_counts.state}")
        empty: dict[str, object] = {}
        folded = await fold_stream(app.store, "order-000001", empty, order_state)
        console.print(f"[bold]order-000001 folded now[/bold]: {orjson.dumps(folded).decode()}\n")
        console.print(status_table(await app.status()))
        await _show_search(app, console)


MONEY_COLUMNS = {"total", "revenue", "price"}
"""Columns shown in currency units: the read models keep integer cents."""
SEARCH = "chocolate"
"""What the demo searches for: a name match ranks above description matches."""


async def _show_search(app: Application, console: Console) -> None:
    hits = await search(app.read_models, product_search, SEARCH, limit=5)
    table = Table(
        "rank", "sku", "name", "price", "description",
        title=f"product_search (search projection): {SEARCH!r}, best first",
        title_justify="left",
    )  # fmt: skip
    for hit in hits:
        table.add_row(
            f"{hit.rank:.3g}", hit.id, hit.fields["name"], f"{hit.fields['price']:,.2f}",
            hit.fields["description"],
        )  # fmt: skip
    console.print(table)


async def _show_read_models(tx: ReadModelTransaction, console: Console) -> None:
    queries = [
        ("order_summaries (state projection): the largest orders",
         "order_id customer_id day status items total",
         "SELECT order_id, customer_id, day, status, items, total_cents FROM order_summary "
         "ORDER BY total_cents DESC, order_id LIMIT 5"),
        ("daily_sales (batch handler): the first days",
         "day orders completed cancelled refunded revenue",
         "SELECT day, orders, completed, cancelled, refunded, revenue_cents FROM daily_sales "
         "ORDER BY day LIMIT 5"),
        # Read models are plain tables in one database: "completed" joins order_summary,
        # since order status events do not name the customer.
        ("customer_activity (state projection by customer_id): the most active customers",
         "customer_id name country orders first_order last_order completed",
         "SELECT c.customer_id, c.name, c.country, c.orders, c.first_order_day, "
         "c.last_order_day, (SELECT count(*) FROM order_summary o "
         "WHERE o.customer_id = c.customer_id AND o.status = 'completed') FROM customers c "
         "ORDER BY c.orders DESC, c.customer_id LIMIT 5"),
        ("product_catalogue (inline handler): most repriced of those still listed",
         "sku name price price_changes",
         "SELECT sku, name, price_cents, price_changes FROM products WHERE listed "
         "ORDER BY price_changes DESC, sku LIMIT 5"),
    ]  # fmt: skip
    for title, columns, sql in queries:
        table = Table(*columns.split(), title=title, title_justify="left")
        money = [name in MONEY_COLUMNS for name in columns.split()]
        for row in await tx.fetch(sql):
            cells = zip(row, money, strict=True)
            table.add_row(*(f"{v / 100:,.2f}" if is_money else str(v) for v, is_money in cells))
        console.print(table)


def _names(projections: Sequence[Projection]) -> list[str]:
    return [projection.name for projection in projections]


async def _show_redis_read_models(redis: RedisReadModelStore, console: Console) -> None:
    client = redis.client
    most = await client.zrevrange(redis.key("customer_orders"), 0, 4)
    table = Table(
        "customer_id",
        "orders",
        "last_order",
        "last_day",
        title_justify="left",
        title="customer_orders (Redis hashes)",
    )
    for customer in most:
        row = await client.hgetall(redis.key("customer_orders", customer))
        table.add_row(
            str(customer), *(str(row[field]) for field in ("orders", "last_order", "last_day"))
        )
    console.print(table)
    best = await client.zrevrange(redis.key("top_products"), 0, 4)
    table = Table(
        "sku", "units", title="top_products (Redis sorted set)", title_justify="left", min_width=40
    )
    for sku in best:
        units = await client.zscore(redis.key("top_products"), str(sku))
        table.add_row(str(sku), f"{units or 0:,.0f}")
    console.print(table)
