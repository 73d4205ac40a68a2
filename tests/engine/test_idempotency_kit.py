"""The public idempotency kit, used on the shop example's projections."""

from __future__ import annotations

import pytest
from examples.shop.history import generate_orders
from examples.shop.projections import (
    customer_activity,
    daily_sales,
    order_summaries,
    product_catalogue,
)

from projectionist import NewEvent, Projection, ReadModelTransaction, RecordedEvent
from projectionist.testing import assert_idempotent, project

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
