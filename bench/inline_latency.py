"""What an inline projection costs an append: latency with and without one, in one run.

Each append is one event in its own transaction, one appender at a time. The inline
projection upserts one row per event in the append's transaction. Run: ``make bench-inline``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from projectionist import Application, NewEvent, Projection, ReadModelTransaction, RecordedEvent
from projectionist.backends.postgres import PostgresEventStore

DSN = os.environ.get("PROJECTIONIST_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def tally() -> Projection:
    projection = Projection("tally", kind="inline", tables=["tally"])

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS tally (stream_id TEXT PRIMARY KEY, n BIGINT NOT NULL)"
        )

    @projection.on("Tick")
    async def tick(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        await tx.execute(
            "INSERT INTO tally VALUES ($1, $2) ON CONFLICT (stream_id) DO UPDATE SET n = $2",
            event.stream_id,
            event.data["n"],
        )

    return projection


async def latencies(app: Application, appends: int) -> list[float]:
    result = []
    for n in range(appends):
        started = time.perf_counter()
        await app.store.append(f"s-{n % 100}", [NewEvent("Tick", {"n": n})])
        result.append((time.perf_counter() - started) * 1000)
    return result


async def main(appends: int, rounds: int) -> list[dict[str, object]]:
    schemas = [f"bench_inline_{os.getpid()}_{kind}" for kind in ("plain", "inline")]
    plain = Application(DSN, [], schema=schemas[0])
    inline = Application(DSN, [tally()], schema=schemas[1])
    samples: dict[str, list[float]] = {"without_inline": [], "with_inline": []}
    async with plain, inline:
        await plain.setup()
        await inline.setup()
        for _ in range(rounds):  # interleaved, so machine noise hits both alike
            samples["without_inline"] += await latencies(plain, appends)
            samples["with_inline"] += await latencies(inline, appends)
        for app, schema in ((plain, schemas[0]), (inline, schemas[1])):
            assert isinstance(app.store, PostgresEventStore)
            async with app.store.pool.acquire() as connection:
                await connection.execute(f'DROP SCHEMA "{schema}" CASCADE')
    results: list[dict[str, object]] = []
    for name, values in samples.items():
        values.sort()
        results.append(
            {
                "scenario": f"inline_append.{name}",
                "appends": len(values),
                "appends_per_s": round(len(values) / (sum(values) / 1000)),
                "p50_ms": round(statistics.median(values), 3),
                "p99_ms": round(values[int(len(values) * 0.99)], 3),
            }
        )
    ratio = float(results[1]["p50_ms"]) / float(results[0]["p50_ms"])  # type: ignore[arg-type]
    results.append({"scenario": "inline_append.ratio", "p50_with_vs_without": round(ratio, 2)})
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--appends", type=int, default=1000, help="appends per round and kind")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = asyncio.run(main(args.appends, args.rounds))
    print("| scenario | appends/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for line in results[:-1]:
        name = str(line["scenario"]).split(".")[1]
        print(f"| {name} | {line['appends_per_s']:,} | {line['p50_ms']} | {line['p99_ms']} |")
    print(f"\ninline projection cost: {results[-1]['p50_with_vs_without']}x the p50 latency\n")
    for line in results:
        print(json.dumps(line))
