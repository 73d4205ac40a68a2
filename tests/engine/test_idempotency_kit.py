"""The public idempotency kit, used on the shop example's projections."""

from __future__ import annotations

import pytest
from examples.shop.history import generate_orders
from examples.shop.projections import (
    ORDER_STATUS,
    cents,
    customer_activity,
    daily_sales,
    order_summaries,
    product_catalogue,
)

from projectionist import (
    ConfigurationError,
    NewEvent,
    Projection,
    ReadModelTransaction,
    RecordedEvent,
)
from projectionist.testing import assert_idempotent, project
from tests.conftest import PG_DSN

HISTORY = [(append.stream_id, append.events) for append in generate_orders(60)]


@pytest.mark.parametrize(
    ("projection", "query"),
    [
        (order_summaries, "SELECT * FROM order_summary ORDER BY order_id"),
        (daily_sales, "SELECT * FROM daily_sales ORDER BY day"),
        (customer_activity, "SELECT * FROM customers ORDER BY customer_id"),
        (product_catalogue, "SELECT * FROM products ORDER BY sku"),
    ],
    ids=lambda value: getattr(value, "name", "query"),
)
async def test_shop_projections_are_safe_to_replay(projection: Projection, query: str) -> None:
    rows = await assert_idempotent(projection, HISTORY, query)
    assert rows, "the projection produced a read model"


async def test_the_state_projections_agree_with_the_history() -> None:
    # What the shop's state projections must hold, worked out from the events directly (every
    # order event names its order in its data).
    events = [event for _, appended in HISTORY for event in appended]
    created = {e.data["order_id"]: e.data for e in events if e.type == "OrderCreated"}
    status = dict.fromkeys(created, "open")
    lines: dict[str, dict[str, tuple[int, int]]] = {order_id: {} for order_id in created}
    for event in events:
        if event.type == "ItemAdded":
            line = (
                event.data["quantity"],
                event.data["quantity"] * cents(event.data["unit_price"]),
            )
            lines[event.data["order_id"]][event.data["sku"]] = line
        elif event.type == "ItemRemoved":
            del lines[event.data["order_id"]][event.data["sku"]]
        elif event.type in ORDER_STATUS:
            status[event.data["order_id"]] = ORDER_STATUS[event.type]
    assert "ItemRemoved" in {event.type for event in events}

    summaries = await assert_idempotent(
        order_summaries,
        HISTORY,
        "SELECT order_id, customer_id, day, status, items, total_cents FROM order_summary "
        "ORDER BY order_id",
    )
    assert summaries == [
        (
            order_id,
            created[order_id]["customer_id"],
            created[order_id]["day"],
            status[order_id],
            sum(quantity for quantity, _ in lines[order_id].values()),
            sum(amount for _, amount in lines[order_id].values()),  # cents: exact
        )
        for order_id in sorted(created)
    ]

    registered = {e.data["customer_id"]: e.data for e in events if e.type == "CustomerRegistered"}
    days = {
        customer: sorted(
            order["day"] for order in created.values() if order["customer_id"] == customer
        )
        for customer in registered
    }
    activity = await project(
        customer_activity,
        HISTORY,
        "SELECT customer_id, name, country, orders, first_order_day, last_order_day "
        "FROM customers ORDER BY customer_id",
    )
    assert activity == [
        (
            customer,
            registered[customer]["name"],
            registered[customer]["country"],
            len(days[customer]),
            days[customer][0] if days[customer] else None,
            days[customer][-1] if days[customer] else None,
        )
        for customer in sorted(registered)
    ]


async def test_a_counting_projection_is_caught() -> None:
    counter = Projection("counter", tables=["counter"])

    @counter.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS counter (n BIGINT NOT NULL)")
        if await tx.fetchval("SELECT count(*) FROM counter") == 0:
            await tx.execute("INSERT INTO counter VALUES (0)")

    @counter.on("Tick")
    async def tick(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        await tx.execute("UPDATE counter SET n = n + 1")

    ticks = [("clock", [NewEvent("Tick", {}) for _ in range(10)])]
    assert await project(counter, ticks, "SELECT n FROM counter") == [(10,)]
    with pytest.raises(AssertionError, match="'counter' is not idempotent"):
        await assert_idempotent(counter, ticks, "SELECT n FROM counter")


async def test_a_postgres_store_is_used_twice_without_appending_twice(pg_schema: str) -> None:
    """On a database that outlives a run, the second run makes the projection's tables
    afresh and reads the clean run's events again: a double append would double the rows."""
    url = f"{PG_DSN}?schema={pg_schema}"
    rows = await assert_idempotent(
        daily_sales, HISTORY, "SELECT * FROM daily_sales ORDER BY day", url=url
    )
    assert rows == await project(daily_sales, HISTORY, "SELECT * FROM daily_sales ORDER BY day")
    with pytest.raises(ConfigurationError, match="holds events: give a fresh store's URL"):
        await assert_idempotent(
            daily_sales, HISTORY, "SELECT * FROM daily_sales ORDER BY day", url=url
        )
