"""Append throughput: 1 vs 8 concurrent appenders vs 8 behind a table lock, in one run.

Each append is one event in its own transaction. The serialized variant is the design this
project rejects: the same append behind ``LOCK TABLE events IN EXCLUSIVE MODE`` (what a
"no gaps by serializing writers" store does). Run: ``make bench-append`` or
``python bench/append_concurrency.py --events 4000``.

It also counts the transaction ids that 1,000 sequential appends consume (each append takes
one; each NOTIFY that wakes other processes' readers is a transaction and takes one too):
with ``notify_interval=0`` (one NOTIFY per append, as before wake-ups were coalesced) and
with the default interval. Run it on an otherwise idle cluster: ids are cluster-wide.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable

from projectionist import NewEvent, create_store
from projectionist.backends.postgres import PostgresEventStore

DSN = os.environ.get("PROJECTIONIST_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


async def run_appenders(
    appenders: int, events: int, append: Callable[[str, int], Awaitable[None]]
) -> float:
    """Run ``appenders`` concurrent tasks (each on its own pooled connection) over ``events``."""
    per_appender = events // appenders
    started = time.perf_counter()

    async def appender(index: int) -> None:
        for n in range(per_appender):
            await append(f"bench-{appenders}-{index}-{n % 50}", n)

    await asyncio.gather(*(appender(i) for i in range(appenders)))
    return time.perf_counter() - started


async def ids_per_thousand_appends(schema: str, notify_interval: float) -> int:
    """Transaction ids consumed by 1,000 sequential one-event appends (and their NOTIFYs)."""
    store = PostgresEventStore(DSN, schema=schema, notify_interval=notify_interval)
    async with store, store.pool.acquire() as connection:
        sql = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        before = await connection.fetchval(sql)
        for n in range(1000):
            await store.append(f"ids-{n % 10}", [NewEvent("Tick", {"n": n})])
        await asyncio.sleep(max(0.2, notify_interval * 5))  # the last NOTIFY goes out
        consumed: int = await connection.fetchval(sql) - before
    return consumed


async def main(events: int, rounds: int) -> list[dict[str, object]]:
    schema = f"bench_append_{os.getpid()}"
    store = create_store(DSN, schema=schema)
    assert isinstance(store, PostgresEventStore)
    async with store:
        await store.apply_schema()
        q = f'"{schema}"'

        async def plain(stream: str, n: int) -> None:
            await store.append(stream, [NewEvent("Tick", {"n": n})])

        async def locked(stream: str, n: int) -> None:
            async with store.transaction() as tx:
                await tx.connection.execute(f"LOCK TABLE {q}.events IN EXCLUSIVE MODE")
                await tx.append(stream, [NewEvent("Tick", {"n": n})])

        scenarios: list[tuple[str, int, Callable[[str, int], Awaitable[None]]]] = [
            ("1_appender", 1, plain),
            ("8_appenders", 8, plain),
            ("8_appenders_table_lock", 8, locked),
        ]
        best: dict[str, float] = {}
        # Interleave rounds so drift of a noisy machine hits every scenario alike; keep the best.
        for _ in range(rounds):
            for name, appenders, append in scenarios:
                seconds = await run_appenders(appenders, events, append)
                best[name] = max(best.get(name, 0.0), events / seconds)
        ids = {
            "one_notify_per_append": await ids_per_thousand_appends(schema, 0.0),
            "coalesced_notify": await ids_per_thousand_appends(schema, store.notify_interval),
        }
        async with store.pool.acquire() as connection:
            await connection.execute(f"DROP SCHEMA {q} CASCADE")
    results: list[dict[str, object]] = [
        {"scenario": f"append_concurrency.{name}", "events": events, "events_per_s": round(rate)}
        for name, rate in best.items()
    ]
    results.append(
        {
            "scenario": "append_concurrency.ratios",
            "eight_vs_one": round(best["8_appenders"] / best["1_appender"], 2),
            "eight_vs_table_lock": round(best["8_appenders"] / best["8_appenders_table_lock"], 2),
        }
    )
    results.append({"scenario": "append_concurrency.ids_per_1000_appends", **ids})
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=8000, help="events per scenario and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = asyncio.run(main(args.events, args.rounds))
    print("| scenario | events/s |\n|---|---:|")
    for line in results[:-2]:
        print(f"| {str(line['scenario']).split('.')[1]} | {line['events_per_s']:,} |")
    ratios, ids = results[-2], results[-1]
    print(
        f"\n8 appenders vs 1: {ratios['eight_vs_one']}x (target >= 1.5x); "
        f"8 appenders vs 8 behind a table lock: {ratios['eight_vs_table_lock']}x (target >= 1.5x)"
    )
    print(
        f"transaction ids per 1,000 sequential appends: {ids['one_notify_per_append']} with one "
        f"NOTIFY per append, {ids['coalesced_notify']} with coalesced NOTIFYs\n"
    )
    for line in results:
        print(json.dumps(line))
    sys.stdout.flush()
