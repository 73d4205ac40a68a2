"""The suite's scenarios, each run in a child process of its own (``bench/projections.py``).

The library's side (``read_all``, the state, handler and per-event projections, a worker, 4
partitions, live latency, an inline projection) and the references it is measured against
(``bench/references.py``, ``bench/sqlite_bench.py``): every one on the same loaded data set.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import statistics
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench.dataset import RARE_TYPE
from bench.orders_model import (
    ORDER_TYPES,
    SETUP,
    PlainEvent,
    handler_projection,
    per_event_projection,
    state_projection,
    statement_for,
)
from bench.references import bare_read
from projectionist import START, Application, NewEvent, Position, Projection, create_store
from projectionist.store import EventStore

Result = dict[str, Any]


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent across exec, so every child would report at least the driver's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


async def scenario_read_limit(dsn: str, schema: str) -> Result:
    store = create_store(dsn, schema=schema)
    async with store:
        started = time.perf_counter()
        count, checkpoint = 0, START
        while True:
            batch = await store.read_all(checkpoint, limit=10_000)
            if not batch.events:
                break
            count += len(batch.events)
            checkpoint = batch.checkpoint
        seconds = time.perf_counter() - started
    return {"events": count, "seconds": seconds}


async def scenario_projection(dsn: str, schema: str, style: str) -> Result:
    projection: Projection
    if style == "state":
        projection = state_projection()
    elif style == "profiled":  # the same, under cProfile, into a table of its own
        projection = state_projection(table="order_summary_profiled")
    elif style == "handler":
        projection = handler_projection(table="order_summary_handler")
    else:  # per-event SQL, one statement at a time (the tutorial handler)
        projection = per_event_projection(table="order_summary_per_event")
    async with Application(dsn, [projection], schema=schema) as app:
        await app.setup()
        total = await app.store.count_after(START)
        started = time.perf_counter()
        await app.run_until_caught_up()
        seconds = time.perf_counter() - started
    return {"events": total, "seconds": seconds}


async def scenario_worker(dsn: str, schema: str, table: str, partitions: int) -> Result:
    """The state projection run by a Worker: leases, a lease check in every batch, and with
    partitions, one runner per partition side by side."""
    projection = state_projection(table=table, partitions=partitions)
    async with Application(dsn, [projection], schema=schema, poll_interval=0.05) as app:
        await app.setup()
        total = await app.store.count_after(START)
        head = await app.store.last_committed()
        started = time.perf_counter()
        running = asyncio.create_task(app.run(lease_seconds=30.0, heartbeat_seconds=1.0))
        await app.wait_for(projection.name, head, timeout=3600)
        seconds = time.perf_counter() - started
        app.stop()
        await running
    return {"events": total, "seconds": seconds}


async def scenario_naive(dsn: str, schema: str, events: int) -> Result:
    """The tutorial projector: one autocommit statement per event, a checkpoint per event."""
    connection = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        for sql in SETUP:
            await connection.execute(sql.format(t="order_summary_naive"))
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS naive_checkpoint (name TEXT PRIMARY KEY, position BIGINT)"
        )
        await connection.execute("INSERT INTO naive_checkpoint VALUES ('naive', 0)")
        rows = await connection.fetch(
            "SELECT position, stream_id, type, data::text FROM events "
            "ORDER BY tx_id, position LIMIT $1",
            events,
        )
        started = time.perf_counter()
        for row in rows:
            if row["type"] not in ORDER_TYPES:  # a tutorial projector still checkpoints these
                await connection.execute(
                    "UPDATE naive_checkpoint SET position = $1 WHERE name = 'naive'",
                    row["position"],
                )
                continue
            event = PlainEvent(row["stream_id"], row["type"], orjson.loads(row["data"]))
            for sql, args in statement_for(event, "order_summary_naive"):
                await connection.execute(sql.format(t="order_summary_naive"), *args)
            await connection.execute(
                "UPDATE naive_checkpoint SET position = $1 WHERE name = 'naive'", row["position"]
            )
        seconds = time.perf_counter() - started
    finally:
        await connection.close()
    # The same prefix through the state projection: the two read models must agree.
    prefix = state_projection(table="order_summary_prefix")
    async with Application(dsn, [prefix], schema=schema) as app:
        await app.setup()
        history = await app.store.read_all(START, limit=len(rows))
        async with app.read_models.transaction() as tx:
            await prefix.apply(history.events, tx)
    return {"events": len(rows), "seconds": seconds}


async def settle(dsn: str, schema: str) -> None:
    """The target is for a settled database: the bulk load and the catch-up just wrote
    hundreds of thousands of rows, so vacuum and checkpoint now rather than during the
    measurement (autovacuum and a checkpoint on the same 2 cores made the outliers)."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'VACUUM (ANALYZE) "{schema}".events')
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):  # needs pg_checkpoint
            await connection.execute("CHECKPOINT")
    finally:
        await connection.close()


async def scenario_live_latency(dsn: str, schema: str, rate: int, seconds: float) -> Result:
    """Append at a steady rate; time from each append's commit to the read model's commit."""
    projection = state_projection(table="order_summary_live", batch_size=1000)
    writer = create_store(dsn, schema=schema)
    commits: list[tuple[float, Position]] = []
    async with writer, Application(dsn, [projection], schema=schema, poll_interval=1.0) as app:
        await app.setup()
        runner = app.runner(projection.name)
        await runner.run_until_caught_up()
        await settle(dsn, schema)
        original_step = runner.step

        async def timed_step() -> bool:
            moved = await original_step()
            if moved and runner.checkpoint is not None:
                commits.append((time.perf_counter(), runner.checkpoint))
            return moved

        runner.step = timed_step  # type: ignore[method-assign]
        # The runner itself, not app.run(): a worker would make its own runner (and add
        # lease checks, which this benchmark does not measure).
        running = asyncio.create_task(runner.run())
        await asyncio.sleep(0.5)
        rng = random.Random(5)
        sent: list[tuple[float, Position]] = []
        started = time.perf_counter()
        for n in range(int(rate * seconds)):
            due = started + n / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            result = await writer.append(
                f"live-{n}",
                [NewEvent("OrderCreated", {"customer_id": f"c-{rng.randrange(100)}",
                                           "day": "2026-06-01"}, id=uuid.uuid4())],
            )  # fmt: skip
            sent.append((time.perf_counter(), result.position))
        await app.wait_for(projection.name, sent[-1][1], timeout=30)
        runner.stop()
        await running
    latencies = []
    for sent_at, position in sent:
        done_at = next(at for at, checkpoint in commits if checkpoint >= position)
        latencies.append((done_at - sent_at) * 1000)
    latencies.sort()
    return {
        "events": len(sent),
        "seconds": seconds,
        "append_rate": rate,
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 2),
        "max_ms": round(latencies[-1], 2),
    }


async def scenario_reads(dsn: str, schema: str, rounds: int = 3) -> Result:
    """``read_all`` in pages of 10k vs a bare asyncpg keyset read of the same rows, and the
    same for the rare type alone: interleaved rounds (machine noise hits both alike), the
    median of each; counts and last positions, so the driver can check they read the same."""
    store = create_store(dsn, schema=schema)
    times: dict[str, list[float]] = {"read_all": [], "bare": [], "read_rare": [], "bare_rare": []}
    seen: dict[str, Any] = {}
    connection = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    async with store:
        try:
            for _ in range(rounds):
                reads: list[tuple[str, Awaitable[Result]]] = [
                    ("read_all", _read_all(store, None)),
                    ("bare", bare_read(connection)),
                    ("read_rare", _read_all(store, [RARE_TYPE])),
                    ("bare_rare", bare_read(connection, RARE_TYPE)),
                ]
                for name, read in reads:  # each awaited in turn: nothing overlaps
                    result = await read
                    times[name].append(result["seconds"])
                    seen[name] = [result["events"], result["last"]]
        finally:
            await connection.close()
    medians = {f"{name}_s": round(statistics.median(t), 4) for name, t in times.items()}
    return {"events": seen["read_all"][0], "seconds": medians["read_all_s"], **medians,
            "seen": seen}  # fmt: skip


async def _read_all(store: EventStore, types: list[str] | None) -> Result:
    started = time.perf_counter()
    count, checkpoint, last = 0, START, [0, 0]
    while True:
        batch = await store.read_all(checkpoint, limit=10_000, types=types)
        if not batch.events:
            break
        count += len(batch.events)
        checkpoint = batch.checkpoint
        last = [batch.events[-1].position.tx, batch.events[-1].position.seq]
    return {"events": count, "seconds": time.perf_counter() - started, "last": last}


async def scenario_inline(appends: int, rounds: int = 3) -> Result:
    """``bench/inline_latency.py``'s measurement (append p50 with one inline projection vs
    without, interleaved rounds), so its ratio sits in the suite's table of targets."""
    from bench.inline_latency import main as inline_main

    started = time.perf_counter()
    lines = await inline_main(appends, rounds)
    by = {str(line["scenario"]).split(".")[1]: line for line in lines}
    return {"events": 2 * appends * rounds, "seconds": time.perf_counter() - started,
            "p50_without_ms": by["without_inline"]["p50_ms"],
            "p50_with_ms": by["with_inline"]["p50_ms"],
            "p50_with_vs_without": by["ratio"]["p50_with_vs_without"]}  # fmt: skip
