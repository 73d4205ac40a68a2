"""An upcaster chain v1 -> v2 -> v3 (with a rename) over a store holding all three shapes:
every consumer sees v3 only, on memory, SQLite and PostgreSQL; ``events upgrade`` then
rewrites the stored events to v3 and changes nothing any consumer sees."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from projectionist import Application, EventStore, create_store
from projectionist.bluegreen import RETIRED_PREFIX, BlueGreenBuild
from projectionist.events import START, RecordedEvent
from projectionist.live import fold_stream
from projectionist.testing import assert_idempotent
from projectionist.upcasting import SCHEMA_VERSION
from tests.conftest import settle
from tests.upcasting.domain import (
    V3_KEYS,
    created,
    expected_orders,
    fold_order,
    order_rows,
    order_states,
    order_totals,
    paid,
    upcasters,
)

PER_SHAPE = 10
ORDERS = 3 * PER_SHAPE
ROWS = "SELECT order_id, total_cents, currency, paid FROM {} ORDER BY order_id"


async def write_history(store: EventStore) -> None:
    """Orders 0-9 written with no upcasters (v1), 10-19 with the v2 registry, 20-29 with
    the v3 one; even orders are paid."""
    for shape in (1, 2, 3):
        if shape > 1:
            store.use_upcasters(upcasters(shape))
        for n in range((shape - 1) * PER_SHAPE, shape * PER_SHAPE):
            await store.append(
                f"order-{n}", [created(shape, n)] + ([paid(n)] if n % 2 == 0 else [])
            )
    await settle(store)


async def stored(store: EventStore) -> list[RecordedEvent]:
    """Every stored event as it is (a read of the source is never upcast)."""
    batch = await store.read_all(START, limit=1000)
    return batch.events


async def rows(app: Application, table: str) -> list[tuple[Any, ...]]:
    async with app.read_models.transaction() as tx:
        found = await tx.fetch(ROWS.format(table))
    return [(order, cents, currency, bool(was_paid)) for order, cents, currency, was_paid in found]


def shapes(events: list[RecordedEvent]) -> list[tuple[str, int | None]]:
    return [(e.type, e.metadata.get(SCHEMA_VERSION)) for e in events if e.type != "OrderPaid"]


async def test_every_consumer_sees_v3_then_upgrade_changes_nothing(
    app_url: str, backend: str
) -> None:
    store = create_store(app_url)
    async with store:
        await store.apply_schema()
        await write_history(store)
        before = await stored(store)
        # What was stored: three shapes, the versions recorded from the second on.
        assert shapes(before) == (
            [("OrderCreated", None)] * PER_SHAPE
            + [("OrderCreated", 2)] * PER_SHAPE
            + [("OrderPlaced", 3)] * PER_SHAPE
        )
        registry = store.upcasters
        app = Application(store, [order_rows(), order_states()], upcasters=registry)
        async with app:
            await app.setup()
            await app.run_until_caught_up()
            expected = expected_orders(ORDERS)
            assert await rows(app, "order_rows") == expected
            assert await rows(app, "order_states") == expected
            await check_other_consumers(store)

            assert await app.rebuild("order_rows") == ORDERS + ORDERS // 2
            assert await app.rebuild("order_states") == ORDERS + ORDERS // 2
            assert await rows(app, "order_rows") == await rows(app, "order_states") == expected
            assert (await app.verify("order_rows")).ok
            assert (await app.verify("order_states")).ok
            if backend == "postgres":  # side schemas: blue/green builds
                new_version = order_rows(version=2)
                build = BlueGreenBuild(app.source, app.read_models, new_version)
                await build.run()
                assert build.switched
                # The retired schema lives beside the test's: drop it now, not in 5 minutes.
                sides = app.read_models.side_schemas()
                assert sides is not None
                assert len(await sides.drop_retired(RETIRED_PREFIX, time.time() + 3600)) == 1
                assert await rows(app, "order_rows") == expected
        # What the consumers saw of every event, before the upgrade.
        seen = registry.apply(before, "test")
        version = 2 if backend == "postgres" else 1  # as swapped in
        app = Application(store, [order_rows(version), order_states()], upcasters=registry)
        async with app:
            report = await app.upgrade_events(batch_size=4)
            assert report.upgraded == report.scanned == 2 * PER_SHAPE
            assert dict(report.changes) == {
                "OrderCreated v1 -> OrderPlaced v3": PER_SHAPE,
                "OrderCreated v2 -> OrderPlaced v3": PER_SHAPE,
            }
            after = await stored(store)
            assert shapes(after) == [("OrderPlaced", 3)] * ORDERS
            assert all(set(e.data) == V3_KEYS for e in after if e.type == "OrderPlaced")
            # Ids, positions, order, stream versions and times kept; the data is what
            # upcasting on read gave.
            assert after == list(seen)
            assert [(e.id, e.position, e.stream_id, e.version, e.recorded_at) for e in after] == [
                (e.id, e.position, e.stream_id, e.version, e.recorded_at) for e in before
            ]
            # Nothing the projections see changed.
            assert await rows(app, "order_rows") == expected
            await app.rebuild("order_states")
            assert await rows(app, "order_states") == expected
            assert (await app.verify("order_rows")).ok
            await check_other_consumers(store)
            again = await app.upgrade_events()
            assert (again.scanned, again.upgraded) == (0, 0)
            assert await stored(store) == after


async def check_other_consumers(store: EventStore) -> None:
    """A live projection, fold_stream and the idempotency kit see v3 only."""
    live = order_totals()
    running = asyncio.create_task(live.run(store))
    head = await store.head()
    for _ in range(500):
        if live.position >= head:
            break
        await asyncio.sleep(0.01)
    live.stop()
    await running
    assert live.state == {"EUR": sum(cents for _, cents, _, _ in expected_orders(ORDERS))}
    evolve = {"OrderPlaced": fold_order, "OrderPaid": fold_order}
    for n in (4, 14, 24):  # one order of each stored shape
        folded = await fold_stream(store, f"order-{n}", list[str](), evolve)
        assert folded == [f"OrderPlaced:{(n % 7 + 1) * 100}", "OrderPaid:-"]
    kit = await assert_idempotent(order_rows(), store, ROWS.format("order_rows"))
    assert [(o, c, cur, bool(p)) for o, c, cur, p in kit] == expected_orders(ORDERS)
