"""Applications on one shared store, on every backend, for worker and lease tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

import pytest

from projectionist import Application, EventStore, Projection, create_store
from tests.conftest import _drop_schema, new_schema_name, require_postgres, store_url

POLL = 0.05


class Apps:
    """Opens Applications on the same data: the same URL, or on memory the one shared store
    object (memory stores cannot be shared otherwise)."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url
        self._memory: EventStore | None = None
        self._opened: list[Application] = []

    async def open(self, projections: Iterable[Projection]) -> Application:
        if self.backend == "memory":
            if self._memory is None:
                self._memory = create_store(self.url, poll_interval=POLL)
                await self._memory.open()
            app = Application(self._memory, projections)
        else:
            app = Application(self.url, projections, poll_interval=POLL)
        await app.open()
        self._opened.append(app)
        return app

    async def close(self) -> None:
        for app in reversed(self._opened):
            await app.close()
        if self._memory is not None:
            await self._memory.close()


async def _apps(backend: str, tmp_path: Path) -> AsyncIterator[Apps]:
    schema = None
    if backend == "postgres":
        await require_postgres()
        schema = new_schema_name()
    apps = Apps(backend, store_url(backend, tmp_path, schema))
    try:
        yield apps
    finally:
        await apps.close()
        if schema is not None:
            await _drop_schema(schema)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def apps(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Apps]:
    async for shared in _apps(str(request.param), tmp_path):
        yield shared


@pytest.fixture(params=["sqlite", "postgres"])
async def sql_apps(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Apps]:
    """SQLite and PostgreSQL: databases other processes could share."""
    async for shared in _apps(str(request.param), tmp_path):
        yield shared


@pytest.fixture
async def pg_apps(tmp_path: Path) -> AsyncIterator[Apps]:
    async for shared in _apps("postgres", tmp_path):
        yield shared


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> float:
    """Poll ``check`` until true; return how long it took. Fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await check():
        assert loop.time() - started < timeout, f"{what} not reached within {timeout}s"
        await asyncio.sleep(0.02)
    return loop.time() - started
