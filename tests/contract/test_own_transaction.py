"""The own-transaction contract (``store.transaction()``, ``store.append_on``) on every event
store: memory, SQLite and PostgreSQL.

Events appended in your own transaction commit with your own rows, or neither does; readers
see nothing before the commit; inline projections run in that transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from projectionist import (
    NO_STREAM,
    ConcurrencyError,
    EventStore,
    InvalidInputError,
    NewEvent,
    ReadModelTransaction,
    RecordedEvent,
    StoreTransaction,
)
from tests.conftest import StoreFactory, settle

OWN = "own_rows"


def events(*types: str) -> list[NewEvent]:
    return [NewEvent(t, {"n": i}) for i, t in enumerate(types)]


async def create_own_table(store: EventStore) -> None:
    async with store.read_models().transaction() as tx:
        await tx.execute(f"CREATE TABLE {OWN} (k TEXT PRIMARY KEY, v BIGINT)")


async def own_rows(store: EventStore, table: str = OWN) -> dict[str, int]:
    async with store.read_models().transaction() as tx:
        rows = await tx.fetch(f"SELECT k, v FROM {table} ORDER BY k")
    return {str(k): int(v) for k, v in rows}


async def stored_types(store: EventStore) -> list[str]:
    await settle(store)
    return [e.type for e in (await store.read_all()).events]


async def place_order(store: EventStore, order: str, total: int) -> StoreTransaction:
    """What a web handler typed against the contract writes: no cast, no backend import."""
    async with store.transaction() as tx:
        await tx.execute(f"INSERT INTO {OWN} (k, v) VALUES ($1, $2)", order, total)
        await tx.append(f"order-{order}", [NewEvent("OrderPlaced", {"total": total})], NO_STREAM)
        assert await tx.fetchval(f"SELECT v FROM {OWN} WHERE k = $1", order) == total
    return tx


async def place_then_fail(store: EventStore, event_type: str = "OrderPlaced") -> None:
    async with store.transaction() as tx:
        await tx.append("order-o1", events(event_type))
        if event_type == "OrderPlaced":
            await tx.execute(f"INSERT INTO {OWN} VALUES ($1, $2)", "o1", 1)
        raise RuntimeError("payment refused")


async def test_commit_keeps_events_and_own_rows(store: EventStore) -> None:
    await create_own_table(store)
    await place_order(store, "o1", 12)
    assert await stored_types(store) == ["OrderPlaced"]
    assert [e.data for e in await store.read_stream("order-o1")] == [{"total": 12}]
    assert await own_rows(store) == {"o1": 12}


async def test_an_exception_keeps_neither(store: EventStore) -> None:
    await create_own_table(store)
    with pytest.raises(RuntimeError, match="payment refused"):
        await place_then_fail(store)
    assert await stored_types(store) == []
    assert await store.read_stream("order-o1") == []
    assert await own_rows(store) == {}
    later = await store.append("order-o1", events("OrderPlaced"))
    assert later.version == 1  # the rolled-back append left no trace in the stream


async def test_a_version_conflict_inside_keeps_nothing(store: EventStore) -> None:
    await create_own_table(store)
    await store.append("order-o1", events("OrderPlaced"))
    with pytest.raises(ConcurrencyError):
        await place_order(store, "o1", 1)  # order-o1 exists: NO_STREAM conflicts
    assert await stored_types(store) == ["OrderPlaced"]
    assert await own_rows(store) == {}


async def test_appends_in_one_transaction_follow_each_other(store: EventStore) -> None:
    await store.append("a", events("A1"))
    async with store.transaction() as tx:
        first = await tx.append("a", events("A2", "A3"), expected_version=1)
        second = await tx.append("a", events("A4"), expected_version=3)
        third = await tx.append("b", events("B1"), expected_version=NO_STREAM)
    assert [e.version for e in first.events + second.events] == [2, 3, 4]
    positions = [e.position for e in first.events + second.events + third.events]
    assert positions == sorted(positions) and len(set(positions)) == 4
    assert await stored_types(store) == ["A1", "A2", "A3", "A4", "B1"]
    stored = await store.read_all()
    assert [e.position for e in stored.events[1:]] == positions


async def test_inline_projection_rows_commit_with_the_transaction(store: EventStore) -> None:
    async def count_types(tx: ReadModelTransaction, recorded: Sequence[RecordedEvent]) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS inline_rows (k TEXT PRIMARY KEY, v BIGINT)")
        for event in recorded:
            await tx.execute(
                "INSERT INTO inline_rows VALUES ($1, 1) "
                "ON CONFLICT (k) DO UPDATE SET v = inline_rows.v + 1",
                event.type,
            )

    store.add_inline_hook(count_types)
    await store.append("seed", events("Seeded"))
    with pytest.raises(RuntimeError):
        await place_then_fail(store, "Dropped")
    async with store.transaction() as tx:
        await tx.append("a", events("Kept", "Kept"))
        assert await tx.fetchval("SELECT v FROM inline_rows WHERE k = $1", "Kept") == 2
    assert await own_rows(store, "inline_rows") == {"Kept": 2, "Seeded": 1}
    assert await stored_types(store) == ["Seeded", "Kept", "Kept"]


async def test_a_failing_inline_projection_undoes_only_its_append(store: EventStore) -> None:
    async def refuse(tx: ReadModelTransaction, recorded: Sequence[RecordedEvent]) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS inline_rows (k TEXT PRIMARY KEY)")
        for event in recorded:
            await tx.execute("INSERT INTO inline_rows VALUES ($1)", event.type)
            if event.type == "Refused":
                raise PermissionError("refused")

    await create_own_table(store)
    store.add_inline_hook(refuse)
    async with store.transaction() as tx:
        await tx.execute(f"INSERT INTO {OWN} VALUES ($1, $2)", "kept", 1)
        with pytest.raises(PermissionError):
            await tx.append("a", events("Written", "Refused"))
        await tx.append("a", events("Accepted"), expected_version=NO_STREAM)
    assert await stored_types(store) == ["Accepted"]
    assert await own_rows(store) == {"kept": 1}
    async with store.read_models().transaction() as read:
        assert await read.fetch("SELECT k FROM inline_rows") == [("Accepted",)]


async def test_readers_see_nothing_before_the_commit(
    store: EventStore, store_factory: StoreFactory
) -> None:
    reader = await store_factory.open()  # another store on the same data (memory: the same)
    await store.append("before", events("Before"))
    await settle(reader)
    head = await reader.head()
    async with store.transaction() as tx:
        inside = await tx.append("a", events("Inside"))
        assert [e.type for e in (await reader.read_all()).events] == ["Before"]
        assert await reader.head() == head
    assert await reader.wait_until_visible(inside.position, timeout=10)
    assert await stored_types(reader) == ["Before", "Inside"]


async def test_append_on_refuses_what_is_not_its_transaction(store: EventStore) -> None:
    for wrong in (object(), "connection", None):
        with pytest.raises(InvalidInputError, match="append_on"):
            await store.append_on(wrong, "a", events("A"))
    async with store.transaction() as tx:
        pass
    if not store.url.startswith("postgresql"):  # a pooled asyncpg connection stays usable
        with pytest.raises(InvalidInputError, match="append_on"):
            await store.append_on(tx.connection, "a", events("A"))  # its block has ended
    assert await stored_types(store) == []


async def test_bad_input_raises_before_anything_is_written(store: EventStore) -> None:
    await create_own_table(store)
    async with store.transaction() as tx:
        await tx.execute(f"INSERT INTO {OWN} VALUES ($1, $2)", "kept", 1)
        with pytest.raises(InvalidInputError):
            await tx.append("", events("A"))
        with pytest.raises(InvalidInputError):
            await tx.append("a", [])
        with pytest.raises(InvalidInputError):
            await tx.append("a", events("A"), expected_version=-1)
        await tx.append("a", events("A"), expected_version=NO_STREAM)
    assert await stored_types(store) == ["A"]
    assert await own_rows(store) == {"kept": 1}


async def test_a_commit_wakes_a_waiting_reader(
    store: EventStore, store_factory: StoreFactory
) -> None:
    reader = await store_factory.open()
    reader.poll_interval = 60  # only a wake-up can end the wait in time
    waiting = asyncio.create_task(reader.wait_for_events(await reader.head(), timeout=30))
    async with store.transaction() as tx:
        await tx.append("a", events("A"))
        await tx.fetchval("SELECT 1")  # the reader gets to wait meanwhile
    assert await waiting is True
