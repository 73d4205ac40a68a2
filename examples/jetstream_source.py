"""Project a NATS JetStream stream into SQLite read models (docs/sources/nats-jetstream.md).

Needs a NATS server with JetStream at $NATS_URL (default nats://127.0.0.1:4222); it makes the
stream $EXAMPLE_STREAM (default ORDERS), publishes three messages and deletes the stream.
"""

import asyncio
import os

import nats
from nats.js.api import StreamConfig

from projectionist import Application, Projection, ReadModelTransaction, RecordedEvent
from projectionist.backends.nats import JetStreamSource

URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
STREAM = os.environ.get("EXAMPLE_STREAM", "ORDERS")

totals = Projection("order_totals", tables=["order_totals"])


@totals.setup
async def create(tx: ReadModelTransaction) -> None:
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS order_totals (order_id TEXT PRIMARY KEY, amount BIGINT)"
    )


@totals.on("ItemAdded")
async def add(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    await tx.execute(
        "INSERT INTO order_totals VALUES ($1, $2) ON CONFLICT (order_id) "
        "DO UPDATE SET amount = order_totals.amount + excluded.amount",
        *(event.stream_id, event.data["price"]),
    )


async def publish() -> None:
    """What your services already do: publish to the stream's subjects."""
    client = await nats.connect(URL)
    js = client.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=[f"{STREAM.lower()}.>"]))
    for order, price in (("order-1", 5), ("order-1", 7), ("order-2", 3)):
        headers = {"Projectionist-Stream": order, "Projectionist-Type": "ItemAdded"}
        await js.publish(f"{STREAM.lower()}.items", b'{"price": %d}' % price, headers=headers)
    await client.close()


async def delete_stream() -> None:
    client = await nats.connect(URL)
    await client.jetstream().delete_stream(STREAM)
    await client.close()


async def main() -> None:
    await publish()
    source = JetStreamSource(URL, STREAM)
    try:
        async with (
            source,
            Application(
                source=source, read_models="sqlite:///read_models.db", projections=[totals]
            ) as app,
        ):
            await app.setup()
            await app.run_until_caught_up()
            async with app.read_models.transaction() as tx:
                rows = await tx.fetch("SELECT order_id, amount FROM order_totals ORDER BY 1")
            print([tuple(row) for row in rows])
    finally:
        await delete_stream()


if __name__ == "__main__":
    asyncio.run(main())
