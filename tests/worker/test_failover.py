"""Three worker processes share seven units; two are SIGKILLed, a fourth joins.

The proof the production issue asks for: with appends running throughout, every read model
ends equal to a clean rebuild (counts exact: nothing lost, nothing applied twice) and, for
every unit, the lease tokens under which its events were applied never go backwards in the
order of the events: once a new owner has written, no earlier owner writes again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import asyncpg

from projectionist import Application, NewEvent
from tests.conftest import PG_DSN
from tests.worker.failover_app import OWNERSHIP_TABLE, PROJECTIONS

ROOT = Path(__file__).resolve().parents[2]
LEASE_SECONDS = 3.0
APP = "tests.worker.failover_app:app"


def start_worker(url: str, schema: str, name: str, logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / f"{name}.log").open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "projectionist.cli",
            "--log-level",
            "INFO",
            "run",
            APP,
            "--url",
            url,
            "--worker-id",
            name,
            "--lease-seconds",
            str(LEASE_SECONDS),
        ],
        cwd=ROOT,
        env={**os.environ, "PROJECTIONIST_SCHEMA": schema},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def owners(connection: asyncpg.Connection, schema: str) -> dict[str, str | None]:
    rows = await connection.fetch(
        f"SELECT unit, CASE WHEN expires_at >= extract(epoch from clock_timestamp()) "
        f'THEN owner END AS owner FROM "{schema}".projection_leases'
    )
    return {row["unit"]: row["owner"] for row in rows}


async def wait_until(condition, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await condition():
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_workers_share_fail_over_and_rebalance(pg_schema: str, tmp_path: Path) -> None:
    url = f"{PG_DSN}?schema={pg_schema}"
    app = Application(url, PROJECTIONS, poll_interval=0.2)
    units = [unit for p in PROJECTIONS for unit in p.units]
    assert len(units) == 7
    async with app:
        await app.setup()
        async with app.read_models.transaction() as tx:
            await tx.execute(OWNERSHIP_TABLE)
        connection = await asyncpg.connect(PG_DSN)
        appending = asyncio.Event()
        appended = 0

        async def append_forever() -> None:
            nonlocal appended
            n = 0
            while not appending.is_set():
                n += 1
                stream = f"account-{n % 40}"
                await app.store.append(
                    stream, [NewEvent("Moved", {"amount": n % 7 + i}) for i in range(3)]
                )
                appended += 3
                await asyncio.sleep(0.01)

        workers = {name: start_worker(url, pg_schema, name, tmp_path) for name in "abc"}
        appender = asyncio.create_task(append_forever())
        try:
            await run_scenario(workers, connection, pg_schema, units, url, tmp_path)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_tails(tmp_path)}") from exc
        finally:
            appending.set()
            await appender

        head = await app.store.last_committed()
        for projection in PROJECTIONS:
            await app.wait_for(projection.name, head, timeout=60)
        for name in ("c", "d"):
            workers[name].send_signal(signal.SIGTERM)
        for name in ("c", "d"):
            assert workers[name].wait(15) == 0, (tmp_path / f"{name}.log").read_text()
        assert set((await owners(connection, pg_schema)).values()) == {None}  # handed back

        ownership = await connection.fetch(
            f'SELECT projection, unit, tx_id, seq, owner, token FROM "{pg_schema}".ownership'
        )
        await connection.close()

        # Every event applied exactly once per projection ...
        per_projection: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for row in ownership:
            per_projection[row["projection"]].append((row["tx_id"], row["seq"]))
        for projection in PROJECTIONS:
            applied = per_projection[projection.name]
            assert len(applied) == len(set(applied)) == appended, projection.name

        # ... and no owner wrote a unit after a newer owner had: tokens never go back.
        transitions = 0
        by_unit: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for row in ownership:
            by_unit[row["unit"]].append(row)
        for unit, rows in by_unit.items():
            rows.sort(key=lambda r: (r["tx_id"], r["seq"]))
            tokens = [r["token"] for r in rows]
            assert tokens == sorted(tokens), f"{unit}: ownership overlapped"
            holders = {r["token"]: r["owner"] for r in rows}
            assert all(  # one owner per token
                len({r["owner"] for r in rows if r["token"] == t}) == 1 for t in holders
            )
            transitions += len(holders) - 1
        assert transitions >= 3  # takeovers happened while events were applied

        # Read models equal a clean rebuild.
        before = {p.name: await counts_of(app, p.name) for p in PROJECTIONS}
        for projection in PROJECTIONS:
            await app.rebuild(projection.name)
            assert await counts_of(app, projection.name) == before[projection.name]
        assert sum(int(row[1]) for row in before["tally"]) == appended  # type: ignore[call-overload]


async def run_scenario(
    workers: dict[str, subprocess.Popen[bytes]],
    connection: asyncpg.Connection,
    pg_schema: str,
    units: list[str],
    url: str,
    tmp_path: Path,
) -> None:
    """Share among a, b, c; SIGKILL a, then b; start d: each time the survivors take over."""

    async def all_owned_by(names: set[str]) -> bool:
        held = await owners(connection, pg_schema)
        return set(held) == set(units) and set(held.values()) == names

    await wait_until(lambda: all_owned_by({"a", "b", "c"}), 30, "three workers to share")
    counts = list((await owners(connection, pg_schema)).values())
    assert max(counts.count(w) for w in "abc") <= 3  # ceil(7 / 3)

    for victim, survivors in (("a", {"b", "c"}), ("b", {"c"})):
        await asyncio.sleep(1.0)
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait(10)
        took = await wait_until(lambda s=survivors: all_owned_by(s), 20, f"takeover from {victim}")
        assert took < LEASE_SECONDS * 3 + 2, f"takeover of {victim} took {took:.1f}s"

    workers["d"] = start_worker(url, pg_schema, "d", tmp_path)
    await wait_until(lambda: all_owned_by({"c", "d"}), 30, "worker d to get a share")
    await asyncio.sleep(1.0)


def log_tails(logs: Path) -> str:
    """The end of each worker's log, for a failure message."""
    return "\n".join(
        f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:])
        for log in sorted(logs.glob("*.log"))
    )


async def counts_of(app: Application, name: str) -> list[tuple[object, ...]]:
    async with app.read_models.transaction() as tx:
        return await tx.fetch(f"SELECT * FROM {name}_counts ORDER BY stream_id")
