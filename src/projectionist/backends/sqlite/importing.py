"""One batch of a bulk import into the SQLite store: one write transaction, executemany.

SQLite runs one write transaction at a time, so the batch's stream versions cannot change
under it and its positions follow the head in input order (docs/importing.md).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import aiosqlite
import orjson

from ...errors import InvalidInputError
from ...events import Position
from ...importing import BatchWritten, ImportPlan, ImportRow, plan_batch, streams_of

# One JSON array parameter rather than one per value: no limit on the number of variables.
_VERSIONS = (
    "SELECT stream_id, version FROM streams WHERE stream_id IN (SELECT value FROM json_each(?))"
)
_STORED = "SELECT id, stream_id, version FROM events WHERE id IN (SELECT value FROM json_each(?))"
_INSERT = (
    "INSERT INTO events (id, stream_id, version, type, data, metadata, recorded_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_STREAM = (
    "INSERT INTO streams (stream_id, version) VALUES (?, ?) "
    "ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version"
)


async def import_batch(connection: aiosqlite.Connection, rows: list[ImportRow]) -> BatchWritten:
    """Plan ``rows`` against the stored streams and ids, then write them, inside the
    connection's write transaction (the caller's)."""
    plan = await _plan(connection, rows)
    if not plan.rows:
        return BatchWritten(0, plan.skipped, frozenset(), None, None)
    cursor = await connection.execute("SELECT coalesce(max(position), 0) FROM events")
    head = (await cursor.fetchone() or (0,))[0]
    # The time of the batch for events that bring none, in the form an append writes; given
    # times are kept as the same instant, in UTC, so that text order is time order.
    stamp = datetime.now(UTC)
    try:
        await connection.executemany(_INSERT, (_values(row, stamp) for row in plan.rows))
    except sqlite3.IntegrityError as exc:  # the plan saw every stored id: a bug, not input
        raise InvalidInputError(f"import batch refused by the database: {exc}") from exc
    await connection.executemany(_UPSERT_STREAM, plan.versions.items())
    cursor = await connection.execute(
        "SELECT min(position), max(position) FROM events WHERE position > ?", (head,)
    )
    first, last = await cursor.fetchone() or (0, 0)
    streams = frozenset(plan.versions)
    return BatchWritten(
        len(plan.rows), plan.skipped, streams, Position(0, first), Position(0, last)
    )


async def _plan(connection: aiosqlite.Connection, rows: Sequence[ImportRow]) -> ImportPlan:
    """The plan against every stored id of the batch (one indexed lookup each: a collision
    with another stream's event is named before anything is written)."""
    streams = orjson.dumps(streams_of(rows)).decode()
    cursor = await connection.execute(_VERSIONS, (streams,))
    versions = {str(s): int(v) for s, v in await cursor.fetchall()}
    ids = orjson.dumps([str(row.id) for row in rows]).decode()
    cursor = await connection.execute(_STORED, (ids,))
    stored = {uuid.UUID(i): (str(s), int(v)) for i, s, v in await cursor.fetchall()}
    return plan_batch(rows, versions, stored)


def _values(row: ImportRow, stamp: datetime) -> tuple[object, ...]:
    recorded_at = (row.recorded_at or stamp).astimezone(UTC).isoformat()
    return (str(row.id), row.stream_id, row.version, row.type, row.data, row.metadata, recorded_at)
