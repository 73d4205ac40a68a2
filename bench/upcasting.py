"""What upcasting costs per event: none registered, registered but not applicable, and a
v1 -> v3 chain (with a rename) applied to every event.

Two measures, on deterministic data:
- ``apply``: the step every consumer runs on a batch (``Upcasters.apply``), alone;
- ``runner``: a whole catch-up of a projection with a do-nothing batch handler over the
  memory store, so the step's cost is seen against reading and applying batches.

Prints a table and one JSON object per line (ns/event, and the ratio against no
upcasters). Run: ``make bench-upcasting``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from projectionist import NewEvent, Projection, ReadModelTransaction, RecordedEvent
from projectionist.backends.memory import MemoryEventStore
from projectionist.events import JsonObject, Position
from projectionist.runner import ProjectionRunner
from projectionist.upcasting import NO_UPCASTERS, SCHEMA_VERSION, Upcasters

TYPES = frozenset({"OrderPlaced"})


def chain() -> Upcasters:
    registry = Upcasters()

    @registry.register("OrderCreated", from_version=1)
    def add_currency(data: JsonObject) -> JsonObject:
        return {**data, "currency": "EUR"}

    @registry.register("OrderCreated", from_version=2, to_type="OrderPlaced")
    def rename(data: JsonObject) -> JsonObject:
        return {"order_id": data["id"], "total_cents": data["amount"] * 100, "currency": "EUR"}

    return registry


def other_types() -> Upcasters:
    """Upcasters of a type the projection does not read."""
    registry = Upcasters()
    registry.register("CustomerRegistered", from_version=1)(lambda data: data)
    return registry


def order(n: int, shape: int) -> tuple[str, JsonObject, JsonObject]:
    """(type, data, metadata) of order ``n``'s first event in ``shape`` 1 or 3."""
    if shape == 1:
        return "OrderCreated", {"id": f"order-{n}", "amount": n % 90 + 10}, {}
    data = {"order_id": f"order-{n}", "total_cents": (n % 90 + 10) * 100, "currency": "EUR"}
    return "OrderPlaced", data, {SCHEMA_VERSION: 3}


def recorded(count: int, shape: int) -> list[RecordedEvent]:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    return [
        RecordedEvent(
            uuid.UUID(int=n + 1), f"order-{n}", 1, *order(n, shape), now, Position(0, n + 1)
        )
        for n in range(count)
    ]


# (name, registry, stored shape)
CASES: list[tuple[str, Callable[[], Upcasters], int]] = [
    ("none registered", lambda: NO_UPCASTERS, 3),
    ("registered, other types", other_types, 3),
    ("registered, events already v3", chain, 3),
    ("v1 -> v3 chain applied", chain, 1),
]


def measure_apply(events: list[RecordedEvent], registry: Upcasters, rounds: int) -> float:
    """ns per event of ``registry.apply`` over batches of 1000 (best of ``rounds``)."""
    batches = [events[i : i + 1000] for i in range(0, len(events), 1000)]
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for batch in batches:
            registry.apply(batch, "bench", TYPES)
        best = min(best, (time.perf_counter_ns() - started) / len(events))
    return best


def sink() -> Projection:
    projection = Projection("sink", batch_size=1000)

    @projection.on_batch("OrderPlaced")
    async def ignore(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        pass

    return projection


async def measure_runner(count: int, registry: Upcasters, shape: int, rounds: int) -> float:
    """ns per event of a whole catch-up over the memory store (best of ``rounds``)."""
    async with MemoryEventStore() as store:
        await store.apply_schema()
        for start in range(0, count, 1000):
            await store.append(
                f"orders-{start}",
                [NewEvent(*order(n, shape)) for n in range(start, min(start + 1000, count))],
            )
        store.use_upcasters(registry)
        best = float("inf")
        for _ in range(rounds):
            runner = ProjectionRunner(store, store.read_models(), sink())
            async with store.read_models().transaction() as tx:
                await tx.delete_checkpoint("sink")
            started = time.perf_counter_ns()
            await runner.run_until_caught_up()
            best = min(best, (time.perf_counter_ns() - started) / count)
        return best


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    lines = []
    for name, make, shape in CASES:
        events = recorded(args.events, shape)
        lines.append(
            {
                "case": name,
                "events": args.events,
                "apply_ns_per_event": round(measure_apply(events, make(), args.rounds), 1),
                "runner_ns_per_event": round(
                    await measure_runner(args.events, make(), shape, args.rounds), 1
                ),
            }
        )
    base_apply, base_runner = lines[0]["apply_ns_per_event"], lines[0]["runner_ns_per_event"]
    print("| case | apply ns/event | runner ns/event | runner vs none |\n|---|---:|---:|---:|")
    for line in lines:
        line["runner_vs_none"] = round(float(line["runner_ns_per_event"]) / float(base_runner), 3)
        line["apply_extra_ns_vs_none"] = round(
            float(line["apply_ns_per_event"]) - float(base_apply), 1
        )
        print(
            f"| {line['case']} | {line['apply_ns_per_event']} | {line['runner_ns_per_event']} "
            f"| {line['runner_vs_none']}x |"
        )
    print()
    for line in lines:
        print(json.dumps(line))


if __name__ == "__main__":
    asyncio.run(main())
