"""What must hold over every source that ships, each against the real thing: a projection
follows it, ``verify`` finds the live read model equal to a rebuild (after more events too),
a rebuild equals a fresh run, and the idempotency kit reads it.

Each source has a harness that writes events the way that system's own writers do; the
projection keeps one row per event (``n`` is unique) and a total per stream.
"""

from __future__ import annotations

import abc
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from eventsourcing.application import Application as EventsourcingApplication
from eventsourcing.domain import Aggregate, event
from eventsourcing.utils import get_topic

from projectionist import Application, EventSource, Projection, ReadModelTransaction, RecordedEvent
from projectionist.backends.nats import JetStreamSource
from projectionist.backends.postgres import (
    ColumnMap,
    MessageDbSource,
    PostgresTableSource,
    prepare_sql,
)
from projectionist.sources.eventsourcing import EventsourcingSource
from projectionist.testing import assert_idempotent
from tests.conftest import PG_DSN, _drop_schema, new_schema_name, require_postgres
from tests.sources.jetstream_support import NATS_URL, NatsStream, StreamMaker, connect_nats

STREAMS = 3


class Harness(abc.ABC):
    """A source of one kind, and a way to write to it as its own writers do."""

    event_type: str
    source: EventSource

    @abc.abstractmethod
    async def write(self, stream: int, n: int) -> None:
        """Append an event carrying ``n`` to stream number ``stream``."""


# -- the table source ----------------------------------------------------------------------


class TableHarness(Harness):
    event_type = "Counted"

    def __init__(self, schema: str, connection: asyncpg.Connection) -> None:
        self.schema, self.connection = schema, connection
        self.source = PostgresTableSource(
            PG_DSN, "tallies", schema=schema, columns=ColumnMap(tx="pj_tx"),
            strategy="transaction_id", poll_interval=0.01,
        )  # fmt: skip

    async def write(self, stream: int, n: int) -> None:
        await self.connection.execute(
            f'INSERT INTO "{self.schema}".tallies (stream, type, data) VALUES ($1, $2, $3)',
            *(f"tally-{stream}", self.event_type, orjson.dumps({"n": n}).decode()),
        )


@contextlib.asynccontextmanager
async def table_harness(tmp_path: Path) -> AsyncIterator[Harness]:
    await require_postgres()
    schema = new_schema_name()
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        await connection.execute(
            f'CREATE TABLE "{schema}".tallies (id BIGSERIAL PRIMARY KEY, stream TEXT, '
            "type TEXT, data JSONB, recorded_at TIMESTAMPTZ DEFAULT now())"
        )
        await connection.execute(prepare_sql("tallies", schema=schema))
        harness = TableHarness(schema, connection)
        async with harness.source:
            yield harness
    finally:
        await connection.close()
        await _drop_schema(schema)


# -- the eventsourcing library -------------------------------------------------------------


class Tally(Aggregate):
    @event("Started")
    def __init__(self, name: str) -> None:
        self.name = name

    @event("Counted")
    def count(self, n: int) -> None:
        self.last = n


class Tallies(EventsourcingApplication[uuid.UUID]):
    pass


class EventsourcingHarness(Harness):
    event_type = get_topic(Tally.Counted)  # type: ignore[attr-defined]

    def __init__(self, path: Path) -> None:
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
        self.tallies = Tallies(env=env)
        self.source = EventsourcingSource(self.tallies, poll_interval=0.01)
        self.streams: dict[int, Tally] = {}

    async def write(self, stream: int, n: int) -> None:
        tally = self.streams.setdefault(stream, Tally(f"tally-{stream}"))
        tally.count(n)
        self.tallies.save(tally)


@contextlib.asynccontextmanager
async def eventsourcing_harness(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = EventsourcingHarness(tmp_path / "tallies.db")
    try:
        async with harness.source:
            yield harness
    finally:
        harness.tallies.close()


# -- Message DB ----------------------------------------------------------------------------


class MessageDbHarness(Harness):
    event_type = "Counted"

    def __init__(self, url: str, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.category = f"tally{uuid.uuid4().hex[:8]}"  # the database is the session's
        self.source = MessageDbSource(url, [self.category], poll_interval=0.01)

    async def write(self, stream: int, n: int) -> None:
        await self.connection.fetchval(
            "SELECT message_store.write_message($1, $2, $3, $4::jsonb)",
            *(str(uuid.uuid4()), f"{self.category}-{stream}", self.event_type),
            orjson.dumps({"n": n}).decode(),
        )


@contextlib.asynccontextmanager
async def message_db_harness(url: str) -> AsyncIterator[Harness]:
    # Message DB's functions call each other unqualified: its writers put its schema first.
    connection = await asyncpg.connect(url, server_settings={"search_path": "message_store"})
    try:
        harness = MessageDbHarness(url, connection)
        async with harness.source:
            yield harness
    finally:
        await connection.close()


# -- NATS JetStream -------------------------------------------------------------------------


class JetStreamHarness(Harness):
    event_type = "Counted"

    def __init__(self, stream: NatsStream) -> None:
        self.stream = stream
        self.source = JetStreamSource(NATS_URL, stream.name, poll_interval=0.01)

    async def write(self, stream: int, n: int) -> None:
        await self.stream.js.publish(
            f"{self.stream.name}.tally-{stream}.{self.event_type}", orjson.dumps({"n": n})
        )


@contextlib.asynccontextmanager
async def jet_stream_harness() -> AsyncIterator[Harness]:
    client = await connect_nats()
    maker = StreamMaker(client)
    try:
        harness = JetStreamHarness(await maker())
        async with harness.source:
            yield harness
    finally:
        for name in maker.made:
            await client.jetstream().delete_stream(name)
        await client.close()


Made = contextlib.AbstractAsyncContextManager[Harness]
HARNESSES: dict[str, Callable[[Path, str], Made]] = {
    "postgres_table": lambda tmp_path, message_db: table_harness(tmp_path),
    "eventsourcing": lambda tmp_path, message_db: eventsourcing_harness(tmp_path),
    "message_db": lambda tmp_path, message_db: message_db_harness(message_db),
    "nats_jetstream": lambda tmp_path, message_db: jet_stream_harness(),
}


@pytest.fixture(params=sorted(HARNESSES))
async def harness(
    request: pytest.FixtureRequest, tmp_path: Path, message_db: str
) -> AsyncIterator[Harness]:
    async with HARNESSES[request.param](tmp_path, message_db) as made:
        yield made


def tallies(event_type: str) -> Projection:
    """A row per event and a total per stream, both set (not added): safe to replay."""
    projection = Projection("tallies", tables=["tally_events", "tally_totals"])

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS tally_events (n BIGINT PRIMARY KEY, stream TEXT NOT NULL)"
        )
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS tally_totals (stream TEXT PRIMARY KEY, last BIGINT)"
        )

    @projection.on(event_type)
    async def counted(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        n = event.data["n"]
        await tx.execute(
            "INSERT INTO tally_events (n, stream) VALUES ($1, $2) ON CONFLICT (n) DO NOTHING",
            *(n, event.stream_id),
        )
        await tx.execute(
            "INSERT INTO tally_totals (stream, last) VALUES ($1, $2) "
            "ON CONFLICT (stream) DO UPDATE SET last = excluded.last",
            *(event.stream_id, n),
        )

    return projection


async def rows(app: Application) -> list[Any]:
    async with app.read_models.transaction() as tx:
        return [tuple(row) for row in await tx.fetch("SELECT n FROM tally_events ORDER BY n")]


async def write_many(harness: Harness, numbers: range) -> None:
    for n in numbers:
        await harness.write(n % STREAMS, n)
    harness.source.changes.notify()


async def test_follow_verify_rebuild_and_the_idempotency_kit(
    harness: Harness, tmp_path: Path
) -> None:
    await write_many(harness, range(30))
    projection = tallies(harness.event_type)
    app = Application(
        source=harness.source,
        read_models=f"sqlite:///{tmp_path / 'read_models.db'}",
        projections=[projection],
    )
    async with app:
        await app.setup()
        await app.run_until_caught_up()
        assert await rows(app) == [(n,) for n in range(30)]
        verified = await app.verify("tallies")
        assert verified.ok, verified
        await write_many(harness, range(30, 45))
        await app.run_until_caught_up()
        assert await rows(app) == [(n,) for n in range(45)]
        assert (await app.verify("tallies")).ok
        assert await app.rebuild("tallies") >= 45
        assert await rows(app) == [(n,) for n in range(45)]
        [status] = await app.status()
        assert (status.lag, status.position) == (0, await harness.source.head())
    found = await assert_idempotent(
        projection, harness.source, "SELECT stream, last FROM tally_totals ORDER BY stream"
    )
    assert sorted(row[1] for row in found) == [n for n in range(45) if n >= 45 - STREAMS]
