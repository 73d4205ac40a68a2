"""Application.open and close: everything opened is closed again, also when opening fails
part-way (real stores: memory, SQLite, Redis; unreachable servers on a closed port)."""

from __future__ import annotations

from pathlib import Path

import pytest

from projectionist import (
    Application,
    ConfigurationError,
    Projection,
    StoreUnavailableError,
    create_store,
)
from projectionist.targets.redis import RedisProjection, RedisReadModelStore
from tests.engine.projections import ledger
from tests.targets.conftest import REDIS_URL, require_redis

CLOSED_PORT_PG = "postgresql://postgres@127.0.0.1:1/nowhere"
CLOSED_PORT_REDIS = "redis://127.0.0.1:1/0"


async def test_a_failed_open_closes_what_it_opened_and_raises() -> None:
    await require_redis()
    reachable = RedisReadModelStore(REDIS_URL, prefix="test-lifecycle")
    unreachable = RedisReadModelStore(CLOSED_PORT_REDIS, prefix="test-lifecycle")
    store = create_store("memory://")
    async with store:  # shared: the application must leave it open, without its hooks
        app = Application(
            store,
            [
                ledger("inline_ledger", kind="inline"),
                RedisProjection("on_redis", reachable),
                RedisProjection("on_nothing", unreachable),
            ],
        )
        with pytest.raises(StoreUnavailableError, match="cannot connect to Redis"):
            await app.open()
        assert store.inline_hooks == []
        with pytest.raises(ConfigurationError, match="is not open"):
            _ = reachable.client  # opened first, closed again
        with pytest.raises(ConfigurationError, match="the application is not open"):
            _ = app.store
        assert await store.head() is not None  # the shared store is still open
        await app.close()  # nothing left to close: no error


async def test_an_unreachable_read_model_database_fails_the_open(tmp_path: Path) -> None:
    app = Application(
        f"sqlite:///{tmp_path / 'events.db'}", [ledger()], read_model_url=CLOSED_PORT_PG
    )
    with pytest.raises(StoreUnavailableError, match="cannot connect to postgresql"):
        await app.open()
    with pytest.raises(ConfigurationError, match="the application is not open"):
        _ = app.store
    # Nothing half-open is left behind: the same application opens once the URL is right.
    app.read_model_url = None
    async with app:
        await app.setup()
        assert [status.name for status in await app.status()] == ["ledger"]


async def test_close_undoes_open_and_a_second_open_is_a_no_op(tmp_path: Path) -> None:
    store = create_store(f"sqlite:///{tmp_path / 'events.db'}")
    async with store:
        await store.apply_schema()
        counter: Projection = ledger("inline_ledger", kind="inline")
        app = Application(store, [counter])
        await app.open()
        await app.open()
        assert len(store.inline_hooks) == 1
        await app.close()
        await app.close()
        assert store.inline_hooks == []
        assert await store.head() is not None


def test_the_store_is_named_store_and_url_still_works() -> None:
    assert Application("memory://").url == "memory://"
    assert Application(url="memory://", projections=[ledger()]).url == "memory://"
    with pytest.raises(ConfigurationError, match="once"):
        Application("memory://", url="memory://")
    with pytest.raises(ConfigurationError, match="needs an event store"):
        Application()
