"""Fixtures shared by the sources' tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sources.message_db_install import message_db_database


@pytest.fixture(scope="session")
def message_db() -> Iterator[str]:
    """The URL of a database with Message DB installed, for the whole session (each test
    uses categories of its own)."""
    with message_db_database() as url:
        yield url
