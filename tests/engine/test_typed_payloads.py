"""Typed event payloads on every backend: handlers, batch handlers, state, search and live
projections given ``Event[T]`` (T a msgspec Struct, a pydantic model or a dataclass) build
the same read models as their untyped twins; a payload that does not validate is a handler
failure naming its field, under ``on_error="stop"``, ``"skip"``, inline and live; a type
that cannot be a payload is refused when registered."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from collections.abc import Collection, Sequence
from typing import Any, Protocol, TypedDict

import msgspec
import pydantic
import pytest

from projectionist import (
    Application,
    ConfigurationError,
    Event,
    Evolver,
    HandlerError,
    LiveProjection,
    NewEvent,
    PayloadValidationError,
    Projection,
    ReadModelTransaction,
    RecordedEvent,
    SearchProjection,
    State,
    StateProjection,
    fold_stream,
)
from projectionist.search import Fields
from tests.conftest import settle

# -- the payload types, one set per library ---------------------------------------------------


class MsgspecItem(msgspec.Struct):
    sku: str
    qty: int
    price: float


class MsgspecPlaced(msgspec.Struct):
    order_id: str
    customer: str
    items: list[MsgspecItem]


class MsgspecShipped(msgspec.Struct):
    order_id: str
    carrier: str


class PydanticItem(pydantic.BaseModel):
    sku: str
    qty: int
    price: float


class PydanticPlaced(pydantic.BaseModel):
    order_id: str
    customer: str
    items: list[PydanticItem]


class PydanticShipped(pydantic.BaseModel):
    order_id: str
    carrier: str


@dataclasses.dataclass
class DataclassItem:
    sku: str
    qty: int
    price: float


@dataclasses.dataclass
class DataclassPlaced:
    order_id: str
    customer: str
    items: list[DataclassItem]


@dataclasses.dataclass
class DataclassShipped:
    order_id: str
    carrier: str


class ItemLike(Protocol):
    @property
    def sku(self) -> str: ...
    @property
    def qty(self) -> int: ...
    @property
    def price(self) -> float: ...


class PlacedLike(Protocol):
    @property
    def order_id(self) -> str: ...
    @property
    def customer(self) -> str: ...
    @property
    def items(self) -> Sequence[ItemLike]: ...


class ShippedLike(Protocol):
    @property
    def order_id(self) -> str: ...
    @property
    def carrier(self) -> str: ...


FLAVORS: dict[str, tuple[type[PlacedLike], type[ShippedLike]]] = {
    "msgspec": (MsgspecPlaced, MsgspecShipped),
    "pydantic": (PydanticPlaced, PydanticShipped),
    "dataclass": (DataclassPlaced, DataclassShipped),
}
WRONG_QTY = {  # what each library says of {"qty": "two"}
    "msgspec": "$.items[1].qty: Expected int, got str",
    "pydantic": "$.items[1].qty: Input should be a valid integer, unable to parse string as an "
    "integer",
    "dataclass": "$.items[1].qty: Expected int, got str",
}
flavors = pytest.mark.parametrize("flavor", list(FLAVORS))

# -- the history and what it must build -------------------------------------------------------

CUSTOMERS = ("alice", "bob", "carol", "dave")
ORDERS = 24
POISON = {"sku": "b", "qty": "two", "price": 1.0}


def placed(n: int, items: list[dict[str, Any]] | None = None) -> NewEvent:
    if items is None:
        items = [
            {"sku": f"sku-{(n + i) % 5}", "qty": 1 + (n * i) % 3, "price": 2.5 * (i + 1)}
            for i in range(1 + n % 3)
        ]
    # "note" is in no payload type: a field the types do not know is ignored.
    data = {"order_id": f"order-{n}", "customer": CUSTOMERS[n % 4], "items": items}
    return NewEvent("OrderPlaced", {**data, "note": "gift"})


def history() -> list[tuple[str, list[NewEvent]]]:
    appends = []
    for n in range(ORDERS):
        events = [placed(n)]
        if n % 2 == 0:
            carrier = "ups" if n % 4 == 0 else "dhl"
            events.append(NewEvent("OrderShipped", {"order_id": f"order-{n}", "carrier": carrier}))
        appends.append((f"order-{n}", events))
    return appends


def expected_rows(skip: Collection[str] = ()) -> list[tuple[Any, ...]]:
    """The rows every projection must build, folded here in plain Python."""
    rows: dict[str, list[Any]] = {}
    for stream, events in history():
        if stream in skip:
            continue
        for event in events:
            if event.type == "OrderPlaced":
                items = event.data["items"]
                total = sum(item["qty"] * item["price"] for item in items)
                rows[stream] = [stream, event.data["customer"], len(items), total, None]
            else:
                rows[stream][4] = event.data["carrier"]
    return sorted(tuple(row) for row in rows.values())


async def append_history(app: Application, poison: bool = False) -> None:
    for stream, events in history():
        if poison and stream == "order-3":  # its second item's quantity is a string
            first = events[0].data["items"][0]
            events = [placed(3, [first, POISON]), *events[1:]]
        await app.store.append(stream, events)
    await settle(app.store)


# -- projections: an untyped one and a typed one of each kind ---------------------------------

COLUMNS = {"customer": "TEXT", "items": "BIGINT", "total": "DOUBLE PRECISION", "carrier": "TEXT"}


def create_table(projection: Projection, table: str) -> None:
    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (order_id TEXT PRIMARY KEY, customer TEXT, "
            "items BIGINT, total DOUBLE PRECISION, carrier TEXT)"
        )


UPSERT = (
    "INSERT INTO {table} VALUES ($1, $2, $3, $4, NULL) ON CONFLICT (order_id) DO UPDATE SET "
    "customer = excluded.customer, items = excluded.items, total = excluded.total"
)
SHIP = "UPDATE {table} SET carrier = $1 WHERE order_id = $2"


def untyped_handlers(name: str = "orders_untyped", **options: Any) -> Projection:
    projection = Projection(name, tables=[name], batch_size=7, **options)
    create_table(projection, name)

    @projection.on("OrderPlaced")
    async def on_placed(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        data, items = event.data, event.data["items"]
        total = sum(item["qty"] * item["price"] for item in items)
        await tx.execute(
            UPSERT.format(table=name), data["order_id"], data["customer"], len(items), total
        )

    @projection.on_batch("OrderShipped")
    async def on_shipped(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        rows = [(e.data["carrier"], e.data["order_id"]) for e in events]
        await tx.executemany(SHIP.format(table=name), rows)

    return projection


def typed_handlers(flavor: str, name: str = "", **options: Any) -> Projection:
    name = name or f"orders_{flavor}"
    placed_type, shipped_type = FLAVORS[flavor]
    projection = Projection(name, tables=[name], batch_size=7, **options)
    create_table(projection, name)

    @projection.on("OrderPlaced", payload=placed_type)
    async def on_placed(event: Event[PlacedLike], tx: ReadModelTransaction) -> None:
        order, items = event.data, event.data.items
        total = sum(item.qty * item.price for item in items)
        await tx.execute(
            UPSERT.format(table=name), order.order_id, order.customer, len(items), total
        )

    @projection.on_batch("OrderShipped", payload=shipped_type)
    async def on_shipped(events: Sequence[Event[ShippedLike]], tx: ReadModelTransaction) -> None:
        rows = [(e.data.carrier, e.data.order_id) for e in events]
        await tx.executemany(SHIP.format(table=name), rows)

    return projection


def initial() -> State:
    return {"customer": "", "items": 0, "total": 0.0, "carrier": None}


def untyped_state(name: str = "state_untyped") -> StateProjection:
    projection = StateProjection(
        name, table=name, key="order_id", key_column="order_id", columns=COLUMNS,
        initial=initial, batch_size=7,
    )  # fmt: skip

    @projection.evolve("OrderPlaced")
    def on_placed(state: State, event: RecordedEvent) -> State:
        items = event.data["items"]
        total = sum(item["qty"] * item["price"] for item in items)
        return {**state, "customer": event.data["customer"], "items": len(items), "total": total}

    @projection.evolve("OrderShipped")
    def on_shipped(state: State, event: RecordedEvent) -> State:
        return {**state, "carrier": event.data["carrier"]}

    return projection


def typed_state(flavor: str, **options: Any) -> StateProjection:
    name = f"state_{flavor}"
    placed_type, shipped_type = FLAVORS[flavor]
    projection = StateProjection(
        name, table=name, key="order_id", key_column="order_id", columns=COLUMNS,
        initial=initial, **{"batch_size": 7, **options},
    )  # fmt: skip

    @projection.evolve("OrderPlaced", payload=placed_type)
    def on_placed(state: State, event: Event[PlacedLike]) -> State:
        items = event.data.items
        total = sum(item.qty * item.price for item in items)
        return {**state, "customer": event.data.customer, "items": len(items), "total": total}

    @projection.evolve("OrderShipped", payload=shipped_type)
    def on_shipped(state: State, event: Event[ShippedLike]) -> State:
        return {**state, "carrier": event.data.carrier}

    return projection


def search_index(flavor: str | None) -> SearchProjection:
    name = f"search_{flavor or 'untyped'}"
    projection = SearchProjection(
        name, table=name, key="order_id", text={"customer": "A"}, stored=["items"]
    )
    if flavor is None:

        @projection.upsert("OrderPlaced")
        def fields(event: RecordedEvent) -> Fields:
            return {"customer": event.data["customer"], "items": len(event.data["items"])}

    else:

        @projection.upsert("OrderPlaced", payload=FLAVORS[flavor][0])
        def typed_fields(event: Event[PlacedLike]) -> Fields:
            return {"customer": event.data.customer, "items": len(event.data.items)}

    return projection


async def rows_of(app: Application, table: str) -> list[tuple[Any, ...]]:
    async with app.read_models.transaction() as tx:
        rows = await tx.fetch(
            f"SELECT order_id, customer, items, total, carrier FROM {table} ORDER BY order_id"
        )
    return sorted((r[0], r[1], int(r[2]), float(r[3]), r[4]) for r in rows)


# -- the same read models ---------------------------------------------------------------------


@flavors
async def test_typed_projections_build_the_rows_of_the_untyped_ones(
    app_url: str, flavor: str
) -> None:
    untyped_index, typed_index = search_index(None), search_index(flavor)
    projections = [
        untyped_handlers(),
        typed_handlers(flavor),
        untyped_state(),
        typed_state(flavor),
        untyped_index,
        typed_index,
    ]
    async with Application(app_url, projections) as app:
        await app.setup()
        await append_history(app)
        await app.run_until_caught_up()

        expected = expected_rows()
        assert len(expected) == ORDERS and any(row[4] for row in expected)
        for table in ("orders_untyped", f"orders_{flavor}", "state_untyped", f"state_{flavor}"):
            assert await rows_of(app, table) == expected, table
        async with app.read_models.transaction() as tx:
            untyped_hits = await untyped_index.search(tx, "alice", limit=50)
            typed_hits = await typed_index.search(tx, "alice", limit=50)
        assert len(untyped_hits) == ORDERS // 4 and typed_hits == untyped_hits


@flavors
async def test_a_typed_handler_gets_the_recorded_event_with_its_data_decoded(
    app_url: str, flavor: str
) -> None:
    placed_type, _ = FLAVORS[flavor]
    seen: list[Event[PlacedLike]] = []
    projection = Projection(f"seen_{flavor}")

    @projection.on("OrderPlaced", payload=placed_type)
    async def record(event: Event[PlacedLike], tx: ReadModelTransaction) -> None:
        seen.append(event)

    async with Application(app_url, [projection]) as app:
        await app.setup()
        await append_history(app)
        await app.run_until_caught_up()
        batch = await app.store.read_all(limit=1000, types=["OrderPlaced"])
        stored = batch.events

    assert Event._fields == RecordedEvent._fields
    assert len(seen) == len(stored) == ORDERS
    for event, recorded in zip(seen, stored, strict=True):
        assert isinstance(event, Event) and isinstance(event.data, placed_type)
        assert event[:4] == recorded[:4] and event[5:] == recorded[5:]
        assert event.data.order_id == recorded.data["order_id"]
        assert [item.qty for item in event.data.items] == [i["qty"] for i in recorded.data["items"]]


@flavors
async def test_live_projections_and_fold_stream_with_typed_payloads(
    app_url: str, flavor: str
) -> None:
    placed_type, shipped_type = FLAVORS[flavor]

    def counting(state: dict[str, int], event: RecordedEvent) -> dict[str, int]:
        return {**state, event.data["carrier"]: state.get(event.data["carrier"], 0) + 1}

    def typed_counting(state: dict[str, int], event: Event[ShippedLike]) -> dict[str, int]:
        return {**state, event.data.carrier: state.get(event.data.carrier, 0) + 1}

    untyped: LiveProjection[dict[str, int]] = LiveProjection("untyped", dict, from_start=True)
    typed: LiveProjection[dict[str, int]] = LiveProjection("typed", dict, from_start=True)
    untyped.on("OrderShipped")(counting)
    typed.on("OrderShipped", payload=shipped_type)(typed_counting)
    items: Evolver[int] = Evolver()

    @items.on("OrderPlaced", payload=placed_type)
    def count_items(total: int, event: Event[PlacedLike]) -> int:
        return total + sum(item.qty for item in event.data.items)

    expected = {"ups": ORDERS // 4, "dhl": ORDERS // 4}
    async with Application(app_url, []) as app:
        await app.setup()
        await append_history(app)
        tasks = [asyncio.create_task(live.run(app.store)) for live in (untyped, typed)]
        try:
            for _ in range(500):
                if untyped.state == typed.state == expected:
                    break
                await asyncio.sleep(0.02)
        finally:
            untyped.stop()
            typed.stop()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert untyped.state == typed.state == expected
        qty = sum(i["qty"] for i in placed(5).data["items"])
        assert await fold_stream(app.store, "order-5", 0, items) == qty


# -- payloads that do not validate ------------------------------------------------------------


def wrong_payload(flavor: str, position: object) -> str:
    return (
        f"OrderPlaced event (stream 'order-3' version 1, position {position}) is not a valid "
        f"{FLAVORS[flavor][0].__qualname__}: {WRONG_QTY[flavor]}"
    )


async def position_of_poison(app: Application) -> object:
    [event] = await app.store.read_stream("order-3", limit=1)
    return event.position


@flavors
async def test_a_wrong_payload_stops_the_projection_with_a_fault_naming_the_field(
    app_url: str, flavor: str
) -> None:
    async with Application(app_url, [typed_handlers(flavor, on_error="stop")]) as app:
        await app.setup()
        await append_history(app, poison=True)
        with pytest.raises(HandlerError) as caught:
            await app.run_until_caught_up()
        message = wrong_payload(flavor, await position_of_poison(app))
        cause = caught.value.__cause__
        assert isinstance(cause, PayloadValidationError) and str(cause) == message
        assert cause.event_type == "OrderPlaced"
        assert cause.problems == [tuple(WRONG_QTY[flavor].split(": ", 1))]
        assert str(caught.value).endswith(f": PayloadValidationError: {message}")

        [fault] = await app.faults()
        assert (fault.stream_id, fault.event_type) == ("order-3", "OrderPlaced")
        assert fault.error == f"PayloadValidationError: {message}"
        assert "two" not in fault.error  # the value is not repeated: payloads may be private
        # Orders 0..2 were applied (the failing batch narrowed down to its event).
        first = {"order-0", "order-1", "order-2"}
        assert await rows_of(app, f"orders_{flavor}") == [
            row for row in expected_rows() if row[0] in first
        ]


@flavors
async def test_a_wrong_payload_is_dead_lettered_under_skip_and_the_rest_applied(
    app_url: str, flavor: str
) -> None:
    async with Application(app_url, [typed_state(flavor, on_error="skip", retries=1)]) as app:
        await app.setup()
        await append_history(app, poison=True)
        await app.run_until_caught_up()

        [letter] = await app.dead_letters()
        assert (letter.event.stream_id, letter.event.type, letter.attempts) == (
            "order-3",
            "OrderPlaced",
            2,
        )
        message = wrong_payload(flavor, await position_of_poison(app))
        assert letter.error == f"PayloadValidationError: {message}"
        # order-3 was never placed; its OrderShipped is absent (odd order): no row at all.
        assert await rows_of(app, f"state_{flavor}") == expected_rows(skip={"order-3"})
        [status] = await app.status()
        assert status.dead_letters == 1 and status.lag == 0


async def test_a_wrong_payload_rolls_back_an_inline_append(app_url: str) -> None:
    async with Application(app_url, [typed_handlers("msgspec", kind="inline")]) as app:
        await app.setup()
        await app.store.append("order-1", [placed(1)])
        head = await app.store.last_committed()
        with pytest.raises(HandlerError) as caught:
            await app.store.append("order-2", [placed(2), placed(3, [POISON, POISON])])
        assert isinstance(caught.value.__cause__, PayloadValidationError)
        assert "$.items[0].qty: Expected int, got str" in str(caught.value)
        assert await app.store.last_committed() == head
        assert await app.store.read_stream("order-2") == []
        assert [row[0] for row in await rows_of(app, "orders_msgspec")] == ["order-1"]


@pytest.mark.parametrize("backend", ["memory"])
@flavors
async def test_a_wrong_payload_ends_a_live_projection(app_url: str, flavor: str) -> None:
    live: LiveProjection[int] = LiveProjection("items", int, from_start=True)

    @live.on("OrderPlaced", payload=FLAVORS[flavor][0])
    def count(total: int, event: Event[PlacedLike]) -> int:
        return total + len(event.data.items)

    async with Application(app_url, []) as app:
        await app.setup()
        await append_history(app, poison=True)
        with pytest.raises(PayloadValidationError) as caught:
            await asyncio.wait_for(live.run(app.store), 10)
        assert str(caught.value) == wrong_payload(flavor, await position_of_poison(app))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"order_id": "o", "customer": "c"}, "$: Object missing required field items"),
        (
            {"order_id": "o", "customer": "c", "items": [{"sku": "s", "price": 1.0}]},
            "$.items[0]: Object missing required field qty",
        ),
        ({"order_id": 7, "customer": "c", "items": []}, "$.order_id: Expected str, got int"),
    ],
)
@pytest.mark.parametrize("backend", ["memory"])
async def test_msgspec_problems_name_the_path(
    app_url: str, data: dict[str, Any], problem: str
) -> None:
    projection = typed_handlers("dataclass", on_error="stop")
    async with Application(app_url, [projection]) as app:
        await app.setup()
        await app.store.append("o", [NewEvent("OrderPlaced", data)])
        with pytest.raises(HandlerError) as caught:
            await app.run_until_caught_up()
    assert str(caught.value).endswith(f"is not a valid DataclassPlaced: {problem}")


@pytest.mark.parametrize("backend", ["memory"])
async def test_pydantic_reports_every_problem(app_url: str) -> None:
    projection = typed_handlers("pydantic", on_error="stop")
    bad = {"customer": 3, "items": [{"sku": "s", "qty": 1}]}
    async with Application(app_url, [projection]) as app:
        await app.setup()
        await app.store.append("o", [NewEvent("OrderPlaced", bad)])
        with pytest.raises(HandlerError) as caught:
            await app.run_until_caught_up()
    cause = caught.value.__cause__
    assert isinstance(cause, PayloadValidationError)
    assert cause.problems == [
        ("$.order_id", "Field required"),
        ("$.customer", "Input should be a valid string"),
        ("$.items[0].price", "Field required"),
    ]


# -- registration -----------------------------------------------------------------------------


class NotAPayload(TypedDict):
    order_id: str


@pytest.mark.parametrize(
    "payload",
    [int, dict, str, NotAPayload, "MsgspecPlaced", DataclassShipped("o", "ups"), None.__class__],
    ids=["int", "dict", "str", "typeddict", "a-name", "an-instance", "nonetype"],
)
def test_a_type_that_is_no_payload_is_refused_when_registered(payload: Any) -> None:
    projection = Projection("p")
    state = StateProjection("s", table="s", initial=dict)
    index = SearchProjection("i", table="i", text={"t": "A"})
    evolver: Evolver[int] = Evolver()
    match = "payload must be a msgspec.Struct, a pydantic model or a dataclass"
    with pytest.raises(ConfigurationError, match=f"projection 'p': {match}"):
        projection.on("OrderPlaced", payload=payload)
    with pytest.raises(ConfigurationError, match=f"projection 'p': {match}"):
        projection.on_batch("OrderPlaced", payload=payload)
    with pytest.raises(ConfigurationError, match=f"projection 's': {match}"):
        state.evolve("OrderPlaced", payload=payload)
    with pytest.raises(ConfigurationError, match=f"projection 'i': {match}"):
        index.upsert("OrderPlaced", payload=payload)
    with pytest.raises(ConfigurationError, match=f"evolve function of OrderPlaced: {match}"):
        evolver.on("OrderPlaced", payload=payload)
    # Nothing was registered.
    assert projection.types == state.types == index.types == frozenset()
    assert evolver.functions == {}


def test_an_untyped_handler_is_stored_as_it_is() -> None:
    """The untyped path pays nothing: the function the engine calls is the user's own."""
    projection = untyped_handlers()
    state = untyped_state()
    assert [h.__name__ for _, h in projection._handlers.values()] == ["on_placed", "on_shipped"]
    assert [f.__name__ for f in state._evolvers.values()] == ["on_placed", "on_shipped"]
    typed = typed_handlers("msgspec")
    assert [h.__name__ for _, h in typed._handlers.values()] == ["decoded", "decoded_batch"]


def test_the_library_does_not_import_pydantic() -> None:
    code = "import sys, projectionist; print('pydantic' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
