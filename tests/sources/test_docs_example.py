"""docs/sources.md's table-source example runs against the real PostgreSQL, so it cannot rot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import PG_DSN, _drop_schema, new_schema_name, require_postgres
from tests.doc_examples import doc_example, run_example


async def test_the_table_source_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await require_postgres()
    schema = new_schema_name()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", PG_DSN)
    monkeypatch.setenv("EXAMPLE_SCHEMA", schema)
    code = doc_example("sources.md", "### A complete example")
    try:
        await asyncio.to_thread(run_example, code, tmp_path)
    finally:
        await _drop_schema(schema)
    printed = capsys.readouterr().out
    assert "'order-1'" in printed and "12" in printed  # 5 + 7
