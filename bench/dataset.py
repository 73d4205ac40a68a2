"""The benchmark's one data set: a deterministic shop history, loaded into PostgreSQL or SQLite.

The rows come from ``examples/shop/history.py`` (seed 11, ``events // 5`` orders, cut at an
append boundary once ``events`` shop events are out), plus one rare event type of our own:
after every 99 shop events, one ``SupportTicketOpened`` in a stream of its own (1% of all
events). It is no order type, so ``order_summary`` holds exactly what it holds without it;
it is there so a filtered read of a rare type can be measured. Its ids come from a generator
of its own: the shop events are the same, byte for byte, as without it.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from examples.shop.history import generate_orders

from projectionist import create_store
from projectionist.backends.postgres import Connection, PostgresEventStore

RARE_TYPE = "SupportTicketOpened"
RARE_EVERY = 99
"""One rare event after every this many shop events: 1 in 100 of all events."""
CHUNK = 50_000
Row = tuple[str, str, int, str, str, str]
"""id, stream_id, version, type, data (JSON text), metadata (JSON text)."""


def history_rows(events: int) -> Iterator[Row]:
    """The data set's rows in order, with stream versions; ``events`` shop events (a few more
    if the last append overshoots) and one rare event per ``RARE_EVERY`` shop events."""
    versions: dict[str, int] = {}
    rare_rng = random.Random("rare-11")
    shop = 0
    for append in generate_orders(orders=max(events // 5, 1), seed=11):
        for event in append.events:
            version = versions[append.stream_id] = versions.get(append.stream_id, 0) + 1
            yield (str(event.id), append.stream_id, version, event.type,
                   orjson.dumps(event.data).decode(),
                   orjson.dumps(event.metadata).decode())  # fmt: skip
            shop += 1
            if shop % RARE_EVERY == 0:
                yield _rare(rare_rng, shop // RARE_EVERY)
        if shop >= events:
            return


def _rare(rng: random.Random, number: int) -> Row:
    data = {"ticket": number, "customer_id": f"customer-{rng.randrange(1, 5000):04d}"}
    event_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    return (str(event_id), f"ticket-{number:07d}", 1, RARE_TYPE, orjson.dumps(data).decode(),
            '{"source": "demo"}')  # fmt: skip


def chunks(events: int) -> Iterator[list[Row]]:
    rows: list[Row] = []
    for row in history_rows(events):
        rows.append(row)
        if len(rows) >= CHUNK:
            yield rows
            rows = []
    if rows:
        yield rows


# -- PostgreSQL --------------------------------------------------------------------------------


async def load_postgres(dsn: str, schema: str, events: int) -> int:
    """Write the data set into a new store in ``schema`` with COPY; the number of events."""
    store = create_store(dsn, schema=schema)
    assert isinstance(store, PostgresEventStore)
    written = 0
    async with store:
        await store.apply_schema()
        async with store.pool.acquire() as connection:
            for rows in chunks(events):
                written += await _copy(connection, schema, rows)
            await connection.execute(
                f'INSERT INTO "{schema}".streams (stream_id, version) '
                f'SELECT stream_id, max(version) FROM "{schema}".events GROUP BY stream_id'
            )
            await connection.execute(f'ANALYZE "{schema}".events')
    return written


async def _copy(connection: Connection, schema: str, rows: list[Row]) -> int:
    async with connection.transaction():  # one transaction id per chunk, like a batch import
        await connection.copy_records_to_table(
            "events",
            schema_name=schema,
            records=rows,
            columns=["id", "stream_id", "version", "type", "data", "metadata"],
        )
    return len(rows)


# -- SQLite ------------------------------------------------------------------------------------


async def load_sqlite(path: str, events: int) -> int:
    """The same rows in a new SQLite store file at ``path`` (schema by the store itself)."""
    store = create_store(f"sqlite:///{path}")
    async with store:
        await store.apply_schema()
    stamp = datetime.now(UTC).isoformat()
    connection = sqlite3.connect(path)
    written = 0
    try:
        for rows in chunks(events):
            with connection:
                connection.executemany(
                    "INSERT INTO events (id, stream_id, version, type, data, metadata, "
                    "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(*row, stamp) for row in rows],
                )
            written += len(rows)
        with connection:
            connection.execute(
                "INSERT INTO streams (stream_id, version) "
                "SELECT stream_id, max(version) FROM events GROUP BY stream_id"
            )
        connection.execute("ANALYZE")
    finally:
        connection.close()
    return written


def sqlite_rows(path: str, table: str, columns: str) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(path)
    try:
        return sorted(connection.execute(f"SELECT {columns} FROM {table}"))
    finally:
        connection.close()
