"""docs/side-effects.md's example runs against the real Redis (and SQLite), so it cannot rot."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.doc_examples import doc_example, run_example
from tests.targets.conftest import REDIS_URL, require_redis


async def test_the_side_effects_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await require_redis()
    stream = f"test-{uuid.uuid4().hex[:12]}:welcome"
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    monkeypatch.setenv("EXAMPLE_STREAM", stream)
    code = doc_example("side-effects.md", "## A complete example")
    try:
        await asyncio.to_thread(run_example, code, tmp_path)
    finally:
        client = aioredis.Redis.from_url(REDIS_URL)
        await client.delete(stream)
        await client.aclose()
    assert capsys.readouterr().out.splitlines() == [
        "refused: projection 'welcome_emails' is a reactor",
        "sent new@example.com with key welcome_emails:...",
    ]
