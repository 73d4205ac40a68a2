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

_new_object = object.__new__
_set_slot = object.__setattr__  # what UUID.__init__ uses itself: its slots are read-only
_SAFE_UNKNOWN = uuid.SafeUUID.unknown
_PLACEHOLDER = re.compile(r"\$(\d+)")
EVENT_COLUMNS = (
    "e.position, e.id, e.stream_id, e.version, e.type, e.data, e.metadata, e.recorded_at"
)
_SQLITE_MAX_VARIABLES = 32766
_APPEND_COLUMNS = 7
_FIRST_ROWS = 500  # a page's first chunk of rows, before their size is known


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
            uuid_from_text(row[at + 1]),
            row[at + 2],
            row[at + 3],
            row[at + 4],
            orjson.loads(row[at + 5]),
            {} if metadata == "{}" else orjson.loads(metadata),
            datetime.fromisoformat(row[at + 7]),
            new_position((0, row[at])),
        )
    )


def events_from_page(rows: Sequence[Any]) -> list[RecordedEvent]:
    """``read_all_on``'s rows (head, the event columns, size) as events: ``event_from_row``
    in one loop, its rows unpacked, and each recorded_at parsed once per run of equal
    stamps (the events of one append share theirs; datetimes are immutable)."""
    events: list[RecordedEvent] = []
    append, loads, make, position = events.append, orjson.loads, new_recorded_event, new_position
    stamp, when = None, None
    for _, seq, id_, stream_id, version, type_, data, metadata, recorded_at, _ in rows:
        if recorded_at != stamp:
            stamp, when = recorded_at, datetime.fromisoformat(recorded_at)
        append(
            make(
                (
                    uuid_from_text(id_),
                    stream_id,
                    version,
                    type_,
                    loads(data),
                    {} if metadata == "{}" else loads(metadata),
                    when,
                    position((0, seq)),
                )
            )
        )
    return events


def uuid_from_text(text: str) -> uuid.UUID:
    """``uuid.UUID(text)`` for the hex forms the store writes, at half its cost: the same
    parse of the same digits (``UUID.__init__`` also drops the dashes and reads 32 hex
    digits with ``int(..., 16)``), without its keyword dispatch. Other forms (braces,
    ``urn:uuid:``) and errors are ``uuid.UUID``'s own."""
    digits = text.replace("-", "")
    if len(digits) != 32:
        return uuid.UUID(text)
    value = _new_object(uuid.UUID)
    _set_slot(value, "int", int(digits, 16))
    _set_slot(value, "is_safe", _SAFE_UNKNOWN)
    return value


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
    """The page after ``after``, on a connection inside a transaction (its one snapshot).

    One plain keyset statement in index order, no window and no re-sort; the head it was
    read against comes in the same statement (an uncorrelated subquery, evaluated once).
    The page ends at ``limit`` events or once ``max_bytes`` of payload are reached, counted
    here while its rows stream (the statement stops stepping there)."""
    type_filter = ""
    params: list[object] = [after.seq]
    if wanted is not None:
        type_filter = f"AND e.type IN ({', '.join('?' * len(wanted))})" if wanted else "AND 0"
        params += wanted
    part = (partition or Partition(0, 1)).validate()
    if part.count > 1:  # pj_partition is partition_of, registered on every connection
        type_filter += " AND pj_partition(e.stream_id, ?) = ?"
        params += [part.count, part.index]
    params.append(limit)
    budget = validate_max_bytes(max_bytes)
    sql = (
        f"SELECT (SELECT max(position) FROM events), {EVENT_COLUMNS}, "
        "length(e.data) + length(e.metadata) FROM events e "
        f"WHERE e.position > ? {type_filter} ORDER BY e.position LIMIT ?"
    )
    with fewer_collections():
        rows, cut = await _page_rows(connection, sql, params, limit, budget)
        events = events_from_page(rows)
    if cut or len(events) == limit:
        return EventBatch(events, events[-1].position)  # cut by count or by bytes
    if rows:
        return EventBatch(events, max(after, Position(0, rows[0][0])))
    if not type_filter:
        return EventBatch([], after)  # nothing at all after it
    # A filtered read that found nothing may have scanned past events: the head, read in
    # the same transaction, is of the same snapshot (SQLite has no horizon to lean on).
    cursor = await connection.execute("SELECT max(position) FROM events")
    row = await cursor.fetchone()
    head = row[0] if row is not None and row[0] is not None else 0
    return EventBatch([], max(after, Position(0, head)))


async def _page_rows(
    connection: aiosqlite.Connection, sql: str, params: list[object], limit: int, budget: int
) -> tuple[list[Any], bool]:
    """The page's rows (payload size last) and whether ``budget`` cut it short: a row is
    kept while the payload before it is under the budget. Fetched in a few chunks sized
    from the rows seen so far, so that the rows held past the budget stay few (each chunk
    is one hop to the connection's thread, not one per row)."""
    rows: list[Any] = []
    size = 0
    want = min(limit, _FIRST_ROWS)
    cursor = await connection.execute(sql, params)
    while True:
        chunk = list(await cursor.fetchmany(want))
        for row in chunk:
            if size >= budget:
                await cursor.close()  # the statement stops stepping here
                return rows, True
            rows.append(row)
            size += row[-1]
        if len(chunk) < want or len(rows) == limit:
            return rows, False  # the statement is done (or its LIMIT is reached)
        left = budget - size
        want = min(limit - len(rows), max(_FIRST_ROWS, left * len(rows) // max(size, 1) + 1))
