"""The benchmark's read model, built three ways that must agree row for row.

``order_summary``: one row per order with its customer, day, status, item count and total in
cents (integers, so every way of summing gives the same answer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import asyncpg

from projectionist import Projection, ReadModelTransaction, RecordedEvent
from projectionist.state import Evolved, State, StateProjection

STATUS = {
    "OrderShipped": "shipped",
    "OrderCompleted": "completed",
    "OrderCancelled": "cancelled",
    "OrderRefunded": "refunded",
}
ORDER_TYPES = ["OrderCreated", "ItemAdded", "ItemRemoved", *STATUS]
SUMMARY_COLUMNS = "order_id, customer_id, day, status, items, total_cents"


class OrderEvent(Protocol):
    """What the handler statements read of an event (a RecordedEvent, or a reference's row)."""

    @property
    def stream_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def data(self) -> Mapping[str, Any]: ...


class PlainEvent:
    """A reference's event: the three fields it reads, nothing decoded that it does not read."""

    __slots__ = ("data", "stream_id", "type")

    def __init__(self, stream_id: str, type_: str, data: dict[str, Any]) -> None:
        self.stream_id, self.type, self.data = stream_id, type_, data


def cents(event: OrderEvent) -> int:
    return int(event.data["quantity"]) * round(float(event.data["unit_price"]) * 100)


# -- ours, declarative: folded per batch, written set-based ------------------------------------


def state_projection(
    table: str = "order_summary", batch_size: int = 10_000, partitions: int = 1
) -> StateProjection:
    projection = StateProjection(
        f"{table}_state",
        table=table,
        partitions=partitions,
        key_column="order_id",
        columns={
            "customer_id": "TEXT",
            "day": "TEXT",
            "status": "TEXT",
            "items": "BIGINT",
            "total_cents": "BIGINT",
            "lines": "JSON",
        },
        initial=lambda: {"customer_id": "", "day": "", "status": "open", "items": 0,
                         "total_cents": 0, "lines": {}},
        batch_size=batch_size,
    )  # fmt: skip

    @projection.evolve("OrderCreated")
    def created(state: State, event: RecordedEvent) -> Evolved:
        return {**state, "customer_id": event.data["customer_id"], "day": event.data["day"]}

    @projection.evolve("ItemAdded", "ItemRemoved")
    def lines(state: State, event: RecordedEvent) -> Evolved:
        current = dict(state["lines"])
        if event.type == "ItemAdded":
            current[event.data["sku"]] = [event.data["quantity"], cents(event)]
        else:
            current.pop(event.data["sku"], None)
        return {
            **state,
            "lines": current,
            "items": sum(q for q, _ in current.values()),
            "total_cents": sum(c for _, c in current.values()),
        }

    @projection.evolve(*STATUS)
    def status(state: State, event: RecordedEvent) -> Evolved:
        return {**state, "status": STATUS[event.type]}

    return projection


# -- hand-written: the same evolve logic on plain dicts (the references' fold) ---------------


def initial_plain() -> dict[str, Any]:
    return {"customer_id": "", "day": "", "status": "open", "items": 0, "total_cents": 0,
            "lines": {}}  # fmt: skip


def fold_plain(state: dict[str, Any], type_: str, data: dict[str, Any]) -> None:
    """``state_projection``'s evolve functions as a hand-written projector writes them: the
    decoded ``data`` only, the state changed in place (it is the fold's own)."""
    if type_ == "OrderCreated":
        state["customer_id"], state["day"] = data["customer_id"], data["day"]
    elif type_ == "ItemAdded" or type_ == "ItemRemoved":
        lines = state["lines"]
        if type_ == "ItemAdded":
            lines[data["sku"]] = [
                data["quantity"],
                int(data["quantity"]) * round(float(data["unit_price"]) * 100),
            ]
        else:
            lines.pop(data["sku"], None)
        state["items"] = sum(q for q, _ in lines.values())
        state["total_cents"] = sum(c for _, c in lines.values())
    else:
        state["status"] = STATUS[type_]


# -- ours, handler style: batch handlers with executemany -------------------------------------


SETUP = [
    "CREATE TABLE IF NOT EXISTS {t} (order_id TEXT PRIMARY KEY, customer_id TEXT, day TEXT, "
    "status TEXT, items BIGINT NOT NULL DEFAULT 0, total_cents BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS {t}_lines (order_id TEXT NOT NULL, sku TEXT NOT NULL, "
    "quantity BIGINT NOT NULL, cents BIGINT NOT NULL, PRIMARY KEY (order_id, sku))",
]
CREATED = (
    "INSERT INTO {t} (order_id, customer_id, day, status) VALUES ($1, $2, $3, 'open') "
    "ON CONFLICT (order_id) DO UPDATE SET customer_id = excluded.customer_id, day = excluded.day"
)
ADDED = (
    "INSERT INTO {t}_lines VALUES ($1, $2, $3, $4) ON CONFLICT (order_id, sku) "
    "DO UPDATE SET quantity = excluded.quantity, cents = excluded.cents"
)
REMOVED = "DELETE FROM {t}_lines WHERE order_id = $1 AND sku = $2"
TOTALS = (
    "UPDATE {t} SET items = (SELECT coalesce(sum(quantity), 0) FROM {t}_lines l "
    "WHERE l.order_id = $1), total_cents = (SELECT coalesce(sum(cents), 0) FROM {t}_lines l "
    "WHERE l.order_id = $1) WHERE order_id = $1"
)
STATUS_SQL = "UPDATE {t} SET status = $2 WHERE order_id = $1"


def statement_for(event: OrderEvent, table: str) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements a tutorial handler runs for one event."""
    order = event.stream_id
    if event.type == "OrderCreated":
        return [(CREATED, (order, event.data["customer_id"], event.data["day"]))]
    if event.type == "ItemAdded":
        return [
            (ADDED, (order, event.data["sku"], event.data["quantity"], cents(event))),
            (TOTALS, (order,)),
        ]
    if event.type == "ItemRemoved":
        return [(REMOVED, (order, event.data["sku"])), (TOTALS, (order,))]
    return [(STATUS_SQL, (order, STATUS[event.type]))]


def handler_projection(table: str = "order_summary", batch_size: int = 1000) -> Projection:
    projection = Projection(f"{table}_handler", tables=[table, f"{table}_lines"],
                            batch_size=batch_size)  # fmt: skip

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        for sql in SETUP:
            await tx.execute(sql.format(t=table))

    @projection.on_batch(*ORDER_TYPES)
    async def apply(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        # Fold the batch in memory (the last write per key wins), then one set-based
        # statement per kind of write, and one recompute of the touched orders' totals.
        created: dict[str, tuple[str, str, str]] = {}
        lines: dict[tuple[str, str], tuple[int, int] | None] = {}
        statuses: dict[str, str] = {}
        for event in events:
            order = event.stream_id
            if event.type == "OrderCreated":
                created[order] = (order, event.data["customer_id"], event.data["day"])
            elif event.type == "ItemAdded":
                lines[order, event.data["sku"]] = (event.data["quantity"], cents(event))
            elif event.type == "ItemRemoved":
                lines[order, event.data["sku"]] = None
            else:
                statuses[order] = STATUS[event.type]
        await tx.executemany(CREATED.format(t=table), list(created.values()))
        await tx.executemany(
            ADDED.format(t=table),
            [(o, sku, *line) for (o, sku), line in lines.items() if line is not None],
        )
        await tx.executemany(
            REMOVED.format(t=table), [key for key, line in lines.items() if line is None]
        )
        await tx.executemany(STATUS_SQL.format(t=table), list(statuses.items()))
        touched = sorted({order for order, _ in lines})
        await tx.execute(
            f"UPDATE {table} s SET items = l.items, total_cents = l.total FROM ("
            f"SELECT o.id, coalesce(sum(x.quantity), 0) AS items, "
            f"coalesce(sum(x.cents), 0) AS total FROM unnest($1::text[]) AS o(id) "
            f"LEFT JOIN {table}_lines x ON x.order_id = o.id GROUP BY o.id) l "
            "WHERE s.order_id = l.id",
            touched,
        )

    return projection


def per_event_projection(table: str, batch_size: int = 1000) -> Projection:
    """The tutorial handler: each event's statements (``statement_for``), queued one at a
    time (``tx.queue``: the library sends runs of one statement as one ``executemany``)."""
    projection = Projection(f"{table}_per_event", tables=[table, f"{table}_lines"],
                            batch_size=batch_size)  # fmt: skip

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        for sql in SETUP:
            await tx.execute(sql.format(t=table))

    @projection.on(*ORDER_TYPES)
    async def apply(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        for sql, args in statement_for(event, table):
            tx.queue(sql.format(t=table), *args)

    return projection


async def summary_rows(connection: asyncpg.Connection, table: str) -> list[tuple[Any, ...]]:
    rows = await connection.fetch(f"SELECT {SUMMARY_COLUMNS} FROM {table} ORDER BY order_id")
    return [tuple(row) for row in rows]
