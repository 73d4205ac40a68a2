"""The demo with Redis: ``projectionist demo --redis-url`` projects the shop into Redis too."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import redis.asyncio as aioredis
from examples.shop.history import generate_orders

from tests.targets.conftest import REDIS_URL, delete_prefix, require_redis, sorted_set
from tests.test_cli import run_cli

PREFIX = "projectionist-demo"  # the demo's own


def expected_redis_read_models(orders: int) -> tuple[dict[str, dict[str, str]], dict[str, float]]:
    """Per customer: orders, last order and day; per sku: units in orders not cancelled."""
    customers: dict[str, dict[str, str]] = {}
    counts: Counter[str] = Counter()
    lines: dict[str, dict[str, int]] = {}
    skus: set[str] = set()
    for append in generate_orders(orders):
        for event in append.events:
            if event.type == "OrderCreated":
                customer = event.data["customer_id"]
                counts[customer] += 1
                customers[customer] = {
                    "orders": str(counts[customer]),
                    "last_order": append.stream_id,
                    "last_day": event.data["day"],
                }
            elif event.type == "ItemAdded":
                skus.add(event.data["sku"])
                lines.setdefault(append.stream_id, {})[event.data["sku"]] = event.data["quantity"]
            elif event.type == "ItemRemoved":
                lines[append.stream_id].pop(event.data["sku"], None)
            elif event.type == "OrderCancelled":
                lines.pop(append.stream_id, None)
    units = dict.fromkeys(skus, 0.0)
    for order in lines.values():
        for sku, quantity in order.items():
            units[sku] += quantity
    return customers, units


async def test_demo_with_redis(tmp_path: Path, redis_client: aioredis.Redis) -> None:
    await require_redis()
    try:
        done = run_cli(
            "demo", "--orders", "40", cwd=tmp_path, env={"PROJECTIONIST_DEMO_REDIS_URL": REDIS_URL}
        )
        assert done.returncode == 0, done.stderr
        assert "customer_orders (Redis hashes)" in done.stdout
        assert "top_products (Redis sorted set)" in done.stdout
        customers, units = expected_redis_read_models(40)
        stored = {
            customer: await redis_client.hgetall(f"{PREFIX}:customer_orders:{customer}")
            for customer in customers
        }
        assert stored == customers
        ranking = await sorted_set(redis_client, f"{PREFIX}:customer_orders")
        assert ranking == {c: float(v["orders"]) for c, v in customers.items()}
        assert await sorted_set(redis_client, f"{PREFIX}:top_products") == units
        # Run again: it starts afresh in Redis too, so nothing is counted twice.
        again = run_cli("demo", "--orders", "40", "--redis-url", REDIS_URL, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        for customer, values in customers.items():
            assert await redis_client.hgetall(f"{PREFIX}:customer_orders:{customer}") == values
        assert "customer_orders   │ async  │ 1       │ stopped" in again.stdout
    finally:
        await delete_prefix(PREFIX)
