"""PostgresTableSource over a foreign table on a real PostgreSQL: gap safety under concurrent
writers that take no lock, the refusals, filtering, an Application over it, and the CLI."""

from __future__ import annotations

import asyncio
import random
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest
from typer.testing import CliRunner

from projectionist import (
    Application,
    ConfigurationError,
    EventDecodingError,
    InvalidInputError,
    Projection,
    ReadModelTransaction,
    RecordedEvent,
)
from projectionist.backends.postgres import ColumnMap, PostgresTableSource, prepare_sql
from projectionist.cli import app as cli
from projectionist.events import START, Position
from projectionist.partitions import Partition
from tests.conftest import PG_DSN, _drop_schema, new_schema_name, require_postgres

TABLE = "orders_log"
PREPARED = ColumnMap(tx="pj_tx", metadata="meta")


async def create_table(schema: str) -> None:
    """A table another system writes: a sequence, no transaction id (until prepared)."""
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        await connection.execute(
            f'CREATE TABLE "{schema}".{TABLE} (id BIGSERIAL PRIMARY KEY, stream TEXT NOT NULL, '
            "type TEXT NOT NULL, data JSONB NOT NULL, meta TEXT, "
            "recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
    finally:
        await connection.close()


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    await require_postgres()
    name = new_schema_name()
    await create_table(name)
    yield name
    await _drop_schema(name)


@pytest.fixture
async def prepared(schema: str) -> str:
    """The table with ``pj_tx`` added by the reviewed migration."""
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(prepare_sql(TABLE, schema=schema))
    finally:
        await connection.close()
    return schema


def table_source(schema: str, **options: object) -> PostgresTableSource:
    return PostgresTableSource(
        PG_DSN,
        TABLE,
        schema=schema,
        columns=PREPARED,
        strategy="transaction_id",
        poll_interval=0.01,
        **options,  # type: ignore[arg-type]
    )


async def insert(connection: asyncpg.Connection, schema: str, stream: str, type_: str) -> int:
    row_id: int = await connection.fetchval(
        f'INSERT INTO "{schema}".{TABLE} (stream, type, data) VALUES ($1, $2, $3::jsonb) '
        "RETURNING id",
        *(stream, type_, orjson.dumps({"stream": stream}).decode()),
    )
    return row_id


async def all_visible(source: PostgresTableSource) -> None:
    """Wait until readers see every committed row: the horizon is the whole cluster's, so
    another session's open transaction (another test's) may hold fresh rows back a while."""
    assert await source.wait_until_visible(await source.last_committed(), timeout=120)


# -- the gap stress ----------------------------------------------------------------------

WRITERS = 8
TRANSACTIONS_PER_WRITER = 50


async def write_concurrently(
    schema: str, seed: int, committed: list[int], lock: bool = False
) -> None:
    """Plain INSERTs, no lock (unless ``lock``): short sleeps inside open transactions,
    some rollbacks."""
    rng = random.Random(seed)
    connection = await asyncpg.connect(PG_DSN)
    try:
        for n in range(TRANSACTIONS_PER_WRITER):
            transaction = connection.transaction()
            await transaction.start()
            if lock:
                await connection.execute(f'LOCK TABLE "{schema}".{TABLE} IN EXCLUSIVE MODE')
            ids = []
            for _ in range(rng.randint(1, 3)):
                ids.append(await insert(connection, schema, f"w{seed}-{n % 5}", "Written"))
                await asyncio.sleep(rng.random() * 0.004)
            if rng.random() < 0.2:
                await transaction.rollback()
            else:
                await transaction.commit()
                committed.extend(ids)
    finally:
        await connection.close()


async def follow(
    source: PostgresTableSource, end: asyncio.Future[Position], limit: int, max_bytes: int | None
) -> list[int]:
    """Read after the checkpoint until the writers have ended and it reaches their last row."""
    seen: list[int] = []
    checkpoint = START
    while True:
        batch = await source.read_all(checkpoint, limit=limit, max_bytes=max_bytes)
        seen.extend(event.position.seq for event in batch.events)
        assert batch.checkpoint >= checkpoint
        checkpoint = batch.checkpoint
        if batch.events:
            continue
        if end.done() and checkpoint >= end.result():
            return seen
        await source.wait_for_events(checkpoint, timeout=0.05)


async def test_concurrent_unlocked_writers_every_committed_row_once_in_one_order(
    prepared: str,
) -> None:
    committed: list[int] = []
    end: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
    async with table_source(prepared) as first, table_source(prepared) as second:
        followers = [
            asyncio.ensure_future(follow(first, end, limit=7, max_bytes=None)),
            asyncio.ensure_future(follow(second, end, limit=100, max_bytes=300)),
        ]
        await asyncio.gather(
            *(write_concurrently(prepared, seed, committed) for seed in range(WRITERS))
        )
        end.set_result(await first.last_committed())  # progress, not a clock, ends the reads
        seen_first, seen_second = await asyncio.wait_for(asyncio.gather(*followers), 600)
    assert len(committed) > WRITERS * TRANSACTIONS_PER_WRITER // 2
    assert sorted(seen_first) == sorted(committed)  # each committed row, none rolled back
    assert len(set(seen_first)) == len(seen_first)  # exactly once
    assert seen_first == seen_second  # in the same order


async def test_the_promise_over_writers_that_lock_the_table(schema: str) -> None:
    """strategy='commit_order_promised' is right when the writers keep the promise."""
    committed: list[int] = []
    end: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
    promised = PostgresTableSource(
        PG_DSN,
        TABLE,
        schema=schema,
        columns=ColumnMap(metadata="meta"),
        strategy="commit_order_promised",
        poll_interval=0.01,
    )
    async with promised:
        following = asyncio.ensure_future(follow(promised, end, limit=5, max_bytes=None))
        await asyncio.gather(
            *(write_concurrently(schema, seed, committed, lock=True) for seed in range(4))
        )
        end.set_result(await promised.last_committed())
        seen = await asyncio.wait_for(following, 600)
    assert seen == sorted(committed)


async def test_a_row_behind_an_open_transaction_holds_back_the_younger_ones(
    prepared: str,
) -> None:
    """The loss a bare ORDER BY id makes, made deterministic: an older transaction commits
    after a younger one. The source shows neither row until both are readable in order."""
    older, younger = await asyncpg.connect(PG_DSN), await asyncpg.connect(PG_DSN)
    async with table_source(prepared) as source:
        try:
            opened = older.transaction()
            await opened.start()
            older_id = await insert(older, prepared, "a", "Older")
            younger_id = await insert(younger, prepared, "b", "Younger")  # committed
            batch = await source.read_all()
            assert (batch.events, batch.checkpoint) == ([], START)
            assert (await source.backlog(START)).events == 1  # committed, waiting
            assert await source.held_back() is not None
            await opened.commit()
            await all_visible(source)
            batch = await source.read_all()
            assert [event.position.seq for event in batch.events] == [older_id, younger_id]
            assert await source.count_after(START) == 2
            assert await source.held_back() is None
        finally:
            await older.close()
            await younger.close()


# -- reading, filtering, what a table without versions or ids gets -------------------------


async def write_rows(schema: str, rows: list[tuple[str, str]]) -> list[int]:
    connection = await asyncpg.connect(PG_DSN)
    try:
        return [await insert(connection, schema, stream, type_) for stream, type_ in rows]
    finally:
        await connection.close()


async def test_events_decode_and_filters_apply_on_the_source_side(prepared: str) -> None:
    rows = [(f"s{n % 4}", "Kept" if n % 2 else "Other") for n in range(20)]
    ids = await write_rows(prepared, rows)
    async with table_source(prepared) as source:
        await all_visible(source)
        everything = await source.read_all(limit=100)
        event = everything.events[0]
        assert (event.stream_id, event.type, event.data) == ("s0", "Other", {"stream": "s0"})
        assert (event.version, event.id, event.metadata) == (None, None, {})
        assert await source.head() == everything.checkpoint == everything.events[-1].position
        kept = await source.read_all(types=["Kept"], partition=Partition(1, 2))
        expected = [
            i
            for i, (stream, type_) in zip(ids, rows, strict=True)
            if type_ == "Kept" and Partition(1, 2).holds(stream)
        ]
        assert [e.position.seq for e in kept.events] == expected
        assert kept.checkpoint == everything.checkpoint  # the filtered rows were scanned
        none = await source.read_all(types=["Nothing"])
        assert (none.events, none.checkpoint) == ([], everything.checkpoint)
        assert await source.count_after(START, Partition(1, 2)) == sum(
            1 for stream, _ in rows if Partition(1, 2).holds(stream)
        )
        paged = await source.read_all(limit=5)
        assert paged.checkpoint == paged.events[-1].position == everything.events[4].position
        assert len((await source.read_all(max_bytes=1)).events) == 1


async def test_mapped_versions_ids_and_metadata_are_read(schema: str) -> None:
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(
            f'CREATE TABLE "{schema}".mapped (seq BIGSERIAL PRIMARY KEY, topic TEXT, kind TEXT, '
            "body JSON, extra JSONB, at TIMESTAMPTZ DEFAULT now(), rev INT, uid UUID)"
        )
        event_id = uuid.uuid4()
        await connection.execute(
            f'INSERT INTO "{schema}".mapped (topic, kind, body, extra, rev, uid) '
            """VALUES ('t', 'K', '{"a": 1}', '{"m": true}', 3, $1)""",
            event_id,
        )
    finally:
        await connection.close()
    columns = ColumnMap(
        position="seq", stream="topic", type="kind", data="body", time="at",
        version="rev", id="uid", metadata="extra",
    )  # fmt: skip
    source = PostgresTableSource(
        PG_DSN, "mapped", schema=schema, columns=columns, strategy="commit_order_promised"
    )
    async with source:
        [event] = (await source.read_all()).events
    assert (event.id, event.version, event.data, event.metadata) == (
        event_id, 3, {"a": 1}, {"m": True},
    )  # fmt: skip
    assert event.position == Position(0, 1)


async def test_a_bytea_payload_is_decoded_by_the_users_decoder_and_a_bad_one_is_named(
    schema: str,
) -> None:
    """Compressed bytes in a bytea column: the user's decoder makes the data; a row it cannot
    decode stops the read at that row with an EventDecodingError naming it, nothing after."""
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(
            f'CREATE TABLE "{schema}".packed (id BIGSERIAL PRIMARY KEY, stream TEXT, type TEXT, '
            "payload BYTEA, recorded_at TIMESTAMPTZ DEFAULT now())"
        )
        for payload in (zlib.compress(b'{"n": 1}'), zlib.compress(b'{"n": 2}'), b"not zlib"):
            await connection.execute(
                f'INSERT INTO "{schema}".packed (stream, type, payload) VALUES ($1, $2, $3)',
                *("s", "Packed", payload),
            )
    finally:
        await connection.close()

    def unpack(payload: bytes) -> dict[str, object]:
        assert isinstance(payload, bytes)  # the driver's value, untouched
        return dict(orjson.loads(zlib.decompress(payload)))

    source = PostgresTableSource(
        PG_DSN, "packed", schema=schema, columns=ColumnMap(data="payload"),
        strategy="commit_order_promised", decode=unpack,
    )  # fmt: skip
    async with source:
        first = await source.read_all(limit=2)
        assert [event.data for event in first.events] == [{"n": 1}, {"n": 2}]
        with pytest.raises(EventDecodingError, match=r"packed\" row 3: error: ") as failed:
            await source.read_all(first.checkpoint)
        assert isinstance(failed.value.__cause__, zlib.error)
    listing = PostgresTableSource(
        PG_DSN, "packed", schema=schema, columns=ColumnMap(data="payload"),
        strategy="commit_order_promised", decode=lambda payload: [payload],  # type: ignore[arg-type,return-value]
    )  # fmt: skip
    async with listing:
        with pytest.raises(EventDecodingError, match="decoded to list, not a dict"):
            await listing.read_all()
    with pytest.raises(ConfigurationError, match="decode must be a function"):
        PostgresTableSource(PG_DSN, "packed", strategy="commit_order_promised", decode="json")  # type: ignore[arg-type]


# -- refusals ------------------------------------------------------------------------------


def test_a_source_without_a_strategy_is_refused_with_the_reason_and_the_ways_out() -> None:
    with pytest.raises(ConfigurationError) as refused:
        PostgresTableSource(PG_DSN, TABLE, columns=PREPARED)
    message = str(refused.value)
    assert "bare sequence loses events" in message
    assert "commits after a younger one" in message
    assert "projectionist source prepare" in message and "commit_order_promised" in message


def test_a_bare_sequence_is_refused_as_a_transaction_id_strategy() -> None:
    with pytest.raises(ConfigurationError, match=r"columns\.tx") as refused:
        PostgresTableSource(PG_DSN, TABLE, strategy="transaction_id")
    assert "projectionist source prepare" in str(refused.value)
    with pytest.raises(ConfigurationError, match="unknown strategy"):
        PostgresTableSource(PG_DSN, TABLE, strategy="order_by_id")  # type: ignore[arg-type]


def test_identifiers_are_validated() -> None:
    with pytest.raises(InvalidInputError, match="table name"):
        PostgresTableSource(PG_DSN, 'x"; DROP', strategy="commit_order_promised")
    with pytest.raises(InvalidInputError, match="stream column"):
        PostgresTableSource(
            PG_DSN, TABLE, columns=ColumnMap(stream="a b"), strategy="commit_order_promised"
        )


# -- an Application over the table ---------------------------------------------------------


def row_log() -> Projection:
    """One read-model row per event; the primary key makes a double delivery fail."""
    projection = Projection("row_log", tables=["row_log"])

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS row_log (log_id BIGINT PRIMARY KEY, stream TEXT NOT NULL)"
        )

    @projection.on("Kept")
    async def record(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        await tx.execute(
            "INSERT INTO row_log (log_id, stream) VALUES ($1, $2)",
            *(event.position.seq, event.stream_id),
        )

    return projection


@pytest.fixture(params=["sqlite", "postgres"])
async def read_models_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'read_models.db'}"
        return
    name = new_schema_name()
    yield f"{PG_DSN}?schema={name}"
    await _drop_schema(name)


async def test_an_application_projects_the_table_and_a_rebuild_equals_a_fresh_run(
    prepared: str, read_models_url: str
) -> None:
    ids = await write_rows(prepared, [(f"s{n}", "Kept" if n % 3 else "Other") for n in range(12)])
    source = table_source(prepared)
    async with (
        source,
        Application(source=source, read_models=read_models_url, projections=[row_log()]) as app,
    ):
        await app.setup()
        await all_visible(source)
        [before] = await app.status()
        assert (before.lag, before.head) == (12, Position(before.head.tx, ids[-1]))
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            fresh = [tuple(r) for r in await tx.fetch("SELECT * FROM row_log ORDER BY log_id")]
        assert [r[0] for r in fresh] == [i for n, i in enumerate(ids) if n % 3]
        await app.rebuild("row_log")
        async with app.read_models.transaction() as tx:
            rebuilt = [tuple(r) for r in await tx.fetch("SELECT * FROM row_log ORDER BY log_id")]
        assert rebuilt == fresh
        assert (await app.verify("row_log")).ok
        [after] = await app.status()
        assert after.lag == 0


# -- the CLI -------------------------------------------------------------------------------


async def columns_of(schema: str) -> set[str]:
    connection = await asyncpg.connect(PG_DSN)
    try:
        rows = await connection.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = $2",
            *(schema, TABLE),
        )
    finally:
        await connection.close()
    return {row[0] for row in rows}


async def test_cli_prints_the_migration_and_applies_it(schema: str) -> None:
    args = ["source", "prepare", "--url", PG_DSN, "--table", TABLE, "--schema", schema]
    runner = CliRunner()
    printed = await asyncio.to_thread(runner.invoke, cli, [*args, "--sql"])
    assert printed.exit_code == 0, printed.output
    assert printed.output == prepare_sql(TABLE, schema=schema)
    assert "pj_tx" not in await columns_of(schema)
    declined = await asyncio.to_thread(runner.invoke, cli, args, input="n\n")
    assert declined.exit_code == 1 and "pj_tx" not in await columns_of(schema)
    applied = await asyncio.to_thread(runner.invoke, cli, [*args, "--yes"])
    assert applied.exit_code == 0, applied.output
    assert "pj_tx" in await columns_of(schema)
    await write_rows(schema, [("s", "Kept")])
    async with table_source(schema) as source:
        await all_visible(source)
        assert len((await source.read_all()).events) == 1
