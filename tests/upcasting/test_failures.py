"""Upcasters that fail, registrations and calls that are refused, and a foreign source."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import orjson
import pytest

from projectionist import Application, EventStore, NewEvent, create_store
from projectionist.backends.postgres import PostgresTableSource
from projectionist.backends.postgres.table_source import ColumnMap
from projectionist.errors import ConfigurationError, HandlerError, InvalidInputError
from projectionist.events import START, JsonObject
from projectionist.leases import acquire, register_units, release
from projectionist.upcasting import NO_UPCASTERS, SCHEMA_VERSION, Upcasters
from projectionist.upgrading import upgrade_events
from tests.conftest import PG_DSN, _drop_schema, new_schema_name, require_postgres, settle
from tests.upcasting.domain import (
    add_currency,
    created,
    expected_orders,
    order_rows,
    paid,
    to_placed,
    upcasters,
)

ROWS = "SELECT order_id, total_cents, currency, paid FROM order_rows ORDER BY order_id"
ORDERS = 6
POISON = "order-3"


def failing_on(order: str, broken: set[str] | None = None) -> Upcasters:
    """The v3 chain, whose first step fails on one order (while it is in ``broken``)."""
    registry = Upcasters()
    broken = {order} if broken is None else broken

    @registry.register("OrderCreated", from_version=1)
    def strict(data: JsonObject) -> JsonObject:
        if data["id"] in broken:
            raise ValueError(f"cannot upcast {order}")
        return add_currency(data)

    registry.register("OrderCreated", from_version=2, to_type="OrderPlaced")(to_placed)
    return registry


async def v1_history(store: EventStore, orders: int = ORDERS) -> None:
    """Orders in the v1 shape, said so by the writer (the store would record its current
    version otherwise: it has the upcasters)."""
    for n in range(orders):
        first = created(1, n)
        old = NewEvent(first.type, first.data, {SCHEMA_VERSION: 1})
        await store.append(f"order-{n}", [old] + ([paid(n)] if n % 2 == 0 else []))
    await settle(store)


async def table(app: Application) -> list[tuple[object, ...]]:
    async with app.read_models.transaction() as tx:
        return [(o, c, cur, bool(p)) for o, c, cur, p in await tx.fetch(ROWS)]


def without(order: str) -> list[tuple[object, ...]]:
    return [row for row in expected_orders(ORDERS) if row[0] != order]


async def test_an_upcaster_that_raises_stops_the_projection_at_its_event(app_url: str) -> None:
    registry = failing_on(POISON)
    async with Application(app_url, [order_rows(batch_size=50)], upcasters=registry) as app:
        await app.setup()
        await v1_history(app.store)
        step = "upcaster OrderCreated v1 -> OrderCreated v2 raised ValueError"
        with pytest.raises(HandlerError, match=f"'{POISON}'.*{step}: cannot upcast {POISON}"):
            await app.run_until_caught_up()
        [fault] = await app.faults("order_rows")
        assert fault.event_type == "OrderCreated" and fault.stream_id == POISON
        assert f"cannot upcast {POISON}" in fault.error
        # The events before it were applied (the batch was narrowed down to it).
        assert await table(app) == [r for r in expected_orders(ORDERS) if r[0] < POISON]
        # Skipping the fault moves past exactly that (stored, old-typed) event.
        await app.skip_fault("order_rows")
        await app.run_until_caught_up()
        assert await table(app) == without(POISON)
        [letter] = await app.dead_letters("order_rows")
        assert letter.event.stream_id == POISON and letter.event.type == "OrderCreated"


async def test_an_upcaster_that_raises_under_skip_dead_letters_only_its_event(
    app_url: str,
) -> None:
    broken = {POISON}
    registry = failing_on(POISON, broken)
    projection = order_rows(batch_size=50, on_error="skip")
    async with Application(app_url, [projection], upcasters=registry) as app:
        await app.setup()
        await v1_history(app.store)
        await app.run_until_caught_up()
        assert await table(app) == without(POISON)
        [letter] = await app.dead_letters("order_rows")
        # The letter keeps the event as stored: v1, its old type.
        assert letter.event.stream_id == POISON and letter.event.type == "OrderCreated"
        assert letter.event.data == {"id": POISON, "amount": 4}
        assert f"cannot upcast {POISON}" in letter.error
        assert not await app.faults()
        # Retried while still broken: it stays; after the fix it is upcast and applied.
        [(_, error)] = await app.retry_dead_letters([letter.id])
        assert error is not None and f"cannot upcast {POISON}" in error
        broken.clear()
        assert await app.retry_dead_letters([letter.id]) == [(letter.id, None)]
        assert await table(app) == expected_orders(ORDERS)
        assert not await app.dead_letters()


async def test_an_upcaster_returning_no_dict_or_a_bad_stored_version_is_a_handler_error(
    store: EventStore,
) -> None:
    registry = Upcasters()
    registry.register("OrderCreated")(lambda data: None)  # type: ignore[arg-type, return-value]
    await store.append("order-1", [created(1, 1)])
    await store.append("order-2", [NewEvent("OrderCreated", {}, {SCHEMA_VERSION: "two"})])
    await settle(store)
    one, two = (await store.read_all(START)).events
    with pytest.raises(HandlerError, match="returned NoneType, not a dict") as raised:
        registry.apply([one], "p")
    assert raised.value.event == one and raised.value.projection == "p"
    with pytest.raises(HandlerError, match="schema_version 'two'"):
        registry.apply([two], "p")


def test_bad_registrations_are_refused() -> None:
    registry = upcasters(3)
    with pytest.raises(ConfigurationError, match="registered already"):
        registry.register("OrderCreated", from_version=1)(add_currency)
    with pytest.raises(ConfigurationError, match="the version must grow"):
        registry.register("OrderPlaced", from_version=3, to_version=3)(add_currency)
    with pytest.raises(ConfigurationError, match="the version must grow"):
        registry.register("OrderPlaced", from_version=4, to_version=2)(add_currency)
    # A rename back to where the chain started: OrderPlaced v3 -> OrderCreated v1 -> ...
    with pytest.raises(
        ConfigurationError, match="closes a cycle: OrderPlaced v3 -> OrderCreated v1"
    ):
        registry.register("OrderPlaced", from_version=3, to_type="OrderCreated", to_version=1)(
            add_currency
        )
    for version in (0, -1, True, "1", 2**63):
        with pytest.raises(ConfigurationError, match="from_version must be an integer"):
            registry.register("X", from_version=version)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="to_version must be an integer"):
        registry.register("X", to_version=0)
    for name in ("", "x" * 201, 5):
        with pytest.raises(ConfigurationError, match="event type"):
            registry.register(name)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="event type"):
        registry.register("X", to_type="")
    with pytest.raises(ConfigurationError, match="must be callable"):
        registry.register("X")("not a function")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="shared empty one"):
        NO_UPCASTERS.register("X")(add_currency)
    # Nothing refused was registered.
    assert len(registry) == 2 and registry.current_version("OrderPlaced") == 3
    assert registry.current_version("OrderCreated") == 2 and registry.current_version("X") == 1
    assert registry.read_types({"OrderPlaced"}) == frozenset({"OrderPlaced", "OrderCreated"})
    assert (
        registry.read_types({"OrderPaid"}) == frozenset({"OrderPaid"})
        and registry.read_types(None) is None
    )


async def test_a_stated_schema_version_is_checked_when_appended(store: EventStore) -> None:
    store.use_upcasters(upcasters(3))
    for bad in (3, 0, True, "2", 2.0):
        with pytest.raises(
            InvalidInputError, match="schema_version must be an integer from 1 to 2"
        ):
            await store.append(
                "order-1", [created(2, 1), NewEvent("OrderCreated", {}, {SCHEMA_VERSION: bad})]
            )
    assert await store.head() == START  # nothing written
    # An older shape stated by its writer is kept, and upcast when read.
    result = await store.append(
        "order-1", [NewEvent("OrderCreated", {"id": "order-1", "amount": 2}, {SCHEMA_VERSION: 1})]
    )
    [event] = result.events
    assert event.metadata == {SCHEMA_VERSION: 1}
    [placed] = store.upcasters.apply([event], "p")
    assert placed.type == "OrderPlaced" and placed.data["total_cents"] == 200
    with pytest.raises(ConfigurationError, match="must be an Upcasters registry"):
        store.use_upcasters({})  # type: ignore[arg-type]


async def test_applications_are_given_one_registry(app_url: str) -> None:
    with pytest.raises(ConfigurationError, match="upcasters= must be an Upcasters registry"):
        Application(app_url, upcasters=[add_currency])  # type: ignore[arg-type]
    store = create_store(app_url)
    async with store:
        store.use_upcasters(upcasters(2))
        with pytest.raises(ConfigurationError, match="already reads with other upcasters"):
            async with Application(store, upcasters=upcasters(3)):
                pass
        async with Application(store, upcasters=store.upcasters) as app:  # the same: fine
            assert app.source.upcasters is store.upcasters


async def test_upgrade_is_refused_while_a_blue_green_build_runs(app_url: str) -> None:
    async with Application(app_url, [order_rows()], upcasters=upcasters(3)) as app:
        await app.setup()
        store = app.store
        await v1_history(store)
        before = (await store.read_all(START)).events
        unit = "order_rows~v2"
        await register_units(app.read_models, {unit: "order_rows"})
        lease = await acquire(app.read_models, unit, "worker-7", 30)
        assert lease is not None
        with pytest.raises(
            ConfigurationError, match=r"build is running \(order_rows~v2 \(by worker-7\)\)"
        ):
            await app.upgrade_events()
        assert (await store.read_all(START)).events == before  # nothing rewritten
        await release(app.read_models, lease)
        report = await app.upgrade_events(batch_size=1)
        assert report.upgraded == ORDERS and report.batches == ORDERS
        with pytest.raises(InvalidInputError, match="batch size"):
            await app.upgrade_events(batch_size=0)


async def test_upgrade_needs_upcasters(store: EventStore) -> None:
    with pytest.raises(ConfigurationError, match="no upcasters are registered"):
        await upgrade_events(store)


async def test_a_foreign_source_reads_upcast_and_refuses_upgrade(tmp_path: Path) -> None:
    """A PostgreSQL table of another system with v1 and v3 rows: projections see v3; the
    table is not ours to rewrite."""
    await require_postgres()
    schema = new_schema_name()
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(
            f'CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".orders (id BIGSERIAL PRIMARY KEY, '
            "stream TEXT NOT NULL, type TEXT NOT NULL, data JSONB NOT NULL, metadata JSONB NOT "
            "NULL, recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        rows = []
        for n in range(ORDERS):
            event = created(1 if n < ORDERS // 2 else 3, n)
            metadata = {} if n < ORDERS // 2 else {SCHEMA_VERSION: 3}
            rows.append(
                (
                    f"order-{n}",
                    event.type,
                    orjson.dumps(event.data).decode(),
                    orjson.dumps(metadata).decode(),
                )
            )
            if n % 2 == 0:
                rows.append((f"order-{n}", "OrderPaid", orjson.dumps(paid(n).data).decode(), "{}"))
        await connection.executemany(
            f'INSERT INTO "{schema}".orders (stream, type, data, metadata) VALUES ($1, $2, $3, $4)',
            rows,
        )
        source = PostgresTableSource(
            PG_DSN, "orders", schema=schema, columns=ColumnMap(metadata="metadata"),
            strategy="commit_order_promised", poll_interval=0.05,
        )  # fmt: skip
        read_models = f"sqlite:///{tmp_path / 'read_models.db'}"
        app = Application(
            source=source,
            read_models=read_models,
            projections=[order_rows()],
            upcasters=upcasters(3),
        )
        async with source, app:
            await app.setup()
            await app.run_until_caught_up()
            assert await table(app) == expected_orders(ORDERS)
            assert (await app.verify("order_rows")).ok
            with pytest.raises(ConfigurationError, match="our own store only"):
                await app.upgrade_events()
    finally:
        await connection.close()
        await _drop_schema(schema)
