"""The command line: real processes, real stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
from examples.shop.history import generate_orders

from tests.conftest import PG_DSN


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
    assert (tmp_path / "projectionist-demo.db").exists()
    again = run_cli("demo", "--orders", "40", cwd=tmp_path)  # starts afresh, same history
    assert again.returncode == 0, again.stderr
    assert f"Appended {expected:,} events" in again.stdout


async def test_schema_apply_on_postgres(pg_schema: str) -> None:
    done = run_cli(
        "schema", "apply", env={"PROJECTIONIST_URL": PG_DSN, "PROJECTIONIST_SCHEMA": pg_schema}
    )
    assert done.returncode == 0, done.stderr
    assert "schema version 1 is applied" in done.stdout
    connection = await asyncpg.connect(PG_DSN)
    try:
        assert (
            await connection.fetchval(f'SELECT max(version) FROM "{pg_schema}".schema_migrations')
            == 1
        )
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
