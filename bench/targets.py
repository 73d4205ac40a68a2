"""Issue 14's targets, the ratios measured in one run, and the row-for-row checks.

Every ratio is the library's speed over the reference's (the reference's seconds over the
library's, both on the same events), so above 1.0 the library is faster; latency and memory
ratios are "at most" targets. ``check_read_models`` compares every read model built in the
run with the state projection's, and every read with its bare counterpart.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import asyncpg

from bench.dataset import RARE_TYPE, sqlite_rows
from bench.orders_model import SUMMARY_COLUMNS, summary_rows

Result = dict[str, Any]
Rows = list[tuple[Any, ...]]
POSTGRES_TABLES = {
    "handler_equals_state": "order_summary_handler",
    "per_event_equals_state": "order_summary_per_event",
    "hand_batched_equals_state": "order_summary_hand_batched",
    "hand_grouped_equals_state": "order_summary_hand_grouped",
    "hand_written_equals_state": "order_summary_hand",
    "worker_equals_state": "order_summary_worker",
    "partitioned_equals_state": "order_summary_partitioned",
}
PROFILED = "order_summary_profiled"
SQLITE_TABLES = {
    "sqlite_state_equals_state": "order_summary",
    "sqlite_hand_written_equals_state": "order_summary_hand",
}


async def check_read_models(
    dsn: str, schema: str, sqlite: str, results: list[Result]
) -> dict[str, bool]:
    connection = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        state = sorted(await summary_rows(connection, "order_summary"))
        tables = {n: sorted(await summary_rows(connection, t)) for n, t in POSTGRES_TABLES.items()}
        naive = sorted(await summary_rows(connection, "order_summary_naive"))
        prefix = sorted(await summary_rows(connection, "order_summary_prefix"))
        rare: int = await connection.fetchval(
            "SELECT count(*) FROM events WHERE type = $1", RARE_TYPE
        )
        if await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", PROFILED):
            tables["profiled_equals_state"] = sorted(await summary_rows(connection, PROFILED))
    finally:
        await connection.close()
    checks = {name: rows == state for name, rows in tables.items()}
    for name, table in SQLITE_TABLES.items():
        checks[name] = sqlite_rows(sqlite, table, SUMMARY_COLUMNS) == state
    checks["naive_equals_state_prefix"] = naive == prefix
    checks["state_not_empty"] = len(state) > 0
    seen = next(r for r in results if r["scenario"] == "reads")["seen"]
    checks["read_all_equals_bare"] = seen["read_all"] == seen["bare"]
    checks["read_rare_equals_bare"] = seen["read_rare"] == seen["bare_rare"] and (
        seen["read_rare"][0] == rare > 0
    )
    return checks


def ratios_of(results: list[Result]) -> dict[str, float]:
    by = {r["scenario"]: r for r in results}
    reads = by["reads"]

    def faster(ours: str, reference: str) -> float:  # the reference's time over ours
        return round(float(by[reference]["seconds"]) / float(by[ours]["seconds"]), 3)

    def rate(ours: str, other: str) -> float:
        return round(float(by[ours]["events_per_s"]) / float(by[other]["events_per_s"]), 2)

    ratios = {
        "state_vs_hand_written": faster("state_coalesced", "hand_written_coalesced"),
        "read_all_vs_bare": round(reads["bare_s"] / reads["read_all_s"], 3),
        "read_rare_vs_bare": round(reads["bare_rare_s"] / reads["read_rare_s"], 3),
        "per_event_handler_vs_hand_batched": faster("handler_per_event", "hand_batched_sql"),
        "per_event_handler_vs_hand_grouped": faster("handler_per_event", "hand_grouped_sql"),
        "sqlite_state_vs_hand_written": faster("sqlite_state", "sqlite_hand_written"),
        "inline_p50_with_vs_without": by["inline_append"]["p50_with_vs_without"],
        "live_p50_ms": by["live_latency"]["p50_ms"],
        "live_p99_ms": by["live_latency"]["p99_ms"],
        "state_us_per_event": by["state_coalesced"]["us_per_event"],
        "state_peak_rss_mb": by["state_coalesced"]["peak_rss_mb"],
        "state_vs_read_limit": rate("state_coalesced", "read_limit"),
        "state_vs_naive": rate("state_coalesced", "naive_per_event"),
        "handler_vs_naive": rate("handler_batched", "naive_per_event"),
        "handler_batched_vs_per_event": faster("handler_batched", "handler_per_event"),
        "worker_vs_state": rate("state_worker", "state_coalesced"),
        "partitioned_vs_state": rate("state_worker_4_partitions", "state_coalesced"),
    }
    if "state_coalesced_5x" in by:
        big, small = by["state_coalesced_5x"], by["state_coalesced"]
        ratios["rss_5n_vs_n"] = round(big["peak_rss_mb"] / small["peak_rss_mb"], 3)
        ratios["cost_per_event_5n_vs_n"] = round(big["us_per_event"] / small["us_per_event"], 3)
    return ratios


Compare = Callable[[float, float], bool]
TARGETS: list[tuple[str, str, Compare, float]] = [
    ("state_vs_hand_written", ">=", operator.ge, 1.0),
    ("read_all_vs_bare", ">=", operator.ge, 0.7),
    ("read_rare_vs_bare", ">=", operator.ge, 0.7),
    ("per_event_handler_vs_hand_batched", ">=", operator.ge, 2.0),
    ("inline_p50_with_vs_without", "<=", operator.le, 1.5),
    ("live_p50_ms", "<", operator.lt, 3.0),
    ("live_p99_ms", "<", operator.lt, 15.0),
    ("sqlite_state_vs_hand_written", ">=", operator.ge, 1.0),
    ("rss_5n_vs_n", "<=", operator.le, 1.10),
    ("cost_per_event_5n_vs_n", "<=", operator.le, 1.15),
]


def print_tables(results: list[Result], ratios: dict[str, float]) -> None:
    print(
        "| scenario | events | seconds | events/s | µs/event | peak RSS MB | latency p50/p99 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        latency = f"{r['p50_ms']} / {r['p99_ms']}" if "p50_ms" in r else ""
        print(f"| {r['scenario']} | {r['events']:,} | {r['seconds']} | {r['events_per_s']:,} | "
              f"{r['us_per_event']} | {r['peak_rss_mb']} | {latency} |")  # fmt: skip
    print("\n| issue 14 target | target | measured | met |\n|---|---|---:|---|")
    for name, sign, compare, target in TARGETS:
        if name not in ratios:
            print(f"| {name} | {sign} {target} | not run (--scale) | |")
            continue
        met = "yes" if compare(ratios[name], target) else "no"
        print(f"| {name} | {sign} {target} | {ratios[name]} | {met} |")
    print()
