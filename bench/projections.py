"""The projection benchmark suite: one deterministic order history, every scenario, one run.

    make bench EVENTS=1000000      # or: python bench/projections.py --events 200000

Prints a table and one JSON line per scenario (scenario, events, seconds, events_per_s,
peak_rss_mb, and latency fields where they apply). Each projection scenario runs in its own
process, so its peak RSS is its own. Every read model built is compared row for row with
the state projection's: speed never comes from a wrong answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.shop.history import generate_orders

from bench.orders_model import (
    ORDER_TYPES,
    SETUP,
    handler_projection,
    state_projection,
    statement_for,
    summary_rows,
)
from projectionist import START, Application, NewEvent, Position, create_store
from projectionist.backends.postgres import Connection, PostgresEventStore

DSN = os.environ.get("PROJECTIONIST_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
Result = dict[str, Any]


# -- the data set ------------------------------------------------------------------------------


async def load_history(schema: str, events: int) -> int:
    """Write a deterministic shop history of about ``events`` events with COPY."""
    store = create_store(DSN, schema=schema)
    assert isinstance(store, PostgresEventStore)
    async with store:
        await store.apply_schema()
        versions: dict[str, int] = {}
        rows: list[tuple[Any, ...]] = []
        written = 0
        async with store.pool.acquire() as connection:
            for append in generate_orders(orders=max(events // 5, 1), seed=11):
                for event in append.events:
                    version = versions[append.stream_id] = versions.get(append.stream_id, 0) + 1
                    rows.append((event.id, append.stream_id, version, event.type,
                                 orjson.dumps(event.data).decode(),
                                 orjson.dumps(event.metadata).decode()))  # fmt: skip
                if len(rows) >= 50_000 or written + len(rows) >= events:
                    written += await _copy(connection, schema, rows)
                    rows = []
                    if written >= events:
                        break
            if rows:
                written += await _copy(connection, schema, rows)
            await connection.execute(
                f'INSERT INTO "{schema}".streams (stream_id, version) '
                f'SELECT stream_id, max(version) FROM "{schema}".events GROUP BY stream_id'
            )
            await connection.execute(f'ANALYZE "{schema}".events')
        return written


async def _copy(connection: Connection, schema: str, rows: list[tuple[Any, ...]]) -> int:
    async with connection.transaction():  # one transaction id per chunk, like a batch import
        await connection.copy_records_to_table(
            "events",
            schema_name=schema,
            records=rows,
            columns=["id", "stream_id", "version", "type", "data", "metadata"],
        )
    return len(rows)


# -- scenarios, each in a child process ---------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent across exec, so every child would report at least the driver's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


async def scenario_read_limit(schema: str) -> Result:
    store = create_store(DSN, schema=schema)
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


async def scenario_projection(schema: str, style: str) -> Result:
    projection = (
        state_projection()
        if style == "state"
        else handler_projection(table="order_summary_handler")
    )
    async with Application(DSN, [projection], schema=schema) as app:
        await app.setup()
        total = await app.store.count_after(START)
        started = time.perf_counter()
        await app.run_until_caught_up()
        seconds = time.perf_counter() - started
    return {"events": total, "seconds": seconds}


async def scenario_worker(schema: str, table: str, partitions: int) -> Result:
    """The state projection run by a Worker: leases, a lease check in every batch, and with
    partitions, one runner per partition side by side."""
    projection = state_projection(table=table, partitions=partitions)
    async with Application(DSN, [projection], schema=schema, poll_interval=0.05) as app:
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


async def scenario_naive(schema: str, events: int) -> Result:
    """The tutorial projector: one autocommit statement per event, a checkpoint per event."""
    connection = await asyncpg.connect(DSN, server_settings={"search_path": schema})
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
            event = _Event(row["stream_id"], row["type"], orjson.loads(row["data"]))
            for sql, args in statement_for(event, "order_summary_naive"):  # type: ignore[arg-type]
                await connection.execute(sql.format(t="order_summary_naive"), *args)
            await connection.execute(
                "UPDATE naive_checkpoint SET position = $1 WHERE name = 'naive'", row["position"]
            )
        seconds = time.perf_counter() - started
    finally:
        await connection.close()
    # The same prefix through the state projection: the two read models must agree.
    prefix = state_projection(table="order_summary_prefix")
    async with Application(DSN, [prefix], schema=schema) as app:
        await app.setup()
        history = await app.store.read_all(START, limit=len(rows))
        async with app.read_models.transaction() as tx:
            await prefix.apply(history.events, tx)
    return {"events": len(rows), "seconds": seconds}


class _Event:
    def __init__(self, stream_id: str, type_: str, data: dict[str, Any]) -> None:
        self.stream_id, self.type, self.data = stream_id, type_, data


async def scenario_live_latency(schema: str, rate: int, seconds: float) -> Result:
    """Append at a steady rate; time from each append's commit to the read model's commit."""
    projection = state_projection(table="order_summary_live", batch_size=1000)
    writer = create_store(DSN, schema=schema)
    commits: list[tuple[float, Position]] = []
    async with writer, Application(DSN, [projection], schema=schema, poll_interval=1.0) as app:
        await app.setup()
        runner = app.runner(projection.name)
        await runner.run_until_caught_up()
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


async def run_scenario(name: str, schema: str, options: argparse.Namespace) -> Result:
    if name == "read_limit":
        result = await scenario_read_limit(schema)
    elif name == "state_coalesced":
        result = await scenario_projection(schema, "state")
    elif name == "handler_batched":
        result = await scenario_projection(schema, "handler")
    elif name == "state_worker":
        result = await scenario_worker(schema, "order_summary_worker", 1)
    elif name == "state_worker_4_partitions":
        result = await scenario_worker(schema, "order_summary_partitioned", 4)
    elif name == "naive_per_event":
        result = await scenario_naive(schema, options.naive_events)
    elif name == "live_latency":
        result = await scenario_live_latency(schema, options.live_rate, options.live_seconds)
    else:
        raise SystemExit(f"unknown scenario {name}")
    result["events_per_s"] = round(result["events"] / result["seconds"])
    result["seconds"] = round(result["seconds"], 2)
    result["peak_rss_mb"] = peak_rss_mb()
    return {"scenario": name, **result}


# -- the driver ------------------------------------------------------------------------------

SCENARIOS = [
    "read_limit",
    "state_coalesced",
    "handler_batched",
    "state_worker",
    "state_worker_4_partitions",
    "naive_per_event",
    "live_latency",
]


def child(name: str, schema: str, options: argparse.Namespace) -> Result:
    command = [sys.executable, __file__, "--child", name, "--schema", schema,
               "--naive-events", str(options.naive_events), "--live-rate", str(options.live_rate),
               "--live-seconds", str(options.live_seconds)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"scenario {name} failed:\n{done.stderr}")
    result: Result = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def compare_read_models(schema: str) -> dict[str, bool]:
    connection = await asyncpg.connect(DSN, server_settings={"search_path": schema})
    try:
        state = await summary_rows(connection, "order_summary")
        handler = await summary_rows(connection, "order_summary_handler")
        worker = await summary_rows(connection, "order_summary_worker")
        partitioned = await summary_rows(connection, "order_summary_partitioned")
        naive = await summary_rows(connection, "order_summary_naive")
        prefix = await summary_rows(connection, "order_summary_prefix")
    finally:
        await connection.close()
    return {
        "handler_equals_state": handler == state,
        "worker_equals_state": worker == state,
        "partitioned_equals_state": partitioned == state,
        "naive_equals_state_prefix": naive == prefix,
    }


async def drop(schema: str) -> None:
    connection = await asyncpg.connect(DSN)
    await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await connection.close()


def main(options: argparse.Namespace) -> None:
    schema = f"bench_projections_{os.getpid()}"
    results: list[Result] = []
    try:
        started = time.perf_counter()
        events = asyncio.run(load_history(schema, options.events))
        print(f"loaded {events:,} events in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        for name in SCENARIOS:
            results.append(child(name, schema, options))
            print(f"  {name}: {results[-1]}", file=sys.stderr)
        checks = asyncio.run(compare_read_models(schema))
    finally:
        asyncio.run(drop(schema))
    rate = {r["scenario"]: r["events_per_s"] for r in results}
    ratios = {
        "scenario": "ratios",
        "state_vs_read_limit": round(rate["state_coalesced"] / rate["read_limit"], 2),
        "state_vs_naive": round(rate["state_coalesced"] / rate["naive_per_event"], 1),
        "handler_vs_naive": round(rate["handler_batched"] / rate["naive_per_event"], 1),
        "worker_vs_state": round(rate["state_worker"] / rate["state_coalesced"], 2),
        "partitioned_vs_state": round(
            rate["state_worker_4_partitions"] / rate["state_coalesced"], 2
        ),
        **checks,
    }
    print("| scenario | events | seconds | events/s | peak RSS MB | latency p50/p99/max ms |")
    print("|---|---:|---:|---:|---:|---|")
    for r in results:
        latency = f"{r['p50_ms']} / {r['p99_ms']} / {r['max_ms']}" if "p50_ms" in r else ""
        print(f"| {r['scenario']} | {r['events']:,} | {r['seconds']} | {r['events_per_s']:,} | "
              f"{r['peak_rss_mb']} | {latency} |")  # fmt: skip
    print()
    for line in [*results, ratios]:
        print(json.dumps(line))
    if not all(checks.values()):
        raise SystemExit(f"read models differ: {checks}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--naive-events",
        type=int,
        default=20_000,
        help="the naive projector runs on this prefix (it is that slow)",
    )
    parser.add_argument("--live-rate", type=int, default=200, help="appends/s for live_latency")
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(asyncio.run(run_scenario(options.child, options.schema, options))))
    else:
        main(options)
