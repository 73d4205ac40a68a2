"""docs/importing.md's example runs against the real PostgreSQL, so it cannot rot."""

from __future__ import annotations

import asyncio
import re
import runpy
from pathlib import Path

import pytest

from tests.conftest import PG_DSN, _drop_schema, new_schema_name, require_postgres

DOC = Path(__file__).resolve().parents[2] / "docs" / "importing.md"


def example() -> str:
    section = DOC.read_text("utf-8").split("## A complete example", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert found, "docs/importing.md lost its example"
    return found.group(1)


async def test_the_import_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await require_postgres()
    schema = new_schema_name()
    monkeypatch.setenv("DATABASE_URL", PG_DSN)
    monkeypatch.setenv("EXAMPLE_SCHEMA", schema)
    script = tmp_path / "example.py"
    script.write_text(example(), "utf-8")
    try:
        await asyncio.to_thread(runpy.run_path, str(script), run_name="__main__")
    finally:
        await _drop_schema(schema)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "6 events into 2 streams",
        "6 skipped",
        "[1, 2, 3, 4]",
        "1 from a source",
    ]
