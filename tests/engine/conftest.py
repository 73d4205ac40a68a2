"""Applications on every backend for engine tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import _drop_schema, new_schema_name, require_postgres, store_url


@pytest.fixture
async def app_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh store URL of the test's backend (memory, SQLite file, PostgreSQL schema)."""
    schema = None
    if backend == "postgres":
        await require_postgres()
        schema = new_schema_name()
    yield store_url(backend, tmp_path, schema)
    if schema is not None:
        await _drop_schema(schema)
