"""Calling the store itself inside its own transaction on SQLite and memory, where that
transaction is the store's only writer: a clear ConfigurationError, never a hang.

(On PostgreSQL the store's calls take another pooled connection: nothing to refuse.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from projectionist import START, ConfigurationError, EventStore, NewEvent, create_store

# A guard against the hang this refuses, not a measure of anything: it never elapses
# when the code is right.
HANG_GUARD = 30.0
REFUSAL = r"use tx\.append / tx\.execute"
Call = Callable[[EventStore], Awaitable[Any]]


def _append(store: EventStore) -> Awaitable[Any]:
    return store.append("s", [NewEvent("B", {})])


async def _read_models_transaction(store: EventStore) -> None:
    async with store.read_models().transaction() as tx:
        await tx.execute("SELECT 1")


CALLS: list[tuple[str, Call]] = [
    ("sqlite", _append),
    ("sqlite", lambda s: s.read_all(START)),
    ("sqlite", lambda s: s.head()),
    ("sqlite", _read_models_transaction),
    ("memory", _append),
    ("memory", _read_models_transaction),
]
IDS = ["sqlite-append", "sqlite-read", "sqlite-head", "sqlite-rm", "memory-append", "memory-rm"]


async def open_store(backend: str, tmp_path: Path) -> EventStore:
    url = "memory://" if backend == "memory" else f"sqlite:///{tmp_path / 'e.db'}"
    store = create_store(url)
    await store.open()
    await store.apply_schema()
    return store


async def call_inside_transaction(store: EventStore, call: Call) -> None:
    async with store.transaction() as tx:
        await tx.append("s", [NewEvent("A", {})])
        async with asyncio.timeout(HANG_GUARD):  # in this task: wait_for would start another
            await call(store)


@pytest.mark.parametrize(("backend", "call"), CALLS, ids=IDS)
async def test_the_store_inside_its_own_transaction(
    backend: str, call: Call, tmp_path: Path
) -> None:
    store = await open_store(backend, tmp_path)
    try:
        with pytest.raises(ConfigurationError, match=REFUSAL):
            await call_inside_transaction(store, call)
        # The block failed, so it rolled back; the store works on.
        assert await store.read_stream("s") == []
        await store.append("s", [NewEvent("C", {})])
        assert [e.type for e in await store.read_stream("s")] == ["C"]
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
async def test_another_task_waits_for_the_transaction(backend: str, tmp_path: Path) -> None:
    """Only the task holding the transaction is refused: another one, even one started
    inside the block, waits its turn."""
    store = await open_store(backend, tmp_path)
    try:
        async with store.transaction() as tx:
            await tx.append("s", [NewEvent("A", {})])
            other = asyncio.create_task(store.append("s", [NewEvent("B", {})]))
            for _ in range(10):
                await asyncio.sleep(0)
            assert not other.done()
        await asyncio.wait_for(other, HANG_GUARD)
        assert [e.type for e in await store.read_stream("s")] == ["A", "B"]
    finally:
        await store.close()
