"""An order's first event in three shapes, and the projections that expect the third.

- v1 ``OrderCreated {"id", "amount"}`` (whole euros), written before any upcaster existed;
- v2 ``OrderCreated {"id", "amount", "currency"}``;
- v3 ``OrderPlaced {"order_id", "total_cents", "currency"}``: a rename.

``OrderPaid`` never changed. Every consumer here fails loudly on a shape other than v3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from projectionist import NewEvent, Projection, ReadModelTransaction, RecordedEvent
from projectionist.events import JsonObject
from projectionist.live import LiveProjection
from projectionist.state import State, StateProjection
from projectionist.upcasting import SCHEMA_VERSION, Upcasters

V3_KEYS = {"order_id", "total_cents", "currency"}


def add_currency(data: JsonObject) -> JsonObject:
    return {**data, "currency": "EUR"}


def to_placed(data: JsonObject) -> JsonObject:
    return {
        "order_id": data["id"],
        "total_cents": data["amount"] * 100,
        "currency": data["currency"],
    }


def upcasters(up_to: int) -> Upcasters:
    """The registry as the code had it when version ``up_to`` was current."""
    registry = Upcasters()
    if up_to >= 2:
        registry.register("OrderCreated", from_version=1)(add_currency)
    if up_to >= 3:
        registry.register("OrderCreated", from_version=2, to_type="OrderPlaced")(to_placed)
    return registry


def created(shape: int, n: int) -> NewEvent:
    """Order ``n``'s first event in ``shape`` (1, 2 or 3)."""
    amount = n % 7 + 1
    if shape == 1:
        return NewEvent("OrderCreated", {"id": f"order-{n}", "amount": amount})
    if shape == 2:
        return NewEvent("OrderCreated", {"id": f"order-{n}", "amount": amount, "currency": "EUR"})
    data = {"order_id": f"order-{n}", "total_cents": amount * 100, "currency": "EUR"}
    return NewEvent("OrderPlaced", data)


def paid(n: int) -> NewEvent:
    return NewEvent("OrderPaid", {"order_id": f"order-{n}"})


def expected_orders(orders: int) -> list[tuple[Any, ...]]:
    """(order, total_cents, currency, paid) of orders 0..orders-1, even ones paid."""
    return [
        (f"order-{n}", (n % 7 + 1) * 100, "EUR", n % 2 == 0)
        for n in sorted(range(orders), key=lambda n: f"order-{n}")
    ]


def check_v3(event: RecordedEvent) -> None:
    if event.type == "OrderPlaced":
        assert set(event.data) == V3_KEYS, f"not the v3 shape: {event.data}"
        assert event.metadata[SCHEMA_VERSION] == 3, event.metadata
    elif event.type != "OrderPaid":
        raise AssertionError(f"an old type reached a projection: {event.type}")


def order_rows(version: int = 1, **options: Any) -> Projection:
    """A handler projection: one row per order."""
    projection = Projection("order_rows", version=version, tables=["order_rows"], **options)

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS order_rows (order_id TEXT PRIMARY KEY, "
            "total_cents BIGINT NOT NULL, currency TEXT NOT NULL, paid BOOLEAN NOT NULL)"
        )

    @projection.on("OrderPlaced")
    async def placed(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        check_v3(event)
        await tx.execute(
            "INSERT INTO order_rows VALUES ($1, $2, $3, FALSE) ON CONFLICT (order_id) DO UPDATE "
            "SET total_cents = excluded.total_cents, currency = excluded.currency",
            event.data["order_id"], event.data["total_cents"], event.data["currency"],
        )  # fmt: skip

    @projection.on_batch("OrderPaid")
    async def paid(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        await tx.executemany(
            "UPDATE order_rows SET paid = TRUE WHERE order_id = $1",
            [(event.data["order_id"],) for event in events],
        )

    return projection


def order_states() -> StateProjection:
    """A state projection keyed by the order id in the data."""
    projection = StateProjection(
        "order_states",
        table="order_states",
        key=lambda event: str(event.data["order_id"]),
        key_column="order_id",
        columns={"total_cents": "BIGINT", "currency": "TEXT", "paid": "BOOLEAN"},
        initial=lambda: {"total_cents": 0, "currency": "", "paid": False},
    )

    @projection.evolve("OrderPlaced")
    def placed(state: State, event: RecordedEvent) -> State:
        check_v3(event)
        return {
            **state,
            "total_cents": event.data["total_cents"],
            "currency": event.data["currency"],
        }

    @projection.evolve("OrderPaid")
    def was_paid(state: State, event: RecordedEvent) -> State:
        return {**state, "paid": True}

    return projection


def order_totals() -> LiveProjection[dict[str, int]]:
    """A live projection: total cents per currency."""
    live: LiveProjection[dict[str, int]] = LiveProjection("order_totals", dict, from_start=True)

    @live.on("OrderPlaced")
    def placed(state: dict[str, int], event: RecordedEvent) -> dict[str, int]:
        check_v3(event)
        currency = event.data["currency"]
        return {**state, currency: state.get(currency, 0) + event.data["total_cents"]}

    return live


def fold_order(state: list[str], event: RecordedEvent) -> list[str]:
    check_v3(event)
    return [*state, f"{event.type}:{event.data.get('total_cents', '-')}"]
