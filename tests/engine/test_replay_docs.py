"""docs/replay.md's complete example runs as written, so it cannot rot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.doc_examples import doc_example, run_example


async def test_the_replay_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = doc_example("replay.md", "## A complete example")
    await asyncio.to_thread(run_example, code, tmp_path)
    assert capsys.readouterr().out.splitlines() == [
        "2 events replayed, checkpoint back at 0/6",
        "[('coffee', 206), ('tea', 203)]",
        "[(2,)]",
        "0 events: True",
    ]
    printed = (Path(__file__).parents[2] / "docs" / "replay.md").read_text("utf-8")
    assert printed.rstrip().endswith(
        "```\n2 events replayed, checkpoint back at 0/6\n"
        "[('coffee', 206), ('tea', 203)]\n[(2,)]\n0 events: True\n```"
    )
