"""The command line: real processes, real stores."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from examples.shop.history import generate_orders
from rich.console import Console

from projectionist import (
    Application,
    NewEvent,
    Position,
    ProjectionStatus,
    Severity,
    UnitState,
    create_store,
)
from projectionist.cli import status_table
from projectionist.cli.tables import SEVERITY_STYLES
from projectionist.errors import HandlerError
from projectionist.migrations import latest_version
from projectionist.runner import RunnerState
from tests.conftest import PG_DSN

ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "projectionist.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
        check=False,
    )


def test_demo_on_sqlite(tmp_path: Path) -> None:
    done = run_cli("demo", "--orders", "40", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    expected = sum(len(append.events) for append in generate_orders(40))
    assert f"Appended {expected:,} events" in done.stdout
    assert "order_summaries" in done.stdout and "order-000001 folded now" in done.stdout
    # It ends with a full-text search of the catalogue, best hit first.
    searched = done.stdout[done.stdout.index("product_search (search projection): 'chocolate'") :]
    assert searched.index("dark chocolate 85%") < searched.index("espresso beans")
    assert (tmp_path / "projectionist-demo.db").exists()
    again = run_cli("demo", "--orders", "40", cwd=tmp_path)  # starts afresh, same history
    assert again.returncode == 0, again.stderr
    assert f"Appended {expected:,} events" in again.stdout


async def test_schema_apply_on_postgres(pg_schema: str) -> None:
    done = run_cli(
        "schema", "apply", env={"PROJECTIONIST_URL": PG_DSN, "PROJECTIONIST_SCHEMA": pg_schema}
    )
    assert done.returncode == 0, done.stderr
    assert f"schema version {latest_version('postgres')} is applied" in done.stdout
    connection = await asyncpg.connect(PG_DSN)
    try:
        assert await connection.fetchval(
            f'SELECT max(version) FROM "{pg_schema}".projectionist_migrations '
            "WHERE track = 'events'"
        ) == latest_version("postgres")
    finally:
        await connection.close()
    assert run_cli("schema", "apply", "--url", PG_DSN, "--schema", pg_schema).returncode == 0


def test_errors_are_one_line_and_exit_1() -> None:
    done = run_cli("schema", "apply", "--url", "postgresql://bob:secret@127.0.0.1:1/db")
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot connect to postgresql://bob:***@127.0.0.1:1/db")
    assert "secret" not in done.stderr and "Traceback" not in done.stderr
    unknown = run_cli("schema", "apply", "--url", "oracle://x")
    assert unknown.returncode == 1 and "unknown store URL" in unknown.stderr
    bad_schema = run_cli("schema", "apply", "--url", PG_DSN, "--schema", "Robert'); DROP")
    assert bad_schema.returncode == 1 and "invalid schema name" in bad_schema.stderr


def test_unknown_log_level_is_refused() -> None:
    done = run_cli("--log-level", "LOUD", "schema", "apply", "--url", "memory://")
    assert done.returncode == 2 and "unknown log level" in done.stderr


def _shop_history(url: str, orders: int) -> int:
    async def append() -> int:
        async with create_store(url) as store:
            await store.apply_schema()
            count = 0
            for item in generate_orders(orders):
                count += len((await store.append(item.stream_id, item.events)).events)
            return count

    return asyncio.run(append())


def _statuses(env: dict[str, str]) -> dict[str, dict[str, object]]:
    done = run_cli("status", "--json", env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return {line["name"]: line for line in map(json.loads, done.stdout.splitlines())}


def test_run_status_rebuild_an_application(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    events = _shop_history(url, 30)
    env = {"PROJECTIONIST_URL": url, "PROJECTIONIST_APP": "examples.shop.app:app"}
    before = _statuses(env)
    assert before["order_summaries"]["state"] == "not set up"

    worker = subprocess.Popen(
        [sys.executable, "-m", "projectionist.cli", "run"],
        env={**os.environ, **env},
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses = _statuses(env)
            if all(s["lag"] == 0 and s["state"] != "not set up" for s in statuses.values()):
                break
            time.sleep(0.2)
        assert all(s["lag"] == 0 for s in statuses.values()), statuses
        assert statuses["order_summaries"]["position"] == statuses["order_summaries"]["head"]
        assert statuses["product_catalogue"]["kind"] == "inline"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0, worker.stderr.read() if worker.stderr else ""
    finally:
        worker.kill()

    table = run_cli("status", env=env, cwd=ROOT)
    assert table.returncode == 0 and "order_summaries" in table.stdout and "stopped" in table.stdout
    rebuilt = run_cli("rebuild", "daily_sales", "--yes", env=env, cwd=ROOT)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"rebuilt daily_sales from {events:,} events" in rebuilt.stdout
    assert _statuses(env)["daily_sales"]["lag"] == 0

    same = run_cli("verify", "daily_sales", env=env, cwd=ROOT)
    assert same.returncode == 0, same.stderr + same.stdout
    assert "daily_sales: the live read model equals a rebuild (daily_sales: " in same.stdout
    with sqlite3.connect(tmp_path / "shop.db") as edit:  # a manual edit: drift
        edit.execute("UPDATE daily_sales SET revenue_cents = revenue_cents + 1 WHERE rowid = 1")
    # Integer cents: a tolerance for floats does not hide it.
    drifted = run_cli("verify", "daily_sales", "--float-tolerance", "0.5", env=env, cwd=ROOT)
    assert drifted.returncode == 1, drifted.stderr + drifted.stdout
    assert "daily_sales: 0 row(s) only in the live table, 0 only in the rebuild, 1 differ" in (
        drifted.stdout
    )
    assert drifted.stdout.count("revenue_cents: live ") == 1
    bad = run_cli(
        "verify", "daily_sales", env={**env, "PROJECTIONIST_FLOAT_TOLERANCE": "nan"}, cwd=ROOT
    )
    assert bad.returncode == 1 and "float_tolerance" in bad.stderr, bad.stderr
    unknown = run_cli("verify", "nope", env=env, cwd=ROOT)
    assert unknown.returncode == 1 and "no projection named 'nope'" in unknown.stderr


def test_application_errors_are_one_line(tmp_path: Path) -> None:
    env = {"PROJECTIONIST_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    for app, message in [
        ("nowhere", "must look like 'module:attribute'"),
        ("no_such_module_here:app", "cannot import application module"),
        ("examples.shop.projections:ALL", "not a projectionist.Application"),
    ]:
        done = run_cli("status", "--app", app, env=env, cwd=ROOT)
        assert done.returncode == 1 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    unknown = run_cli("rebuild", "nope", "--app", "examples.shop.app:app", env=env, cwd=ROOT)
    assert unknown.returncode == 1 and "no projection named 'nope'" in unknown.stderr


def test_the_status_table_shows_text_as_written_coloured_by_severity() -> None:
    head = Position(0, 9)
    rows = [
        ProjectionStatus(
            name="orders[bold]",
            kind="async",
            version=2,
            state=UnitState.NEEDS_REBUILD,
            detail="read model is version 1",
            position=head,
            head=head,
            lag=0,
            events_processed=9,
            updated_at=None,
            last_error="KeyError: [red]'sku'[/red]",
        ),
        ProjectionStatus(
            name="daily",
            kind="async",
            version=1,
            state=UnitState.LIVE,
            position=head,
            head=head,
            lag=0,
            events_processed=9,
            updated_at=None,
        ),
    ]
    console = Console(record=True, width=250, color_system="truecolor", force_terminal=True)
    console.print(status_table(rows))
    text = console.export_text()
    assert "orders[bold]" in text and "KeyError: [red]'sku'[/red]" in text  # not markup
    assert "needs rebuild (read model is version 1)" in text
    styles = {
        segment.text.strip(): str(segment.style)
        for segment in console.render(status_table(rows))
        if segment.text.strip() in ("needs rebuild (read model is version 1)", "live")
    }
    assert styles == {
        "needs rebuild (read model is version 1)": SEVERITY_STYLES[Severity.BAD],
        "live": SEVERITY_STYLES[Severity.OK],
    }


def test_every_state_has_a_severity_and_worker_words_parse_without_error() -> None:
    assert {state.severity for state in UnitState} <= set(Severity)
    for runner_state in RunnerState:  # what a worker or a runner reports
        assert UnitState.parse(runner_state.value) == (UnitState(runner_state.value), None)
    assert UnitState.parse("starting") == (UnitState.STARTING, None)
    assert UnitState.parse("needs rebuild") == (UnitState.NEEDS_REBUILD, None)
    assert UnitState.parse("dozing") == (UnitState.UNKNOWN, "dozing")  # a newer worker's
    assert UnitState.parse(None) == (UnitState.UNKNOWN, None)


# -- rich markup in data, and the status table's width -----------------------------------------

MARKUP_APP = '''
"""An application whose events and errors hold rich markup."""

from projectionist import Application, Projection, ReadModelTransaction, RecordedEvent


def failing(name: str, on_error: str) -> Projection:
    projection = Projection(name, tables=[f"{name}_seen"], on_error=on_error)

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(f"CREATE TABLE IF NOT EXISTS {name}_seen (n BIGINT)")

    @projection.on("Said[/]")
    async def said(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        raise ValueError(event.data["text"])

    return projection


PROJECTIONS = [failing("lenient", "skip"), failing("strict", "stop")]
app = Application("memory://", PROJECTIONS)
'''
MARKUP_ERROR = "ValueError: [/] closes [bold]nothing"


def _markup_application(tmp_path: Path) -> dict[str, str]:
    """A store where ``lenient`` dead-lettered and ``strict`` faulted on an event whose
    stream, type and error text hold "[/]"; the environment that runs the CLI on it."""
    (tmp_path / "markup_app.py").write_text(MARKUP_APP)
    spec = importlib.util.spec_from_file_location("markup_app", tmp_path / "markup_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url = f"sqlite:///{tmp_path / 'markup.db'}"

    async def fault() -> None:
        async with Application(url, module.PROJECTIONS) as application:
            await application.setup()
            await application.store.append(
                "[/]stream", [NewEvent("Said[/]", {"text": "[/] closes [bold]nothing"})]
            )
            with pytest.raises(HandlerError):
                await application.run_until_caught_up()

    asyncio.run(fault())
    return {"PROJECTIONIST_URL": url, "PROJECTIONIST_APP": "markup_app:app"}


def test_commands_print_markup_in_names_and_errors_as_text(tmp_path: Path) -> None:
    env = _markup_application(tmp_path)
    for columns in ("80", "200"):
        shown = run_cli("status", env={**env, "COLUMNS": columns}, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        [strict] = [line for line in shown.stdout.splitlines() if "│ strict " in line]
        assert "faulted" in strict and "ValueError: [/]" in strict, shown.stdout
    assert MARKUP_ERROR in shown.stdout  # 200 columns: the whole error
    letters = run_cli("dead-letters", "list", env=env, cwd=tmp_path)
    assert letters.returncode == 0, letters.stderr
    [row] = [line for line in letters.stdout.splitlines() if "│ lenient " in line]
    assert "[/]stream v1" in row and "Said[/]" in row and MARKUP_ERROR in row
    for command, name in (("rebuild", "[/]"), ("restart", "[bold]x"), ("restart", "[/]")):
        done = run_cli(command, name, env=env, cwd=tmp_path)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert f"no projection named {name!r}" in done.stderr
    restarted = run_cli("restart", "strict", env=env, cwd=tmp_path)
    assert restarted.returncode == 0 and "strict: cleared 1 fault(s)" in restarted.stdout


def test_status_in_a_narrow_terminal_keeps_what_matters_and_json_keeps_everything(
    tmp_path: Path,
) -> None:
    env = _markup_application(tmp_path)
    everything = ("name", "kind", "version", "state", "owner", "position", "head", "lag")
    for columns in (80, 100, 120, 200):
        shown = run_cli("status", env={**env, "COLUMNS": str(columns)}, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert max(len(line.rstrip()) for line in lines) <= columns, shown.stdout
        [header] = [line for line in lines if line.startswith("┃")]
        headers = [cell.strip() for cell in header.strip("┃").split("┃")]
        assert headers[0] == "name" and {"state", "lag", "last error"} <= set(headers)
        if columns == 200:
            assert headers == [
                *everything, "lag s", "ev/s", "dead", "parked", "updated", "last error"
            ]  # fmt: skip
        rows = {line.split("│")[1].strip(): line for line in lines if line.startswith("│ ")}
        assert set(rows) == {"lenient", "strict"}  # names never cut
        assert "faulted" in rows["strict"] and "ValueError: [/]" in rows["strict"]
        as_json = run_cli("status", "--json", env={**env, "COLUMNS": str(columns)}, cwd=tmp_path)
        by_name = {row["name"]: row for row in map(json.loads, as_json.stdout.splitlines())}
        strict = by_name["strict"]
        assert set(strict) >= {*everything, "lag_seconds", "events_per_second", "dead_letters"}
        assert strict["fault"]["error"] == MARKUP_ERROR
        assert MARKUP_ERROR in strict["fault"]["traceback"]


def test_the_status_table_drops_the_least_needed_columns_first() -> None:
    head = Position(12, 34567)
    row = ProjectionStatus(
        name="order_summaries",
        kind="async",
        version=2,
        state=UnitState.NEEDS_REBUILD,
        detail="read model is version 1",
        position=head,
        head=head,
        lag=1234,
        events_processed=9,
        updated_at=None,
        owner="host-a:1234:abcdef",
        last_error="KeyError: 'sku' " * 8,
    )
    headers = {}
    for width in (80, 100, 120, 200):
        console = Console(record=True, width=width, color_system="truecolor", force_terminal=True)
        console.print(status_table([row]))
        lines = console.export_text().splitlines()
        assert max(map(len, lines)) <= width
        headers[width] = [cell.strip() for cell in lines[2].strip("┃").split("┃")]
        assert "needs rebuild" in lines[4] and "KeyError: 'sku'" in lines[4]
        assert "…" in lines[4]  # the error is shortened, on one line
    assert headers[80] == ["name", "state", "lag", "dead", "last error"]
    assert "owner" in headers[120] and "head" not in headers[120]
    assert len(headers[200]) == 14
