"""The event store contract, run against every backend: memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC

import pytest

from projectionist import (
    ANY,
    NO_STREAM,
    START,
    ConcurrencyError,
    EventStore,
    InvalidInputError,
    NewEvent,
    Position,
    RecordedEvent,
)
from projectionist.migrations import latest_version
from projectionist.partitions import Partition, partition_of
from projectionist.store import BACKLOG_COUNTED
from tests.conftest import StoreFactory, settle


def events(*types: str, **data: object) -> list[NewEvent]:
    return [NewEvent(t, {"n": i, **data}) for i, t in enumerate(types)]


async def read_everything(store: EventStore, limit: int = 1000) -> list[object]:
    seen: list[object] = []
    checkpoint = START
    while True:
        batch = await store.read_all(checkpoint, limit=limit)
        seen += batch.events
        if not batch.events:
            return seen
        checkpoint = batch.checkpoint


async def test_append_returns_recorded_events(store: EventStore) -> None:
    event_id = uuid.uuid4()
    result = await store.append(
        "order-1",
        [
            NewEvent(
                "OrderCreated",
                {"customer": "c-1", "total": 12.5},
                {"correlation_id": "x"},
                event_id,
            ),
            NewEvent("ItemAdded", {"sku": "ä-ß-😀", "qty": 2}),
        ],
    )
    first, second = result.events
    assert (first.version, second.version, result.version) == (1, 2, 2)
    assert first.id == event_id and first.stream_id == "order-1"
    assert first.data == {"customer": "c-1", "total": 12.5}
    assert first.metadata == {"correlation_id": "x"}
    assert second.data["sku"] == "ä-ß-😀"
    assert first.position < second.position == result.position
    assert first.recorded_at.utcoffset() == UTC.utcoffset(None)
    stored = await store.read_stream("order-1")
    assert stored == list(result.events)


async def test_versions_continue_across_appends(store: EventStore) -> None:
    await store.append("s", events("A", "B"))
    result = await store.append("s", events("C"), expected_version=2)
    assert result.version == 3
    assert [e.version for e in await store.read_stream("s")] == [1, 2, 3]
    assert [e.type for e in await store.read_stream("s", from_version=2)] == ["B", "C"]
    assert [e.type for e in await store.read_stream("s", from_version=1, limit=1)] == ["A"]
    assert await store.read_stream("missing") == []


async def test_no_stream_expectation(store: EventStore) -> None:
    await store.append("s", events("A"), expected_version=NO_STREAM)
    with pytest.raises(ConcurrencyError) as caught:
        await store.append("s", events("B"), expected_version=NO_STREAM)
    assert (caught.value.expected, caught.value.actual) == (NO_STREAM, 1)
    assert "expected version no stream" in str(caught.value) and "at version 1" in str(caught.value)
    assert [e.type for e in await store.read_stream("s")] == ["A"]


@pytest.mark.parametrize("expected", [0, 1, 3])
async def test_wrong_exact_version_writes_nothing(store: EventStore, expected: int) -> None:
    await store.append("s", events("A", "B"))
    head = await store.last_committed()
    with pytest.raises(ConcurrencyError) as caught:
        await store.append("s", events("X", "Y", "Z"), expected_version=expected)
    assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == (
        "s",
        expected,
        2,
    )
    assert f"expected version {expected}" in str(caught.value)
    assert await store.last_committed() == head
    assert [e.type for e in await store.read_stream("s")] == ["A", "B"]


async def test_exact_version_on_missing_stream(store: EventStore) -> None:
    with pytest.raises(ConcurrencyError) as caught:
        await store.append("new", events("A"), expected_version=4)
    assert caught.value.actual == 0
    assert "does not exist" in str(caught.value)
    assert await store.read_stream("new") == []
    assert (await store.append("new", events("A"), expected_version=0)).version == 1


async def test_concurrent_appends_with_same_expectation_one_wins(
    store_factory: StoreFactory,
) -> None:
    stores = [await store_factory.open() for _ in range(3)]
    await stores[0].append("race", events("Start"))
    outcomes = await asyncio.gather(
        *(s.append("race", events(f"By{i}"), expected_version=1) for i, s in enumerate(stores * 2)),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    losers = [o for o in outcomes if isinstance(o, ConcurrencyError)]
    assert len(winners) == 1 and len(losers) == 5
    assert all(loser.actual == 2 for loser in losers)
    assert [e.version for e in await stores[0].read_stream("race")] == [1, 2]


async def test_concurrent_any_appends_to_one_stream_keep_versions_dense(
    store_factory: StoreFactory,
) -> None:
    stores = [await store_factory.open() for _ in range(3)]
    await asyncio.gather(
        *(s.append("busy", events("Tick", "Tock"), expected_version=ANY) for s in stores * 4)
    )
    assert [e.version for e in await stores[0].read_stream("busy")] == list(range(1, 25))


async def test_read_all_pages_through_global_order(store: EventStore) -> None:
    for i in range(7):
        await store.append(f"s-{i % 3}", events("A", "B", "C"))
    await settle(store)
    everything = await read_everything(store, limit=4)
    assert len(everything) == 21
    positions = [e.position for e in everything]  # type: ignore[attr-defined]
    assert positions == sorted(positions) and len(set(positions)) == 21
    assert await store.head() == positions[-1]
    assert (await store.read_all(positions[-1])).events == []
    assert (await store.read_all(positions[9], limit=5)).events == everything[10:15]


async def test_read_all_filters_types_and_moves_checkpoint_past_others(store: EventStore) -> None:
    await store.append("a", events("Wanted", "Other", "Other"))
    await store.append("b", events("Other", "Wanted", "Other"))
    await settle(store)
    batch = await store.read_all(START, limit=10, types=["Wanted"])
    assert [(e.stream_id, e.type) for e in batch.events] == [("a", "Wanted"), ("b", "Wanted")]
    assert batch.checkpoint == await store.head()
    limited = await store.read_all(START, limit=1, types={"Wanted", "Missing"})
    assert [e.stream_id for e in limited.events] == ["a"]
    assert limited.checkpoint == limited.events[0].position
    nothing = await store.read_all(START, limit=10, types=[])
    assert nothing.events == [] and nothing.checkpoint == await store.head()


async def test_empty_store(store: EventStore) -> None:
    assert await store.head() == START
    batch = await store.read_all()
    assert batch.events == [] and batch.checkpoint == START


async def test_schema_apply_is_idempotent(store: EventStore) -> None:
    assert await store.schema_version() == latest_version("sqlite") == latest_version("postgres")
    assert await store.apply_schema() == await store.schema_version()
    await store.append("s", events("A"))
    await store.apply_schema()
    assert len(await store.read_stream("s")) == 1


async def test_large_append_is_one_atomic_write(store: EventStore) -> None:
    many = [NewEvent("Tick", {"i": i}) for i in range(6000)]
    result = await store.append("big", many)
    assert result.version == 6000
    assert [e.data["i"] for e in await store.read_stream("big")] == list(range(6000))


async def test_duplicate_event_id_is_refused_and_writes_nothing(store: EventStore) -> None:
    event = NewEvent("A", {})
    await store.append("s", [event])
    with pytest.raises(InvalidInputError, match="already exists"):
        await store.append("t", [NewEvent("B", {}), event])
    assert await store.read_stream("t") == []
    with pytest.raises(InvalidInputError, match="repeats an event id"):
        await store.append("u", [event, event])


async def test_wait_for_events_wakes_on_append(store_factory: StoreFactory) -> None:
    reader = await store_factory.open(poll_interval=60)
    writer = await store_factory.open()
    head = await reader.head()
    assert await reader.wait_for_events(head, timeout=0.05) is False

    async def append_soon() -> None:
        await asyncio.sleep(0.1)
        await writer.append("s", events("A"))

    started = time.monotonic()
    task = asyncio.create_task(append_soon())
    assert await reader.wait_for_events(head, timeout=20) is True
    assert time.monotonic() - started < 5, "woken by polling, not by a notification"
    await task


async def test_wait_for_events_since_a_token_returns_on_a_change_after_it(
    store_factory: StoreFactory,
) -> None:
    """The live runner's wait: a change after the token taken before its (empty) read
    returns at once, even one that landed before the wait began (True then means "may be
    visible": a late wake-up may come for nothing). Without ``since``, True means visible."""
    reader = await store_factory.open(poll_interval=60)
    writer = await store_factory.open()
    head = await reader.head()
    token = reader.changes.token
    assert await reader.wait_for_events(head, timeout=0.05, since=token) is False
    await writer.append("s", events("A"))
    assert await reader.wait_until_visible(await writer.head(), timeout=20)
    # Woken (in this process or by a notification) after the token: True without a wait.
    started = time.monotonic()
    assert await reader.wait_for_events(head, timeout=20, since=token) is True
    assert time.monotonic() - started < 5
    moved = (await reader.read_all(head)).checkpoint
    assert moved > head
    assert await reader.wait_for_events(moved, timeout=0.05) is False


async def test_follower_sees_each_committed_event_once_under_concurrent_appends(
    store_factory: StoreFactory,
) -> None:
    writers = [await store_factory.open() for _ in range(4)]
    follower = await store_factory.open(poll_interval=0.05)
    done = asyncio.Event()
    written: list[uuid.UUID | None] = []

    async def write(store: EventStore, index: int) -> None:
        for n in range(60):
            result = await store.append(f"w{index}-{n % 7}", events("A", "B"))
            written.extend(e.id for e in result.events)

    async def follow() -> list[uuid.UUID | None]:
        seen: list[uuid.UUID | None] = []
        checkpoint = START
        while True:
            batch = await follower.read_all(checkpoint, limit=17)
            seen += [e.id for e in batch.events]
            checkpoint = batch.checkpoint
            if not batch.events:
                if done.is_set() and checkpoint >= await follower.last_committed():
                    return seen
                await follower.wait_for_events(checkpoint, timeout=0.05)

    following = asyncio.create_task(follow())
    await asyncio.gather(*(write(s, i) for i, s in enumerate(writers)))
    done.set()
    seen = await asyncio.wait_for(following, 60)
    assert len(seen) == len(set(seen)) == len(written) == 480
    assert set(seen) == set(written)


async def test_appended_position_becomes_visible(store: EventStore) -> None:
    result = await store.append("s", events("A", "B"))
    assert await store.last_committed() == result.position
    assert await store.wait_until_visible(result.position, timeout=10) is True
    assert await store.head() == result.position
    assert (
        await store.wait_until_visible(Position(result.position.tx, result.position.seq + 1), 0.05)
        is False
    )


async def test_read_all_is_bounded_by_bytes(store: EventStore) -> None:
    big = "x" * 1000
    await store.append("s", [NewEvent("Big", {"blob": big, "n": n}) for n in range(20)])
    await store.append("s", [NewEvent("Small", {"n": n}) for n in range(5)])
    await settle(store)
    first = await store.read_all(START, limit=100, max_bytes=3500)
    assert 3 <= len(first.events) <= 5, "about 3.5 KB of 1 KB events, at least one"
    assert first.checkpoint == first.events[-1].position, "a cut page must not skip ahead"
    one = await store.read_all(START, limit=100, max_bytes=1)
    assert len(one.events) == 1 and one.checkpoint == one.events[0].position
    seen, checkpoint = [], START
    while True:
        batch = await store.read_all(checkpoint, limit=100, max_bytes=2500, types=["Big"])
        if not batch.events:
            break
        assert len(batch.events) <= 3
        seen += [e.data["n"] for e in batch.events]
        checkpoint = batch.checkpoint
    assert seen == list(range(20)) and checkpoint == await store.head()
    with pytest.raises(InvalidInputError, match="max_bytes must be a positive integer"):
        await store.read_all(START, max_bytes=0)


async def test_partitioned_reads_split_streams_stably_and_keep_stream_order(
    store: EventStore,
) -> None:
    for round_ in range(3):
        for n in range(12):
            await store.append(f"s-{n}", events("A", "B", round=round_))
    await settle(store)
    everything = await read_everything(store)
    parts: list[list[RecordedEvent]] = []
    for index in range(3):
        seen: list[RecordedEvent] = []
        checkpoint = START
        while True:
            batch = await store.read_all(checkpoint, limit=5, partition=Partition(index, 3))
            seen += batch.events
            if batch.checkpoint == checkpoint:
                break
            checkpoint = batch.checkpoint
        assert checkpoint == everything[-1].position  # type: ignore[attr-defined]
        assert {partition_of(e.stream_id, 3) for e in seen} <= {index}
        parts.append(seen)
    # Every event in exactly one partition, each partition in global (so stream) order.
    assert sorted(str(e.id) for part in parts for e in part) == sorted(
        str(e.id)  # type: ignore[attr-defined]
        for e in everything
    )
    for part in parts:
        assert [e.position for e in part] == sorted(e.position for e in part)
    assert all(parts)  # 12 streams over 3 partitions: none empty
    only_b = await store.read_all(START, limit=1000, types=["B"], partition=Partition(1, 3))
    assert [e.id for e in only_b.events] == [e.id for e in parts[1] if e.type == "B"]
    single = await store.read_all(START, limit=1000, partition=Partition(0, 1))
    assert len(single.events) == len(everything)
    # Counting after a position agrees with the reads, partition by partition.
    recorded = [e for e in everything if isinstance(e, RecordedEvent)]
    middle = recorded[len(recorded) // 2].position
    for index, part in enumerate(parts):
        expected = len([e for e in part if e.position > middle])
        assert await store.count_after(middle, Partition(index, 3)) == expected
    assert await store.count_after(middle) == len([e for e in recorded if e.position > middle])
    # So does the backlog (a projection's lag), with the oldest waiting event's time.
    for index, part in enumerate(parts):
        waiting = [e for e in part if e.position > middle]
        backlog = await store.backlog(middle, Partition(index, 3))
        assert (backlog.events, backlog.estimated) == (len(waiting), False)
        assert backlog.oldest == (waiting[0].recorded_at if waiting else None)
    assert (await store.backlog(recorded[-1].position)).events == 0


async def test_a_long_backlog_is_estimated_not_counted(store: EventStore) -> None:
    """Status must stay cheap however far behind a projection is: beyond BACKLOG_COUNTED
    events the backlog is estimated from positions, close to the truth."""
    for n in range(BACKLOG_COUNTED // 1000 + 3):
        await store.append(f"s{n}", [NewEvent("A", {"i": i}) for i in range(1000)])
    total = await store.count_after(START)
    backlog = await store.backlog(START)
    assert backlog.estimated is (store.url != "memory://")  # memory counts in a list
    assert total <= backlog.events <= total * 1.05
    in_half = await store.backlog(START, Partition(0, 2))
    assert abs(in_half.events - await store.count_after(START, Partition(0, 2))) < total * 0.1


@pytest.mark.parametrize("partition", [Partition(3, 3), Partition(-1, 2), Partition(0, 0)])
async def test_invalid_partition_is_refused(store: EventStore, partition: Partition) -> None:
    with pytest.raises(InvalidInputError, match="partition"):
        await store.read_all(START, limit=10, partition=partition)
