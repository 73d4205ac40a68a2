"""The benchmark suite's own checks: its data set, and one whole run on a small history.

    PYTHONPATH=src pytest bench/test_bench.py -q      (needs PostgreSQL; fails, never skips)

The run must finish, print every issue 14 ratio in its "ratios" line, and find every read
model equal to the state projection's (the suite itself exits non-zero when one differs).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.shop.history import generate_orders

from bench.dataset import RARE_TYPE, history_rows
from bench.targets import TARGETS

DSN = os.environ.get("PROJECTIONIST_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
SUITE = Path(__file__).with_name("projections.py")


def test_the_rare_type_is_one_in_a_hundred_and_leaves_the_shop_history_as_it_was() -> None:
    rows = list(history_rows(20_000))
    types = Counter(row[3] for row in rows)
    assert types[RARE_TYPE] * 100 == len(rows) - len(rows) % 100
    shop = [row for row in rows if row[3] != RARE_TYPE]
    generated = [
        (str(event.id), append.stream_id, event.type)
        for append in generate_orders(orders=4000, seed=11)
        for event in append.events
    ][: len(shop)]
    assert [(row[0], row[1], row[3]) for row in shop] == generated
    assert list(history_rows(20_000)) == rows  # deterministic


def _postgres_reachable() -> None:
    async def connect() -> None:
        connection = await asyncpg.connect(DSN, timeout=5)
        await connection.close()

    try:
        asyncio.run(connect())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(
            f"the benchmark needs PostgreSQL at PROJECTIONIST_BENCH_DSN ({exc}); start it "
            "with 'make services'",
            pytrace=False,
        )


def test_a_small_run_measures_every_ratio_and_every_read_model_agrees() -> None:
    _postgres_reachable()
    command = [sys.executable, str(SUITE), "--events", "3000", "--naive-events", "500",
               "--live-seconds", "1", "--inline-appends", "50", "--scale"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    ratios = next(line for line in lines if line["scenario"] == "ratios")
    for name, _, _, _ in TARGETS:
        assert isinstance(ratios[name], int | float) and ratios[name] > 0, name
    checks = {name: value for name, value in ratios.items() if isinstance(value, bool)}
    assert len(checks) >= 12 and all(checks.values()), checks
    reads = next(line for line in lines if line["scenario"] == "reads")
    assert reads["seen"]["read_rare"][0] == reads["events"] // 100
    assert "| issue 14 target | target | measured | met |" in done.stdout
