"""docs/schema-evolution.md's example runs as written (SQLite, in a temporary directory)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.doc_examples import doc_example, run_example


async def test_the_schema_evolution_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # its store is sqlite:///shop.db
    code = doc_example("schema-evolution.md", "## Registering upcasters")
    await asyncio.to_thread(run_example, code, tmp_path)
    assert capsys.readouterr().out.splitlines() == [
        "[('order-1', 1200, 'EUR'), ('order-2', 500, 'EUR')]",
        "True",
        "1 {'OrderCreated v1 -> OrderPlaced v3': 1}",
        "0",
    ]
