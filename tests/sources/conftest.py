"""Fixtures shared by the sources' tests: a Message DB database, NATS streams
(jetstream_support.py) and Redis prefixes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sources.jetstream_support import jet_stream, make_jet_stream
from tests.sources.message_db_install import message_db_database
from tests.targets.conftest import redis_prefix

__all__ = ["jet_stream", "make_jet_stream", "message_db", "redis_prefix"]


@pytest.fixture(scope="session")
def message_db() -> Iterator[str]:
    """The URL of a database with Message DB installed, for the whole session (each test
    uses categories of its own)."""
    with message_db_database() as url:
        yield url
