"""docs/importing.md's example runs against the real PostgreSQL, so it cannot rot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import PG_DSN, _drop_schema, new_schema_name, require_postgres
from tests.doc_examples import doc_example, run_example


async def test_the_import_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await require_postgres()
    schema = new_schema_name()
    monkeypatch.setenv("DATABASE_URL", PG_DSN)
    monkeypatch.setenv("EXAMPLE_SCHEMA", schema)
    code = doc_example("importing.md", "## A complete example")
    try:
        await asyncio.to_thread(run_example, code, tmp_path)
    finally:
        await _drop_schema(schema)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "6 events into 2 streams",
        "6 skipped",
        "[1, 2, 3, 4]",
        "1 from a source",
    ]
