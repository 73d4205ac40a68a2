"""Fixtures of the fault tests: stores that child processes can open too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import _drop_schema, new_schema_name, require_postgres, store_url


@pytest.fixture(params=["sqlite", "postgres"])
async def crash_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh SQLite file or PostgreSQL schema (not memory: a child could not see it)."""
    schema = None
    if request.param == "postgres":
        await require_postgres()
        schema = new_schema_name()
    yield store_url(str(request.param), tmp_path, schema)
    if schema is not None:
        await _drop_schema(schema)
