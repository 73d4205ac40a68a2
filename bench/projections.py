"""The projection benchmark suite: one deterministic order history, every scenario, one run.

    make bench EVENTS=200000        # or: python bench/projections.py --events 200000 [--scale]

Every scenario runs in its own process (its peak RSS is its own) on the same loaded data
set (``bench/dataset.py``): the library's scenarios and the hand-written references of issue
14 (``bench/references.py``, ``bench/sqlite_bench.py``). Every read model built is compared
row for row with the state projection's, and the run fails if any differs: speed never comes
from a wrong answer. It prints a table of scenarios, a table of issue 14's targets next to
the ratios measured in this run, and one JSON line per scenario plus a "ratios" line.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import scenarios as s
from bench.dataset import load_postgres, load_sqlite
from bench.references import hand_batched_sql, hand_written_coalesced
from bench.sqlite_bench import sqlite_hand_written, sqlite_state
from bench.targets import check_read_models, print_tables, ratios_of

DSN = os.environ.get("PROJECTIONIST_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
Result = dict[str, Any]

# In this order: each reference next to the library scenario it is compared with.
SCENARIOS = [
    "reads",
    "read_limit",
    "state_coalesced",
    "hand_written_coalesced",
    "handler_batched",
    "handler_per_event",
    "hand_batched_sql",
    "hand_grouped_sql",
    "state_worker",
    "state_worker_4_partitions",
    "naive_per_event",
    "sqlite_state",
    "sqlite_hand_written",
    "live_latency",
    "inline_append",
]


async def run_scenario(name: str, options: argparse.Namespace) -> Result:
    schema, sqlite = options.schema, options.sqlite
    chosen: dict[str, Any] = {
        "reads": lambda: s.scenario_reads(DSN, schema),
        "read_limit": lambda: s.scenario_read_limit(DSN, schema),
        "state_coalesced": lambda: s.scenario_projection(DSN, schema, "state"),
        "state_profiled": lambda: s.scenario_projection(DSN, schema, "profiled"),
        "hand_written_coalesced": lambda: hand_written_coalesced(DSN, schema, "order_summary_hand"),
        "handler_batched": lambda: s.scenario_projection(DSN, schema, "handler"),
        "handler_per_event": lambda: s.scenario_projection(DSN, schema, "per_event"),
        "hand_batched_sql": lambda: hand_batched_sql(DSN, schema, "order_summary_hand_batched"),
        "hand_grouped_sql": lambda: hand_batched_sql(
            DSN, schema, "order_summary_hand_grouped", grouped=True
        ),
        "state_worker": lambda: s.scenario_worker(DSN, schema, "order_summary_worker", 1),
        "state_worker_4_partitions": lambda: s.scenario_worker(
            DSN, schema, "order_summary_partitioned", 4
        ),
        "naive_per_event": lambda: s.scenario_naive(DSN, schema, options.naive_events),
        "sqlite_state": lambda: sqlite_state(sqlite),
        "sqlite_hand_written": lambda: asyncio.to_thread(sqlite_hand_written, sqlite),
        "live_latency": lambda: s.scenario_live_latency(
            DSN, schema, options.live_rate, options.live_seconds
        ),
        "inline_append": lambda: s.scenario_inline(options.inline_appends),
    }
    if name not in chosen:
        raise SystemExit(f"unknown scenario {name}")
    result: Result = await chosen[name]()
    result["events_per_s"] = round(result["events"] / result["seconds"])
    result["us_per_event"] = round(result["seconds"] / max(result["events"], 1) * 1e6, 2)
    result["seconds"] = round(result["seconds"], 3)
    result["peak_rss_mb"] = s.peak_rss_mb()
    return {"scenario": name, **result}


def child(name: str, options: argparse.Namespace, schema: str, label: str | None = None) -> Result:
    command = [sys.executable, __file__, "--child", name, "--schema", schema,
               "--sqlite", options.sqlite, "--naive-events", str(options.naive_events),
               "--live-rate", str(options.live_rate), "--live-seconds", str(options.live_seconds),
               "--inline-appends", str(options.inline_appends)]  # fmt: skip
    if name == "state_profiled":
        command += ["--profile", options.profile]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"scenario {name} failed:\n{done.stderr}")
    result: Result = json.loads(done.stdout.strip().splitlines()[-1])
    if label:
        result["scenario"] = label
    print(f"  {result['scenario']}: {result}", file=sys.stderr, flush=True)
    return result


def load(schema: str, events: int, sqlite: str | None) -> None:
    started = time.perf_counter()
    loaded = asyncio.run(load_postgres(DSN, schema, events))
    if sqlite:
        asyncio.run(load_sqlite(sqlite, events))
    took = time.perf_counter() - started
    print(f"loaded {loaded:,} events into {schema} in {took:.1f}s", file=sys.stderr, flush=True)


async def drop(*schemas: str) -> None:
    connection = await asyncpg.connect(DSN)
    for schema in schemas:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await connection.close()


def main(options: argparse.Namespace) -> None:
    schema = f"bench_projections_{os.getpid()}"
    scaled = f"{schema}_x5"
    directory = tempfile.mkdtemp(prefix="bench_sqlite_")
    options.sqlite = str(Path(directory) / "store.db")
    results: list[Result] = []
    load_before = os.getloadavg()  # the machine's load, noted with the ratios (issue 14)
    try:
        load(schema, options.events, options.sqlite)
        names = list(SCENARIOS)
        if options.profile:  # a run of its own (cProfile slows what it watches), before the
            # live scenario appends events the other read models have not seen
            names.insert(names.index("live_latency"), "state_profiled")
        results += [child(name, options, schema) for name in names]
        checks = asyncio.run(check_read_models(DSN, schema, options.sqlite, results))
        if options.scale:
            load(scaled, options.events * 5, None)
            results.append(child("state_coalesced", options, scaled, "state_coalesced_5x"))
    finally:
        asyncio.run(drop(schema, scaled))
        shutil.rmtree(directory, ignore_errors=True)
    ratios = ratios_of(results)
    print_tables(results, ratios)
    if options.profile:
        print("state_profiled: the state projection under cProfile (in no ratio)")
        stats = pstats.Stats(options.profile)
        stats.sort_stats("cumulative").print_stats(15)
        stats.sort_stats("tottime").print_stats(15)  # where the time is spent, not passed on
    machine = {"cpus": os.cpu_count(), "loadavg_before": load_before,
               "loadavg_after": os.getloadavg()}  # fmt: skip
    print(f"machine: {machine}")
    for line in [*results, {"scenario": "ratios", **ratios, **checks, **machine}]:
        print(json.dumps(line))
    if not all(checks.values()):
        raise SystemExit(f"read models differ: {checks}")


def run_child(options: argparse.Namespace) -> None:
    if options.profile:  # the scenario under cProfile; the stats go to the file named
        profiler = cProfile.Profile()
        result = profiler.runcall(asyncio.run, run_scenario(options.child, options))
        profiler.dump_stats(options.profile)
    else:
        result = asyncio.run(run_scenario(options.child, options))
    print(json.dumps(result))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="N, the history length")
    parser.add_argument(
        "--scale", action="store_true", help="also run the state projection on 5N events"
    )
    parser.add_argument(
        "--naive-events",
        type=int,
        default=20_000,
        help="the naive projector runs on this prefix (it is that slow)",
    )
    parser.add_argument("--live-rate", type=int, default=100, help="appends/s for live_latency")
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--inline-appends", type=int, default=1000, help="per round and kind")
    parser.add_argument(
        "--profile", help="also run the state projection under cProfile, stats to this file"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    parser.add_argument("--sqlite", default="", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    parsed = parse()
    if parsed.child:
        run_child(parsed)
    else:
        main(parsed)
