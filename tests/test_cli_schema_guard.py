"""``run`` never creates a store's schema by accident (a mistyped URL or ``?schema=``), and a
missing database is named as such."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from tests.conftest import PG_DSN, new_schema_name, require_postgres
from tests.test_cli import ROOT, run_cli

APP = "examples.shop.app:app"


async def _schema_exists(schema: str) -> bool:
    await require_postgres()
    connection = await asyncpg.connect(PG_DSN)
    try:
        return bool(
            await connection.fetchval(
                "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", schema
            )
        )
    finally:
        await connection.close()


def test_run_refuses_a_mistyped_schema() -> None:
    typo = new_schema_name()
    done = run_cli("run", "--app", APP, "--url", f"{PG_DSN}?schema={typo}", cwd=ROOT)
    assert done.returncode == 1, done.stderr
    assert "no projectionist schema" in done.stderr and "--create-schema" in done.stderr
    assert "schema apply" in done.stderr
    assert not asyncio.run(_schema_exists(typo))


def test_run_refuses_a_new_sqlite_file(tmp_path: Path) -> None:
    done = run_cli("run", "--app", APP, "--url", f"sqlite:///{tmp_path / 'typo.db'}", cwd=ROOT)
    assert done.returncode == 1 and "no projectionist schema" in done.stderr, done.stderr


def test_a_missing_database_is_named() -> None:
    missing = PG_DSN.rsplit("/", 1)[0] + "/no_such_database_i12"
    done = run_cli("status", "--app", APP, "--url", missing, cwd=ROOT)
    assert done.returncode == 1
    assert 'database "no_such_database_i12" does not exist' in done.stderr, done.stderr
    assert "running" not in done.stderr
