"""The SQL of the SQLite event store: placeholders, event rows, the insert and the page read.

SQL elsewhere in the package is written with PostgreSQL's ``$n`` placeholders and
translated here, so that a statement is written once for both databases.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiosqlite
import orjson

from ...allocation import fewer_collections
from ...errors import InvalidInputError
from ...events import (
    EncodedEvent,
    Position,
    RecordedEvent,
    new_position,
    new_recorded_event,
    validate_max_bytes,
)
from ...partitions import Partition
from ...store import EventBatch

_PLACEHOLDER = re.compile(r"\$(\d+)")
EVENT_COLUMNS = (
    "e.position, e.id, e.stream_id, e.version, e.type, e.data, e.metadata, e.recorded_at"
)
_SQLITE_MAX_VARIABLES = 32766
_APPEND_COLUMNS = 7


@functools.lru_cache(maxsize=512)
def to_sqlite_placeholders(sql: str) -> str:
    """``$1`` -> ``?1``: SQLite's numbered parameters, so SQL is written once for both."""
    translated: str = _PLACEHOLDER.sub(r"?\1", sql)
    return translated


def event_from_row(row: Sequence[Any], at: int = 0) -> RecordedEvent:
    """Columns position, id, stream_id, version, type, data, metadata, recorded_at, from
    index ``at`` on (on the hot path of every read: one tuple built in one step, no JSON
    parse of empty metadata)."""
    metadata = row[at + 6]
    return new_recorded_event(
        (
            uuid.UUID(row[at + 1]),
            row[at + 2],
            row[at + 3],
            row[at + 4],
            orjson.loads(row[at + 5]),
            {} if metadata == "{}" else orjson.loads(metadata),
            datetime.fromisoformat(row[at + 7]),
            new_position((0, row[at])),
        )
    )


async def insert_events(
    connection: aiosqlite.Connection,
    stream_id: str,
    current: int,
    encoded: Sequence[EncodedEvent],
    stamp: str,
) -> list[int]:
    """Insert ``encoded`` after version ``current`` of the stream; their positions, in order.

    In chunks: one statement may bind at most ``_SQLITE_MAX_VARIABLES`` values.
    """
    positions: list[int] = []
    chunk = _SQLITE_MAX_VARIABLES // _APPEND_COLUMNS
    for start in range(0, len(encoded), chunk):
        part = encoded[start : start + chunk]
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(part))
        params: list[object] = []
        for offset, event in enumerate(part, start=current + start + 1):
            params += (
                str(event.id),
                stream_id,
                offset,
                event.type,
                event.data,
                event.metadata,
                stamp,
            )
        try:
            cursor = await connection.execute(
                "INSERT INTO events (id, stream_id, version, type, data, metadata, "
                f"recorded_at) VALUES {values} RETURNING position",
                params,
            )
        except sqlite3.IntegrityError as exc:
            raise InvalidInputError(
                f"append to stream {stream_id!r}: an event id already exists ({exc})"
            ) from exc
        positions += sorted(row[0] for row in await cursor.fetchall())
    return positions


async def read_all_on(
    connection: aiosqlite.Connection,
    after: Position,
    limit: int,
    wanted: list[str] | None,
    max_bytes: int | None = None,
    partition: Partition | None = None,
) -> EventBatch:
    type_filter = ""
    params: list[object] = [after.seq]
    if wanted is not None:
        type_filter = f"AND e.type IN ({', '.join('?' * len(wanted))})" if wanted else "AND 0"
        params += wanted
    part = (partition or Partition(0, 1)).validate()
    if part.count > 1:  # pj_partition is partition_of, registered on every connection
        type_filter += " AND pj_partition(e.stream_id, ?) = ?"
        params += [part.count, part.index]
    params += [limit, validate_max_bytes(max_bytes)]
    # One statement: the page and the head it was read against, from one snapshot. The page
    # ends at ``limit`` events or once ``max_bytes`` of payload are reached.
    sql = (
        f"SELECT h.head, page.* FROM (SELECT max(position) AS head FROM events) h "
        "LEFT JOIN (SELECT w.* FROM (SELECT c.*, count(*) OVER () AS fetched, "
        "sum(c.size) OVER (ORDER BY c.position) - c.size AS before FROM ("
        f"SELECT {EVENT_COLUMNS}, length(e.data) + length(e.metadata) AS size FROM events e "
        f"WHERE e.position > ? {type_filter} ORDER BY e.position LIMIT ?) c) w "
        "WHERE w.before < ?) page ON 1 ORDER BY page.position"
    )
    with fewer_collections():
        cursor = await connection.execute(sql, params)
        rows = list(await cursor.fetchall())
        events = [event_from_row(row, 1) for row in rows if row[1] is not None]
    if len(events) == limit or (events and rows[0][10] > len(events)):
        return EventBatch(events, events[-1].position)  # cut by count or by bytes
    head = rows[0][0] if rows and rows[0][0] is not None else 0
    return EventBatch(events, max(after, Position(0, head)))
