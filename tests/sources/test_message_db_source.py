"""MessageDbSource over a real Message DB (installed by its own script into a fresh database):
gap safety under concurrent writers in several categories, the fields, the filters, the
refusals, held_back, a rebuild, and the documented example."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from projectionist import (
    Application,
    ConfigurationError,
    EventDecodingError,
    Projection,
    ReadModelTransaction,
    RecordedEvent,
)
from projectionist.backends.postgres import MessageDbSource
from projectionist.errors import StoreUnavailableError
from projectionist.events import START, Position
from projectionist.partitions import Partition
from tests.conftest import PG_DSN, _drop_schema, new_schema_name
from tests.sources.message_db_install import ROOT, empty_database, install


def categories(*names: str) -> list[str]:
    """Categories of this test alone (the database is shared by the session's tests)."""
    tag = uuid.uuid4().hex[:8]
    return [f"{name}{tag}" for name in names]


async def writer(url: str) -> asyncpg.Connection:
    """Message DB's functions call each other unqualified: writers put its schema first."""
    return await asyncpg.connect(url, server_settings={"search_path": "message_store,public"})


async def write(
    connection: asyncpg.Connection,
    stream: str,
    type_: str = "Written",
    data: object = None,
    metadata: object = None,
    expected_version: int | None = None,
) -> uuid.UUID:
    message_id = uuid.uuid4()
    await connection.fetchval(
        "SELECT message_store.write_message($1, $2, $3, $4::jsonb, $5::jsonb, $6)",
        *(str(message_id), stream, type_, orjson.dumps(data or {"stream": stream}).decode()),
        *(None if metadata is None else orjson.dumps(metadata).decode(), expected_version),
    )
    return message_id


async def last_drawn(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        drawn: int = await connection.fetchval(
            "SELECT last_value FROM message_store.messages_global_position_seq"
        )
    finally:
        await connection.close()
    return drawn


def source(url: str, names: list[str]) -> MessageDbSource:
    return MessageDbSource(url, names, poll_interval=0.01)


# -- the gap stress: concurrent writers in three categories, two followers of two -----------

WRITERS = 8
TRANSACTIONS_PER_WRITER = 40


@dataclass
class Written:
    committed: dict[str, list[uuid.UUID]] = field(default_factory=dict)
    rolled_back: list[uuid.UUID] = field(default_factory=list)
    conflicts: int = 0


async def write_concurrently(url: str, names: list[str], seed: int, written: Written) -> None:
    """write_message in open transactions that sleep before committing; some roll back,
    some fail on a stale expected_version."""
    rng = random.Random(seed)
    connection = await writer(url)
    seen: dict[str, int] = {}  # this writer's idea of each stream's version (often stale)
    try:
        for _ in range(TRANSACTIONS_PER_WRITER):
            category = rng.choice(names)
            stream = f"{category}-{rng.randint(0, 3)}"
            ids: list[uuid.UUID] = []
            transaction = connection.transaction()
            await transaction.start()
            try:
                for _ in range(rng.randint(1, 3)):
                    expected = seen.get(stream, -1) if rng.random() < 0.3 else None
                    ids.append(await write(connection, stream, expected_version=expected))
                    seen[stream] = await connection.fetchval(
                        "SELECT message_store.stream_version($1)", stream
                    )
                    await asyncio.sleep(rng.random() * 0.004)
            except asyncpg.RaiseError:  # "Wrong expected version": the transaction is void
                await transaction.rollback()
                written.conflicts += 1
                written.rolled_back.extend(ids)
                seen.pop(stream, None)
                continue
            if rng.random() < 0.15:
                await transaction.rollback()
                written.rolled_back.extend(ids)
            else:
                await transaction.commit()
                written.committed.setdefault(category, []).extend(ids)
    finally:
        await connection.close()


def message_log() -> Projection:
    """One row per message, in the order projected; the unique id makes a double delivery
    fail."""
    projection = Projection("message_log", tables=["message_log"])

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS message_log (n BIGSERIAL PRIMARY KEY, "
            "message_id UUID NOT NULL UNIQUE, global_position BIGINT NOT NULL, "
            "stream TEXT NOT NULL)"
        )

    @projection.on("Written")
    async def record(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        await tx.execute(
            "INSERT INTO message_log (message_id, global_position, stream) VALUES ($1, $2, $3)",
            *(event.id, event.position.seq, event.stream_id),
        )

    return projection


@pytest.fixture
async def read_model_schemas() -> AsyncIterator[list[str]]:
    names = [new_schema_name(), new_schema_name()]
    yield names
    for name in names:
        await _drop_schema(name)


async def logged(app: Application) -> list[tuple[uuid.UUID, int]]:
    async with app.read_models.transaction() as tx:
        rows = await tx.fetch("SELECT message_id, global_position FROM message_log ORDER BY n")
    return [(row[0], row[1]) for row in rows]


async def test_concurrent_writers_every_committed_message_once_in_one_order(
    message_db: str, read_model_schemas: list[str]
) -> None:
    a, b, c = names = categories("a", "b", "c")
    written = Written()
    sources = [source(message_db, [a, b]) for _ in read_model_schemas]
    apps = [
        Application(source=s, read_models=f"{PG_DSN}?schema={schema}", projections=[message_log()])
        for s, schema in zip(sources, read_model_schemas, strict=True)
    ]
    async with sources[0], sources[1], apps[0], apps[1]:
        for app in apps:
            await app.setup()
        running = [asyncio.ensure_future(app.run()) for app in apps]
        try:
            await asyncio.gather(
                *(write_concurrently(message_db, names, seed, written) for seed in range(WRITERS))
            )
            last = await sources[0].last_committed()  # progress, not a clock, ends the run
            for app in apps:
                await app.wait_for("message_log", last, timeout=120)
        finally:
            for app in apps:
                app.stop()
            await asyncio.gather(*running)
        first, second = [await logged(app) for app in apps]
        expected = written.committed[a] + written.committed[b]
        assert sorted(message_id for message_id, _ in first) == sorted(expected)
        assert len(first) == len({message_id for message_id, _ in first})  # exactly once
        assert first == second  # the same order in both
        assert [p for _, p in first] == sorted(p for _, p in first)  # the global order
        assert not {i for i, _ in first} & set(written.rolled_back + written.committed[c])
        assert written.rolled_back and written.conflicts and written.committed[c]
        await apps[0].rebuild("message_log")
        assert await logged(apps[0]) == first  # a rebuild equals what was followed live


async def test_an_open_writer_holds_back_later_messages_of_other_categories(
    message_db: str,
) -> None:
    """The loss an ORDER BY global_position makes, made deterministic: a writer of A draws
    first and commits after a writer of B. Neither shows until both can, in order."""
    a, b = names = categories("a", "b")
    older, younger = await writer(message_db), await writer(message_db)
    async with source(message_db, names) as reader:
        try:
            before = (await reader.read_all()).checkpoint
            opened = older.transaction()
            await opened.start()
            first = await write(older, f"{a}-1")
            second = await write(younger, f"{b}-1")  # committed
            batch = await reader.read_all(before)
            assert batch.events == [] and batch.checkpoint < await reader.last_committed()
            held = await reader.held_back()
            assert held is not None and held.by is not None
            assert f"pid {older.get_server_pid()} (idle in transaction" in held.by
            assert repr(a) in held.by and "write_message" not in held.by  # no query text
            assert (await reader.backlog(before)).events == 1  # committed, waiting
            assert await reader.head() < await reader.last_committed()
            await opened.commit()
            batch = await reader.read_all(before)
            assert [event.id for event in batch.events] == [first, second]
            assert await reader.held_back() is None
            assert await reader.head() == await reader.last_committed() == batch.checkpoint
        finally:
            await older.close()
            await younger.close()


async def test_a_held_category_stops_the_horizon_at_its_floor(message_db: str) -> None:
    """A held lock stops the horizon at the last position drawn when this source last saw
    that lock free: a reader that saw it free reads what was drawn before; a reader that
    never did holds everything back (the holder may have drawn any position)."""
    a, b = names = categories("a", "b")
    connection, holder = await writer(message_db), await writer(message_db)
    warm, fresh = source(message_db, names), source(message_db, names)
    async with warm, fresh:
        try:
            early = await write(connection, f"{b}-1")
            await warm.head()  # sees a's lock free, after early was drawn
            opened = holder.transaction()
            await opened.start()
            await holder.fetchval("SELECT message_store.acquire_lock($1)", f"{a}-1")
            assert [event.id for event in (await warm.read_all()).events] == [early]
            assert await warm.held_back() is None
            assert (await fresh.read_all()).events == []
            held = await fresh.held_back()
            assert held is not None and f"pid {holder.get_server_pid()}" in (held.by or "")
            await opened.rollback()
            assert [event.id for event in (await fresh.read_all()).events] == [early]
        finally:
            await connection.close()
            await holder.close()


# -- the fields, the filters, the counts -------------------------------------------------


async def test_messages_carry_message_db_fields(message_db: str) -> None:
    [a] = categories("a")
    connection = await writer(message_db)
    try:
        first = await write(connection, f"{a}-7", "Opened", {"n": 1}, {"by": "me"})
        second = await write(connection, f"{a}-7", "Closed", {"n": 2}, expected_version=0)
        recorded = await connection.fetchval(
            "SELECT time FROM message_store.messages WHERE id = $1", first
        )
    finally:
        await connection.close()
    async with source(message_db, [a]) as reader:
        events = (await reader.read_all()).events
    assert [(e.id, e.stream_id, e.type, e.version) for e in events] == [
        (first, f"{a}-7", "Opened", 0),
        (second, f"{a}-7", "Closed", 1),
    ]
    assert (events[0].data, events[0].metadata, events[1].metadata) == ({"n": 1}, {"by": "me"}, {})
    assert events[0].recorded_at == recorded.replace(tzinfo=UTC)  # stored as UTC, zone-less
    assert abs(events[0].recorded_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert events[0].position < events[1].position and events[0].position.tx == 0


async def test_a_decoder_of_the_users_unwraps_data_and_a_bad_payload_is_named(
    message_db: str,
) -> None:
    [a] = categories("a")
    connection = await writer(message_db)
    try:
        await write(connection, f"{a}-1", "Wrapped", {"payload": {"n": 1}})
        bad = await write(connection, f"{a}-1", "Wrapped", {"other": 2})
    finally:
        await connection.close()

    def unwrap(text: str) -> dict[str, object]:
        return dict(orjson.loads(text)["payload"])

    async with MessageDbSource(message_db, [a], decode=unwrap) as reader:
        first = await reader.read_all(limit=1)
        assert [event.data for event in first.events] == [{"n": 1}]
        with pytest.raises(EventDecodingError, match=f"the data of message {bad} at ") as failed:
            await reader.read_all(first.checkpoint)
        assert isinstance(failed.value.__cause__, KeyError)
    with pytest.raises(ConfigurationError, match="decode must be a function"):
        MessageDbSource(message_db, [a], decode="json")  # type: ignore[arg-type]


async def test_types_and_partitions_are_filtered_and_the_checkpoint_covers_the_scan(
    message_db: str,
) -> None:
    a, b, other = categories("a", "b", "other")
    connection = await writer(message_db)
    rows = [(f"{(a, b, other)[n % 3]}-{n % 5}", "Kept" if n % 2 else "Other") for n in range(30)]
    try:
        ids = [await write(connection, stream, type_) for stream, type_ in rows]
    finally:
        await connection.close()
    mine = [(i, s, t) for i, (s, t) in zip(ids, rows, strict=True) if not s.startswith(other)]
    async with source(message_db, [a, b]) as reader:
        everything = await reader.read_all(limit=100)
        assert [e.id for e in everything.events] == [i for i, _, _ in mine]
        assert await reader.head() == everything.events[-1].position
        # The last message drawn is of another category: the checkpoint passes it.
        assert everything.checkpoint == Position(0, await last_drawn(message_db))
        part = Partition(1, 2)
        kept = await reader.read_all(everything.events[0].position, types=["Kept"], partition=part)
        assert [e.id for e in kept.events] == [
            i for i, s, t in mine[1:] if t == "Kept" and part.holds(s)
        ]
        assert kept.checkpoint >= everything.checkpoint  # the filtered ones were scanned
        assert await reader.count_after(START) == len(mine)
        assert await reader.count_after(START, part) == sum(1 for _, s, _ in mine if part.holds(s))
        paged = await reader.read_all(limit=4)
        assert paged.checkpoint == paged.events[-1].position == everything.events[3].position
        assert len((await reader.read_all(max_bytes=1)).events) == 1
        backlog = await reader.backlog(everything.events[9].position)
        assert (backlog.events, backlog.estimated) == (len(mine) - 10, False)
        assert backlog.oldest == everything.events[10].recorded_at


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [[], (), "account", ["a-1"], ["ok", ""], [3]])
def test_bad_categories_are_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="categor"):
        MessageDbSource(PG_DSN, bad)  # type: ignore[arg-type]


def test_a_category_with_a_dash_is_refused_saying_it_is_a_stream() -> None:
    with pytest.raises(ConfigurationError, match=r"'account-1' is not a category.*'account'"):
        MessageDbSource(PG_DSN, ["account-1"])


def test_bad_urls_are_refused_without_showing_the_password() -> None:
    for url in ("mysql://u:secret@h/db", "sqlite:///x.db", "not a url"):
        with pytest.raises(ConfigurationError, match="postgresql:// URL") as refused:
            MessageDbSource(url, ["account"])
        assert "secret" not in str(refused.value)


async def test_a_database_without_message_db_is_refused_and_a_second_install_works() -> None:
    """The session's database has Message DB already, so this install meets the existing
    message_store role (created once per server) and must not fail on it."""
    async with empty_database() as url:
        with pytest.raises(ConfigurationError, match="Message DB is not installed") as refused:
            await MessageDbSource(url, ["account"]).open()
        assert "install.sh" in str(refused.value)
        await install(url.rsplit("/", 1)[1])
        async with MessageDbSource(url, ["account"]) as reader:
            assert await reader.head() == START


async def test_an_unreachable_server_is_said_without_the_password() -> None:
    reader = MessageDbSource("postgresql://u:secret@127.0.0.1:1/db", ["account"])
    with pytest.raises(StoreUnavailableError) as refused:
        await reader.open()
    assert "secret" not in str(refused.value) and "***" in reader.url


async def test_a_cached_sequence_is_refused(message_db: str) -> None:
    """With CACHE > 1 a later writer may draw a smaller global position."""
    connection = await asyncpg.connect(message_db)
    try:
        await connection.execute(
            "ALTER SEQUENCE message_store.messages_global_position_seq CACHE 5"
        )
        with pytest.raises(ConfigurationError, match="CACHE 1"):
            await MessageDbSource(message_db, ["account"]).open()
    finally:
        await connection.execute(
            "ALTER SEQUENCE message_store.messages_global_position_seq CACHE 1"
        )
        await connection.close()


# -- the documented example ----------------------------------------------------------------


async def test_the_example_runs_against_message_db(message_db: str) -> None:
    schema = new_schema_name()
    env = dict(os.environ, MESSAGE_DB_URL=message_db, READ_MODELS_URL=f"{PG_DSN}?schema={schema}")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(ROOT / "examples/message_db_source.py")],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        await _drop_schema(schema)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[('account-1', 70), ('account-2', 5)]"


def test_the_example_is_the_one_in_the_guide() -> None:
    example = (ROOT / "examples/message_db_source.py").read_text()
    guide = (ROOT / "docs/sources/message-db.md").read_text()
    assert example.strip() in guide
