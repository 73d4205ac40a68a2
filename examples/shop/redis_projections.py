"""The shop's read models on Redis: per-customer order counts and a top-products leaderboard.

``redis_projections(store)`` returns two async projections whose read models and checkpoints
live in a ``RedisReadModelStore``; the demo adds them when given a Redis URL
(``projectionist demo --redis-url redis://127.0.0.1:6379/0``). Each batch is one Redis
transaction with its checkpoint, so the two ways of writing below are both exact:

- **Increments** (HINCRBY, ZINCRBY of +1): correct because the engine applies each batch
  exactly once (writes and checkpoint in one MULTI/EXEC); a rebuild deletes the keys first.
- **Absolute values** (HSET of the last order, an order line's quantity from the event):
  safe to replay by themselves. The leaderboard moves by the *difference* between an order
  line's new and stored quantity, so an ItemAdded seen twice changes nothing.

Keys (store prefix ``P``): ``P:customer_orders:CUSTOMER`` (hash: orders, last_order,
last_day), ``P:customer_orders`` (sorted set: customers by orders), ``P:top_products``
(sorted set: units per sku in orders not cancelled), ``P:order_lines:ORDER`` (hash: sku ->
quantity, what the leaderboard's differences are taken against).
"""

from __future__ import annotations

from collections.abc import Sequence

from projectionist import ReadModelTransaction, RecordedEvent
from projectionist.targets.redis import (
    RedisProjection,
    RedisReadModelStore,
    RedisTransaction,
    as_redis,
)


def redis_projections(store: RedisReadModelStore) -> list[RedisProjection]:
    return [customer_orders(store), top_products(store)]


def customer_orders(store: RedisReadModelStore) -> RedisProjection:
    projection = RedisProjection("customer_orders", store)  # keys under P:customer_orders

    @projection.on("OrderCreated")
    async def created(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        redis_tx = as_redis(tx)
        customer = event.data["customer_id"]
        pipe = redis_tx.pipeline
        key = redis_tx.key("customer_orders", customer)
        pipe.hincrby(key, "orders", 1)  # exact: the batch is applied once
        pipe.hset(key, mapping={"last_order": event.stream_id, "last_day": event.data["day"]})
        pipe.zincrby(redis_tx.key("customer_orders"), 1, customer)

    return projection


def top_products(store: RedisReadModelStore) -> RedisProjection:
    projection = RedisProjection("top_products", store, tables=["top_products", "order_lines"])

    @projection.on_batch("ItemAdded", "ItemRemoved", "OrderCancelled")
    async def lines(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        redis_tx = as_redis(tx)
        board = redis_tx.key("top_products")
        known: dict[str, dict[str, int]] = {}  # order lines as of this batch's queued writes
        for event in events:
            order = await _lines_of(redis_tx, event.stream_id, known)
            key = redis_tx.key("order_lines", event.stream_id)
            pipe = redis_tx.pipeline
            if event.type == "ItemAdded":
                sku, quantity = event.data["sku"], int(event.data["quantity"])
                moved = quantity - order.get(sku, 0)
                order[sku] = quantity
                pipe.hset(key, sku, quantity)
                if moved:
                    pipe.zincrby(board, moved, sku)
            elif event.type == "ItemRemoved":
                sku = event.data["sku"]
                if sku in order:
                    pipe.hdel(key, sku)
                    pipe.zincrby(board, -order.pop(sku), sku)
            else:  # OrderCancelled: its units leave the board
                for sku, quantity in order.items():
                    pipe.zincrby(board, -quantity, sku)
                order.clear()
                pipe.delete(key)

    return projection


async def _lines_of(
    tx: RedisTransaction, order_id: str, known: dict[str, dict[str, int]]
) -> dict[str, int]:
    """An order's lines: from this batch if it touched them, else as committed in Redis.

    ``tx.client`` reads the committed state, not the writes queued in this transaction, so
    the batch keeps its own view; the read is consistent because the checkpoint is WATCHed
    (whoever commits in between makes this batch's EXEC fail and the runner reload).
    """
    if order_id not in known:
        stored = await tx.client.hgetall(tx.key("order_lines", order_id))
        known[order_id] = {str(sku): int(quantity) for sku, quantity in stored.items()}
    return known[order_id]
