"""Operating an application over another system's events, as real processes: the CLI
(status, run, dead letters, faults, restart, verify, rebuild, health) and the dashboard over
a PostgreSQL table with no id or version column, read models on PostgreSQL and SQLite.

Events of such a source carry ``id`` and ``version`` None: dead letters and faults keep
them as None (the operations tables store stand-ins that never leave them), and the
commands print the stream without a version."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from projectionist import Application, Projection, ReadModelTransaction, RecordedEvent, SchemaError
from projectionist.backends.postgres import PostgresTableSource
from projectionist.dashboard import Dashboard
from projectionist.testing import assert_idempotent
from tests.cli_operations_app import numbered
from tests.conftest import PG_DSN, _drop_schema, new_schema_name, require_postgres
from tests.dashboard.conftest import http_get
from tests.sources.foreign_cli_app import TABLE
from tests.test_cli import ROOT

APP = "tests.sources.foreign_cli_app:app"
EVENTS = 30
BROKEN = 7  # the event both projections fail on until it is "fixed"


def projections() -> list[Any]:
    return [numbered("lenient", "skip"), numbered("strict", "stop")]


async def write_posted(schema: str, count: int) -> None:
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(
            f'CREATE TABLE "{schema}".{TABLE} (id BIGSERIAL PRIMARY KEY, stream TEXT NOT NULL, '
            "type TEXT NOT NULL, data JSONB NOT NULL, "
            "recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        await connection.executemany(
            f'INSERT INTO "{schema}".{TABLE} (stream, type, data) VALUES ($1, $2, $3)',
            [(f"acct-{n % 3}", "Posted", orjson.dumps({"n": n}).decode()) for n in range(count)],
        )
    finally:
        await connection.close()


def foreign_app(schema: str, read_models: str) -> Application:
    source = PostgresTableSource(
        PG_DSN, TABLE, schema=schema, strategy="commit_order_promised", poll_interval=0.05
    )
    return Application(source=source, read_models=read_models, projections=projections())


@pytest.fixture(params=["postgres", "sqlite"])
async def setting(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """The events table in a schema of its own; the read models in another (or a file)."""
    await require_postgres()
    events, models = new_schema_name(), new_schema_name()
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(f'CREATE SCHEMA "{events}"')
    finally:
        await connection.close()
    await write_posted(events, EVENTS)
    read_models = (
        f"{PG_DSN}?schema={models}"
        if request.param == "postgres"
        else f"sqlite:///{tmp_path / 'read_models.db'}"
    )
    yield {"FOREIGN_SCHEMA": events, "FOREIGN_READ_MODELS": read_models}
    await _drop_schema(events)
    await _drop_schema(models)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "projectionist.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "PROJECTIONIST_APP": APP, **env},
        cwd=ROOT,
        check=False,
    )


def statuses(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    done = cli(env, "status", "--json")
    assert done.returncode == 0, done.stderr
    return {line["name"]: line for line in map(json.loads, done.stdout.splitlines())}


async def set_broken(app: Application, broken: bool) -> None:
    async with app.read_models.transaction() as tx:
        if broken:
            await tx.execute("INSERT INTO broken VALUES ($1)", BROKEN)
        else:
            await tx.execute("DELETE FROM broken WHERE n = $1", BROKEN)


async def seen(app: Application, name: str) -> list[int]:
    async with app.read_models.transaction() as tx:
        return [int(row[0]) for row in await tx.fetch(f"SELECT n FROM {name}_seen ORDER BY n")]


def run_worker_until(env: dict[str, str], settled: Any) -> None:
    """``projectionist run`` as a process, until ``settled(statuses)``; then SIGTERM, exit 0."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "projectionist.cli", "run"],
        env={**os.environ, "PROJECTIONIST_APP": APP, **env},
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not settled(found := statuses(env)):
            assert time.monotonic() < deadline, found
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.stderr.read() if worker.stderr else ""
    finally:
        worker.kill()
        worker.wait()


async def test_the_cli_operates_an_application_over_another_source(
    setting: dict[str, str],
) -> None:
    env = setting
    refused = await asyncio.to_thread(cli, env, "status")
    assert refused.returncode == 1
    assert "no projectionist tables in the read models' database" in refused.stderr
    assert "run --create-schema" in refused.stderr and "schema apply" not in refused.stderr
    not_run = await asyncio.to_thread(cli, env, "run")
    assert not_run.returncode == 1 and "no projectionist tables" in not_run.stderr
    overridden = await asyncio.to_thread(cli, env, "status", "--url", "sqlite:///x.db")
    assert overridden.returncode == 1 and "cannot replace it" in overridden.stderr

    app = foreign_app(env["FOREIGN_SCHEMA"], env["FOREIGN_READ_MODELS"])
    async with app:
        await app.setup()
        await set_broken(app, True)

        def settled(found: dict[str, dict[str, Any]]) -> bool:
            return bool(found["lenient"]["lag"] == 0 and found["strict"]["state"] == "faulted")

        await asyncio.to_thread(run_worker_until, env, settled)
        assert await seen(app, "lenient") == [n for n in range(EVENTS) if n != BROKEN]
        assert await seen(app, "strict") == list(range(BROKEN))

        listed = await asyncio.to_thread(cli, env, "dead-letters", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [letter] = map(json.loads, listed.stdout.splitlines())
        assert (letter["stream_id"], letter["stream_version"], letter["event_id"]) == (
            f"acct-{BROKEN % 3}", None, None,
        )  # fmt: skip
        assert letter["position"] == f"0/{BROKEN + 1}"
        table = await asyncio.to_thread(cli, env, "dead-letters", "list")
        [row] = [line for line in table.stdout.splitlines() if f"acct-{BROKEN % 3}" in line]
        assert f"acct-{BROKEN % 3} v" not in row and "None" not in row, row
        faults = await asyncio.to_thread(cli, env, "faults", "show")
        assert faults.returncode == 0, faults.stderr
        assert f"stream acct-{BROKEN % 3}, position 0/{BROKEN + 1}" in faults.stdout

        await set_broken(app, False)
        retried = await asyncio.to_thread(cli, env, "dead-letters", "retry", str(letter["id"]))
        assert retried.returncode == 0, retried.stderr + retried.stdout
        restarted = await asyncio.to_thread(cli, env, "restart", "strict")
        assert restarted.returncode == 0, restarted.stderr

        def caught_up(found: dict[str, dict[str, Any]]) -> bool:
            return all(s["lag"] == 0 and s["state"] != "faulted" for s in found.values())

        await asyncio.to_thread(run_worker_until, env, caught_up)
        assert await seen(app, "lenient") == await seen(app, "strict") == list(range(EVENTS))

    same = await asyncio.to_thread(cli, env, "verify", "strict")
    assert same.returncode == 0, same.stderr + same.stdout
    assert "strict: the live read model equals a rebuild (strict_seen: 30 rows)" in same.stdout
    rebuilt = await asyncio.to_thread(cli, env, "rebuild", "lenient", "--yes")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"rebuilt lenient from {EVENTS} events" in rebuilt.stdout
    final = await asyncio.to_thread(statuses, env)
    assert {s["position"] for s in final.values()} == {s["head"] for s in final.values()}
    assert {s["head"] for s in final.values()} == {f"0/{EVENTS}"}


async def test_the_dashboard_shows_an_application_over_another_source(
    setting: dict[str, str],
) -> None:
    app = foreign_app(setting["FOREIGN_SCHEMA"], setting["FOREIGN_READ_MODELS"])
    async with app:
        await app.setup()
        await app.runner("lenient").run_until_caught_up()
        async with Dashboard(app, interval=0.1).serve("127.0.0.1", 0) as url:
            status, _, body = await http_get(url + "/api/status")
            assert status == 200
            rows = {row["key"]: row for row in json.loads(body)["projections"]}
            assert (rows["lenient"]["lag"], rows["strict"]["lag"]) == (0, EVENTS)
            assert rows["lenient"]["position"] == rows["lenient"]["head"] == f"0/{EVENTS}"
            _, _, metrics = await http_get(url + "/metrics")
            assert 'projectionist_lag_events{partition="",projection="strict"} 30.0' in metrics


async def test_a_read_models_database_without_tables_is_refused_by_setup_checks(
    setting: dict[str, str],
) -> None:
    async with foreign_app(setting["FOREIGN_SCHEMA"], setting["FOREIGN_READ_MODELS"]) as app:
        with pytest.raises(SchemaError):
            await app.read_models.checkpoints()


def counters(name: str, idempotent: bool) -> Projection:
    """Events per account: set from the event (safe to replay) or counted up (not safe)."""
    projection = Projection(name, tables=[name])

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(f"CREATE TABLE IF NOT EXISTS {name} (acct TEXT PRIMARY KEY, n BIGINT)")

    @projection.on("Posted")
    async def posted(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        update = "excluded.n" if idempotent else f"{name}.n + 1"
        await tx.execute(
            f"INSERT INTO {name} (acct, n) VALUES ($1, $2) "
            f"ON CONFLICT (acct) DO UPDATE SET n = {update}",
            *(event.stream_id, event.data["n"] if idempotent else 1),
        )

    return projection


async def test_the_idempotency_kit_reads_any_source(setting: dict[str, str]) -> None:
    source = PostgresTableSource(
        PG_DSN, TABLE, schema=setting["FOREIGN_SCHEMA"], strategy="commit_order_promised"
    )
    query = "SELECT acct, n FROM {} ORDER BY acct"
    async with source:
        rows = await assert_idempotent(
            counters("latest", True), source, query.format("latest"),
            url=setting["FOREIGN_READ_MODELS"],
        )  # fmt: skip
        assert [tuple(row) for row in rows] == [("acct-0", 27), ("acct-1", 28), ("acct-2", 29)]
        with pytest.raises(AssertionError, match="'counted' is not idempotent"):
            await assert_idempotent(counters("counted", False), source, query.format("counted"))
