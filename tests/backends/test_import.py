"""Bulk import (``store.import_events``) on every backend: what it keeps, what it refuses,
resuming, and on PostgreSQL the append path's bookkeeping and the gap-free order under
concurrent appenders."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest

from projectionist import (
    START,
    ConfigurationError,
    EventStore,
    InvalidInputError,
    NewEvent,
    Position,
    RecordedEvent,
    create_store,
)
from projectionist.errors import ImportRejectedError
from projectionist.importing import ImportedEvent, ImportReport, derived_id, import_from_source
from tests.conftest import PG_DSN, settle

T0 = datetime(2021, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def history(count: int, streams: int, prefix: str = "s") -> list[ImportedEvent]:
    """``count`` events over ``streams`` streams, interleaved, each stream 1..n."""
    versions: dict[str, int] = {}
    made = []
    for n in range(count):
        stream = f"{prefix}-{(n * 7) % streams}"
        versions[stream] = versions.get(stream, 0) + 1
        made.append(
            ImportedEvent(
                stream,
                versions[stream],
                "Happened" if n % 3 else "Began",
                {"n": n, "text": "ä😀"},
                {"source": "legacy", "n": n},
                uuid.UUID(int=n + 1),
                T0 + timedelta(seconds=n),
            )
        )
    return made


def as_tuple(event: ImportedEvent | RecordedEvent) -> tuple[object, ...]:
    return (
        event.id,
        event.stream_id,
        event.version,
        event.type,
        event.data,
        event.metadata,
        event.recorded_at,
    )


async def read_everything(store: EventStore) -> list[RecordedEvent]:
    await settle(store)
    seen: list[RecordedEvent] = []
    checkpoint = START
    while True:
        batch = await store.read_all(checkpoint, limit=500)
        if not batch.events:
            return seen
        seen += batch.events
        checkpoint = batch.checkpoint


async def test_import_keeps_streams_versions_ids_times_and_order(store: EventStore) -> None:
    await store.append("s-1", [NewEvent("Before", {"x": 1})])
    wanted = history(300, 13)
    wanted = [e for e in wanted if e.stream_id != "s-1"]  # s-1 continues below
    head = await store.head()
    report = await store.import_events(wanted, batch_size=64)
    assert (report.events, report.skipped, report.streams) == (len(wanted), 0, 12)
    assert report.batches == -(-len(wanted) // 64)
    everything = await read_everything(store)
    imported = everything[1:]
    assert [as_tuple(e) for e in imported] == [as_tuple(e) for e in wanted]
    assert all(e.position > head for e in imported)
    positions = [e.position for e in everything]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert report.first == imported[0].position and report.last == imported[-1].position
    stream = await store.read_stream("s-2")
    assert [as_tuple(e) for e in stream] == [as_tuple(e) for e in wanted if e.stream_id == "s-2"]


async def test_appends_after_import_continue_versions_and_positions(store: EventStore) -> None:
    await store.append("s-1", [NewEvent("Before", {})])
    wanted = [ImportedEvent("s-1", 2, "T", {}), ImportedEvent("s-2", 1, "T", {})]
    report = await store.import_events(iter(wanted))
    result = await store.append("s-1", [NewEvent("After", {})], expected_version=2)
    assert result.version == 3 and report.last is not None
    assert result.position > report.last
    assert [e.version for e in await store.read_stream("s-1")] == [1, 2, 3]
    imported = (await store.read_stream("s-1"))[1]
    assert imported.id == derived_id("s-1", 2)  # no id given: a stable one
    assert imported.recorded_at.tzinfo is not None  # no time given: the batch's


async def test_a_refused_batch_writes_nothing_and_earlier_batches_stay(store: EventStore) -> None:
    good = history(40, 4)
    bad = ImportedEvent("s-0", 99, "T", {})  # a gap, in the third batch of 10
    with pytest.raises(ImportRejectedError) as refused:
        await store.import_events([*good[:25], bad, *good[25:]], batch_size=10)
    assert refused.value.index == 25 and "a gap" in refused.value.reason
    assert "must be contiguous" in str(refused.value)
    assert [as_tuple(e) for e in await read_everything(store)] == [as_tuple(e) for e in good[:20]]


@pytest.mark.parametrize(
    ("event", "says"),
    [
        (ImportedEvent("s-0", 2, "T", {}), "a gap"),
        (ImportedEvent("s-0", 0, "T", {}), "version must be an integer from 1"),
        (ImportedEvent("", 1, "T", {}), "stream id must have 1 to 200"),
        (ImportedEvent("s-0", 1, "", {}), "event type must have"),
        (ImportedEvent("s-0", 1, "T", [1]), "must be a JSON object"),  # type: ignore[arg-type]
        (ImportedEvent("s-0", 1, "T", {}, {"x": float("nan")}), "NaN"),
        (ImportedEvent("s-0", 1, "T", {}, recorded_at=datetime(2020, 1, 1)), "time zone"),
        (ImportedEvent("s-0", 1, "T", {}, id="x"), "uuid.UUID"),  # type: ignore[arg-type]
        (NewEvent("T", {}), "expected an ImportedEvent or a RecordedEvent"),
    ],
)
async def test_bad_events_are_refused_before_writing(
    store: EventStore, event: object, says: str
) -> None:
    with pytest.raises(ImportRejectedError, match=says) as refused:
        await store.import_events([ImportedEvent("other", 1, "T", {}), event])  # type: ignore[list-item]
    assert refused.value.index == 1
    assert await read_everything(store) == []


async def test_duplicates_are_refused(store: EventStore) -> None:
    await store.append("s-0", [NewEvent("T", {})])
    taken = (await store.read_stream("s-0"))[0].id
    cases = [
        ([ImportedEvent("s-0", 1, "T", {})], "already has version 1"),  # other id
        ([ImportedEvent("s-1", 1, "T", {}, id=taken)], "already stored as 's-0' version 1"),
        (
            [ImportedEvent("s-1", 1, "T", {}, id=uuid.UUID(int=7))] * 2,
            "appears twice in the input",
        ),
        ([ImportedEvent("s-1", 1, "T", {}), ImportedEvent("s-1", 1, "T", {})], "appears twice"),
        ([ImportedEvent("s-1", 2, "T", {}), ImportedEvent("s-1", 1, "T", {})], "follows"),
    ]
    for events, says in cases:
        with pytest.raises(ImportRejectedError, match=says):
            await store.import_events(events)
    assert len(await read_everything(store)) == 1


async def test_reading_ahead_stops_with_a_refused_write(store: EventStore) -> None:
    """The next batch is read while one is written: a batch refused at write time (against
    the store) stops the import with the input read at most one batch further."""
    await store.append("s-0", [NewEvent("T", {})])
    pulled: list[int] = []

    def source() -> Iterator[ImportedEvent]:
        for n, event in enumerate(history(100, 3, prefix="r")):
            pulled.append(n)
            yield event
            if n == 14:  # in the second batch: the version taken by the append above
                yield ImportedEvent("s-0", 1, "T", {})

    with pytest.raises(ImportRejectedError, match="already has version 1") as refused:
        await store.import_events(source(), batch_size=10)
    assert refused.value.index == 15
    assert 19 <= len(pulled) <= 29  # two batches read, the third perhaps
    assert len(await read_everything(store)) == 11  # the append and the first batch


async def test_a_rerun_resumes_skipping_what_was_imported(store: EventStore) -> None:
    wanted = history(120, 9)
    broken = list(wanted)
    broken[70] = ImportedEvent("s-x", 1, "T", "oops")  # type: ignore[arg-type]
    with pytest.raises(ImportRejectedError):
        await store.import_events(broken, batch_size=25)
    assert len(await read_everything(store)) == 50  # two batches of 25
    report = await store.import_events(wanted, batch_size=25)
    assert (report.events, report.skipped) == (70, 50)
    assert [as_tuple(e) for e in await read_everything(store)] == [as_tuple(e) for e in wanted]
    again = await store.import_events(wanted, batch_size=25)
    assert (again.events, again.skipped, again.first) == (0, 120, None)


async def test_import_from_a_source_and_async_input(store: EventStore) -> None:
    async with create_store("memory://") as source:
        for n in range(30):
            await source.append(f"o-{n % 4}", [NewEvent("T", {"n": n})])
        report = await import_from_source(store, source, batch_size=7)
        assert report.events == 30
        expected = (await source.read_all(limit=100)).events
    assert [as_tuple(e) for e in await read_everything(store)] == [as_tuple(e) for e in expected]

    async def more() -> AsyncIterator[ImportedEvent]:
        for version in (1, 2):
            yield ImportedEvent("async", version, "T", {})

    assert (await store.import_events(more())).events == 2


async def test_bad_arguments_and_inline_projections_are_refused(store: EventStore) -> None:
    with pytest.raises(InvalidInputError, match="iterable"):
        await store.import_events(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="batch size"):
        await store.import_events([], batch_size=0)

    async def hook(tx: object, events: object) -> None:
        """An inline projection."""

    store.add_inline_hook(hook)
    with pytest.raises(ConfigurationError, match="inline projections"):
        await store.import_events([ImportedEvent("s", 1, "T", {})])
    assert await read_everything(store) == []


async def test_given_times_keep_their_instant(store: EventStore) -> None:
    at = datetime(2022, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    await store.import_events([ImportedEvent("s", 1, "T", {}, recorded_at=at)])
    assert (await store.read_stream("s"))[0].recorded_at == at


# -- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
async def pg(pg_schema: str) -> AsyncIterator[EventStore]:
    async with create_store(f"{PG_DSN}?schema={pg_schema}", poll_interval=0.05) as store:
        await store.apply_schema()
        yield store


def _schema(store: EventStore) -> str:
    return str(store.url.rpartition("schema=")[2])


async def _rows(store: EventStore) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    q = f'"{_schema(store)}"'
    connection = await asyncpg.connect(PG_DSN)
    try:
        columns = await connection.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name IN ('events', 'streams') "
            "ORDER BY table_name, ordinal_position",
            _schema(store),
        )
        events = await connection.fetch(
            f"SELECT id, stream_id, version, type, data, metadata, tx_id, position, recorded_at "
            f"FROM {q}.events ORDER BY tx_id, position"
        )
        streams = await connection.fetch(
            f"SELECT s.stream_id, s.version, s.last_tx_id = (SELECT e.tx_id FROM {q}.events e "
            "WHERE e.stream_id = s.stream_id ORDER BY e.version DESC LIMIT 1), s.last_tx_id > 0 "
            f"FROM {q}.streams s ORDER BY s.stream_id"
        )
    finally:
        await connection.close()
    # Every column is compared or named here: a column added later fails this first.
    assert [tuple(c) for c in columns] == [
        ("events", n)
        for n in ("position", "tx_id", "id", "stream_id", "version", "type", "data", "metadata")
    ] + [("events", "recorded_at"), ("streams", "stream_id"), ("streams", "version")] + [
        ("streams", "last_tx_id")
    ]
    return [(*tuple(r)[:6], r["tx_id"] > 0) for r in events], [tuple(r) for r in streams]


async def _assert_rows_match_the_append_path(pg: EventStore, wanted: list[ImportedEvent]) -> None:
    appended = create_store(f"{PG_DSN}?schema={_schema(pg)}_a")
    try:
        async with appended:
            await appended.apply_schema()
            for e in wanted:
                await appended.append(
                    e.stream_id, [NewEvent(e.type, e.data, e.metadata, e.id or uuid.uuid4())]
                )
            assert await _rows(pg) == await _rows(appended)
    finally:
        connection = await asyncpg.connect(PG_DSN)
        await connection.execute(f'DROP SCHEMA IF EXISTS "{_schema(pg)}_a" CASCADE')
        await connection.close()


async def test_postgres_rows_match_the_append_path(pg: EventStore) -> None:
    wanted = history(60, 5)
    report = await pg.import_events(wanted, batch_size=16)
    assert report.events == 60
    await _assert_rows_match_the_append_path(pg, wanted)


async def test_postgres_resumed_rows_match_the_append_path(pg: EventStore) -> None:
    """A re-run in other batches: one all skipped, one partly (with a stream all skipped in
    it), one of new streams; every stream's version and last_tx_id as if appended."""
    names = [f"s-{n % 5}" for n in range(20)] + ["solo"] * 2 + [f"s-{n % 5}" for n in range(18)]
    versions: dict[str, int] = {}
    wanted: list[ImportedEvent] = []
    for name in [*names, "late-0", "late-1", "late-0"]:
        versions[name] = versions.get(name, 0) + 1
        wanted.append(ImportedEvent(name, versions[name], "T", {"n": len(wanted)}, id=uuid.uuid4()))
    assert (await pg.import_events(wanted[:25], batch_size=10)).events == 25
    report = await pg.import_events(wanted, batch_size=20)
    assert (report.events, report.skipped, report.batches) == (18, 25, 3)
    await _assert_rows_match_the_append_path(pg, wanted)


async def test_postgres_import_with_concurrent_appenders_keeps_the_order_gap_free(
    pg: EventStore, pg_schema: str
) -> None:
    follower = create_store(f"{PG_DSN}?schema={pg_schema}", poll_interval=0.05)
    await follower.open()
    wanted = history(6000, 300, prefix="imp")
    appends_each = 150
    total = len(wanted) + 4 * appends_each
    seen: list[RecordedEvent] = []

    async def appender(index: int) -> None:
        for n in range(appends_each):
            await pg.append(f"live-{index}-{n % 7}", [NewEvent("Live", {"n": n})])

    async def follow() -> None:
        checkpoint = START
        while len(seen) < total:
            batch = await follower.read_all(checkpoint, limit=50)
            seen.extend(batch.events)
            checkpoint = batch.checkpoint
            if not batch.events:
                await follower.wait_for_events(checkpoint, timeout=1)

    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                pg.import_events(wanted, batch_size=250),
                *(appender(i) for i in range(4)),
                follow(),
            ),
            timeout=120,
        )
    finally:
        await follower.close()
    report = results[0]
    assert isinstance(report, ImportReport) and report.events == len(wanted)
    assert len(seen) == total and len({e.id for e in seen}) == total  # each once
    assert [e.position for e in seen] == sorted(e.position for e in seen)
    committed = await read_everything(pg)
    assert [e.id for e in committed] == [e.id for e in seen]  # the same order, nothing lost
    assert [as_tuple(e) for e in seen if e.stream_id.startswith("imp")] == [
        as_tuple(e) for e in wanted
    ]
    versions: dict[str, int] = {}
    for event in seen:  # every stream in version order inside the global order
        assert event.version == versions.get(event.stream_id, 0) + 1
        versions[event.stream_id] = event.version


async def test_postgres_batch_retries_after_a_younger_appender(pg: EventStore) -> None:
    """A batch that announced itself, then waits (here behind another transaction's new
    stream row, which it locks before "x") while a younger transaction appends to one of its
    streams and commits: it
    must not sort its version before that one; it retries with a new key."""
    await pg.append("x", [NewEvent("T", {"v": 1})])
    blocker = await asyncpg.connect(PG_DSN)
    watcher = await asyncpg.connect(PG_DSN)
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute(
            f'INSERT INTO "{_schema(pg)}".streams (stream_id, version) VALUES ($1, 0)', "a"
        )
        blocker_xid = await blocker.fetchval("SELECT xid(pg_current_xact_id())::text")
        task = asyncio.create_task(
            pg.import_events([ImportedEvent("x", 3, "T", {"v": 3}), ImportedEvent("a", 1, "T", {})])
        )
        # progress: the import waits for the blocker (the server's state: no event to await)
        while not await watcher.fetchval(  # noqa: ASYNC110
            "SELECT count(*) FROM pg_locks l WHERE NOT l.granted "
            "AND l.locktype = 'transactionid' AND l.transactionid::text = $1",
            blocker_xid,
        ):
            await asyncio.sleep(0.01)
        await pg.append("x", [NewEvent("T", {"v": 2})])  # younger: announced after the import
        await blocking.rollback()
        await asyncio.wait_for(task, timeout=30)
    finally:
        await blocker.close()
        await watcher.close()
    order = [e for e in await read_everything(pg) if e.stream_id == "x"]
    assert [e.data["v"] for e in order] == [1, 2, 3] and [e.version for e in order] == [1, 2, 3]


async def test_events_of_a_source_without_versions_are_refused_saying_why(
    store: EventStore,
) -> None:
    unnumbered = RecordedEvent(None, "s", None, "T", {}, {}, datetime.now(UTC), Position(0, 1))
    with pytest.raises(
        ImportRejectedError, match=r"has no stream version \(its source keeps none\)"
    ):
        await store.import_events([unnumbered])
    assert await read_everything(store) == []
