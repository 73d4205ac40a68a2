"""docs/typed-events.md's example runs as written (memory backend), so it cannot rot."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.doc_examples import DOCS, doc_example, run_example


async def test_the_typed_events_example_prints_what_the_page_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = doc_example("typed-events.md", "## A complete example")
    await asyncio.to_thread(run_example, code, tmp_path)
    printed = capsys.readouterr().out
    page = (DOCS / "typed-events.md").read_text("utf-8")
    shown = re.search(r"It prints .*?\n```\n(.*?)```", page, flags=re.DOTALL)
    assert shown, "docs/typed-events.md lost the output of its example"
    assert printed == shown.group(1)
    assert "$.items[1].qty: Expected int, got str" in printed
