"""What a typed payload costs per event: dict vs msgspec Struct vs dataclass vs pydantic.

Three measurements on the same deterministic events (an order with 1 to 4 items, plus a
field no payload type declares), each round interleaving the flavors so that machine noise
hits them alike, the best round kept:

- ``decode``: the bare loop turning each RecordedEvent into what the handler receives
  (``Event[T]`` for a typed flavor; for dict, the event itself);
- ``handler``: a projection's ``apply`` with one ``on_batch`` handler writing every event
  with one ``executemany`` upsert (the fastest handler path, so the decoding shows most);
- ``state``: a state projection's ``apply`` (load, fold, one set-based write per batch).

Both ``apply`` runs go through a memory backend's read model (in-memory SQLite), under the
runner's ``fewer_collections``. Times are this process's CPU time (its threads included),
so that other processes on a busy machine count less. Each line gives ns/event, the ratio
to dict and the ns added over dict. Run: ``make bench-typed``.
``--flavors dict`` measures the untyped path alone (e.g. against another checkout's ``src``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import pydantic

from projectionist import (
    Application,
    Position,
    Projection,
    ReadModelTransaction,
    RecordedEvent,
    State,
    StateProjection,
)
from projectionist.allocation import fewer_collections
from projectionist.events import new_recorded_event

if TYPE_CHECKING:  # imported where used, so that --flavors dict runs on an older checkout
    from projectionist import Event

Result = dict[str, Any]


class MsgspecItem(msgspec.Struct):
    sku: str
    qty: int
    price: float


class MsgspecPlaced(msgspec.Struct):
    order_id: str
    customer: str
    items: list[MsgspecItem]


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


class PydanticItem(pydantic.BaseModel):
    sku: str
    qty: int
    price: float


class PydanticPlaced(pydantic.BaseModel):
    order_id: str
    customer: str
    items: list[PydanticItem]


class ItemLike(Protocol):
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


TYPES: dict[str, type[PlacedLike] | None] = {
    "dict": None,
    "msgspec": MsgspecPlaced,
    "dataclass": DataclassPlaced,
    "pydantic": PydanticPlaced,
}


def events(count: int) -> list[RecordedEvent]:
    """``count`` OrderPlaced events over ``count // 4`` orders, the same every run."""
    at = datetime(2024, 1, 1, tzinfo=UTC)
    result = []
    for n in range(count):
        items = [
            {"sku": f"sku-{(n + i) % 97}", "qty": 1 + (n * i) % 5, "price": 0.5 + (n + i) % 40}
            for i in range(1 + n % 4)
        ]
        data: dict[str, Any] = {"order_id": f"order-{n % (count // 4 or 1)}"}
        data |= {"customer": f"c-{n % 31}"}
        data |= {"items": items, "channel": "web"}
        result.append(
            new_recorded_event(
                (None, data["order_id"], None, "OrderPlaced", data, {}, at, Position(1, n))
            )
        )
    return result


# -- the projections ---------------------------------------------------------------------------

UPSERT = (
    "INSERT INTO {table} VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO UPDATE SET "
    "customer = excluded.customer, items = excluded.items, total = excluded.total"
)


def handler_projection(flavor: str) -> Projection:
    table = f"orders_{flavor}"
    projection = Projection(f"handler_{flavor}", tables=[table])

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (order_id TEXT PRIMARY KEY, customer TEXT, "
            "items BIGINT, total DOUBLE PRECISION)"
        )

    payload = TYPES[flavor]
    if payload is None:

        @projection.on_batch("OrderPlaced")
        async def untyped(batch: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
            rows = []
            for event in batch:
                data, items = event.data, event.data["items"]
                total = sum(item["qty"] * item["price"] for item in items)
                rows.append((data["order_id"], data["customer"], len(items), total))
            await tx.executemany(UPSERT.format(table=table), rows)

    else:

        @projection.on_batch("OrderPlaced", payload=payload)
        async def typed(batch: Sequence[Event[PlacedLike]], tx: ReadModelTransaction) -> None:
            rows = []
            for event in batch:
                order, items = event.data, event.data.items
                total = sum(item.qty * item.price for item in items)
                rows.append((order.order_id, order.customer, len(items), total))
            await tx.executemany(UPSERT.format(table=table), rows)

    return projection


def initial() -> State:
    return {"customer": "", "items": 0, "total": 0.0}


def state_projection(flavor: str) -> StateProjection:
    name = f"state_{flavor}"
    columns = {"customer": "TEXT", "items": "BIGINT", "total": "DOUBLE PRECISION"}
    projection = StateProjection(
        name, table=name, key="stream_id", key_column="order_id", columns=columns, initial=initial
    )
    payload = TYPES[flavor]
    if payload is None:

        @projection.evolve("OrderPlaced")
        def untyped(state: State, event: RecordedEvent) -> State:
            items = event.data["items"]
            total = sum(item["qty"] * item["price"] for item in items)
            return {"customer": event.data["customer"], "items": len(items), "total": total}

    else:

        @projection.evolve("OrderPlaced", payload=payload)
        def typed(state: State, event: Event[PlacedLike]) -> State:
            items = event.data.items
            total = sum(item.qty * item.price for item in items)
            return {"customer": event.data.customer, "items": len(items), "total": total}

    return projection


# -- the measurements --------------------------------------------------------------------------


def decode_seconds(flavor: str, history: list[RecordedEvent]) -> float:
    payload = TYPES[flavor]
    decode: Callable[[RecordedEvent], object] = _same
    if payload is not None:
        from projectionist.payloads import typed_events

        decode = typed_events(payload, "bench")
    with fewer_collections():
        started = time.process_time()
        for event in history:
            decode(event)
        return time.process_time() - started


def _same(event: RecordedEvent) -> RecordedEvent:
    return event


async def apply_seconds(
    app: Application, projection: Projection, history: list[RecordedEvent], batch: int
) -> float:
    elapsed = 0.0
    for start in range(0, len(history), batch):
        async with app.read_models.transaction() as tx:
            with fewer_collections():
                started = time.process_time()
                await projection.apply(history[start : start + batch], tx)
                elapsed += time.process_time() - started
    return elapsed


async def main(count: int, rounds: int, flavors: list[str], batch: int) -> list[Result]:
    history = events(count)
    handlers = {flavor: handler_projection(flavor) for flavor in flavors}
    states = {flavor: state_projection(flavor) for flavor in flavors}
    best: dict[tuple[str, str], float] = {}

    def keep(kind: str, flavor: str, seconds: float) -> None:
        best[kind, flavor] = min(seconds, best.get((kind, flavor), float("inf")))

    async with Application("memory://", [*handlers.values(), *states.values()]) as app:
        await app.setup()
        for _ in range(rounds):
            for flavor in flavors:
                keep("decode", flavor, decode_seconds(flavor, history))
                keep("handler", flavor, await apply_seconds(app, handlers[flavor], history, batch))
                keep("state", flavor, await apply_seconds(app, states[flavor], history, batch))
        tables = [f"orders_{flavor}" for flavor in flavors] + [f"state_{f}" for f in flavors]
        same = await _same_rows(app, tables)
    return [*_lines(best, count, flavors), {"scenario": "typed_payloads.same_rows", "ok": same}]


async def _same_rows(app: Application, tables: list[str]) -> bool:
    """Every flavor built the same rows (the bench measures equal work)."""
    async with app.read_models.transaction() as tx:
        contents = [
            sorted(await tx.fetch(f"SELECT order_id, customer, items, total FROM {table}"))
            for table in tables
        ]
    return all(rows == contents[0] for rows in contents) and len(contents[0]) > 0


def _lines(best: dict[tuple[str, str], float], count: int, flavors: list[str]) -> list[Result]:
    results = []
    for (kind, flavor), seconds in best.items():
        ns = seconds / count * 1e9
        line: Result = {"scenario": f"typed_payloads.{kind}.{flavor}", "events": count}
        line["ns_per_event"] = round(ns)
        if "dict" in flavors:
            dict_ns = best[kind, "dict"] / count * 1e9
            line["vs_dict"] = round(ns / dict_ns, 2)
            line["added_ns_per_event"] = round(ns - dict_ns)
        results.append(line)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000, help="events per apply")
    parser.add_argument("--flavors", nargs="+", choices=list(TYPES), default=list(TYPES))
    args = parser.parse_args()
    results = asyncio.run(main(args.events, args.rounds, args.flavors, args.batch))
    print("| measure | flavor | ns/event | vs dict | added ns/event |\n|---|---|---:|---:|---:|")
    for line in results[:-1]:
        _, kind, flavor = str(line["scenario"]).split(".")
        ratio, added = line.get("vs_dict", "-"), line.get("added_ns_per_event", "-")
        print(f"| {kind} | {flavor} | {line['ns_per_event']:,} | {ratio} | {added} |")
    print(f"\nevery flavor built the same rows: {results[-1]['ok']}\n")
    for line in results:
        print(json.dumps(line))
