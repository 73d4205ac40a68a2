"""One batch of a bulk import into the PostgreSQL store: binary COPY in one transaction.

The batch takes what an append takes, in the same order (docs/global-order.md): it
announces itself and chooses its order key with the store's ``order_key()`` (the shared
advisory lock readers' horizon waits for) before it writes anything, locks its streams'
rows (``FOR UPDATE``, in ``streams_of`` order), refuses to follow a younger transaction's
version of a stream (a conflict: the batch is retried in a new transaction), then COPYs the
planned rows into ``events`` with that key as ``tx_id`` and sets each stream's ``version``
and ``last_tx_id`` as ``append_events()`` does. Its events sort after everything committed
before its key was chosen, in input order (COPY draws the identity positions row by row).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

import asyncpg

from ...errors import TransactionConflictError
from ...events import Position
from ...importing import BatchWritten, ImportRow, ids_to_look_up, plan_batch, streams_of
from .connections import Connection

_COLUMNS = ("tx_id", "id", "stream_id", "version", "type", "data", "metadata", "recorded_at")


class ImportStatements:
    """The SQL of an import batch in one store schema (``q`` quoted, ``schema`` bare)."""

    def __init__(self, q: str, schema: str) -> None:
        self.schema = schema
        self.announce = f"SELECT {q}.order_key($1), now()"
        # Create missing streams and lock them all, in one order, in one statement (a
        # no-op update locks an existing row as FOR UPDATE would), reading their versions.
        self.lock_streams = (
            f"INSERT INTO {q}.streams AS s (stream_id, version) "
            "SELECT u, 0 FROM unnest($1::text[]) AS u ORDER BY u "
            "ON CONFLICT (stream_id) DO UPDATE SET version = s.version "
            "RETURNING s.stream_id, s.version, s.last_tx_id"
        )
        self.stored = f"SELECT id, stream_id, version FROM {q}.events WHERE id = ANY($1::uuid[])"
        self.set_versions = (
            f"UPDATE {q}.streams s SET version = u.version, last_tx_id = $3 "
            "FROM unnest($1::text[], $2::bigint[]) AS u(stream_id, version) "
            "WHERE s.stream_id = u.stream_id"
        )
        self.written = f"SELECT min(position), max(position) FROM {q}.events WHERE tx_id = $1"


async def import_batch(
    connection: Connection, sql: ImportStatements, rows: list[ImportRow], *, all_ids: bool
) -> BatchWritten:
    """Plan and write ``rows`` in one transaction on ``connection``. ``all_ids`` looks up
    every id of the batch first (after a unique violation: to name the event it was);
    otherwise only those at or below their stream's stored version (a re-run's)."""
    async with connection.transaction():
        announced = await connection.fetchrow(sql.announce, rows[0].stream_id)
        assert announced is not None
        key, now = announced
        streams = streams_of(rows)
        versions = await _lock_streams(connection, sql, streams, key)
        wanted = [row.id for row in rows] if all_ids else ids_to_look_up(rows, versions)
        stored = await _stored(connection, sql, wanted)
        plan = plan_batch(rows, versions, stored)
        if not plan.rows:
            return BatchWritten(0, plan.skipped, frozenset(), None, None)
        await connection.copy_records_to_table(
            "events",
            schema_name=sql.schema,
            columns=_COLUMNS,
            records=[_record(row, key, now) for row in plan.rows],
        )
        names, numbers = list(plan.versions), list(plan.versions.values())
        await connection.execute(sql.set_versions, names, numbers, key)
        span = await connection.fetchrow(sql.written, key)
        assert span is not None
        first, last = span
    return BatchWritten(
        len(plan.rows), plan.skipped, frozenset(names), Position(key, first), Position(key, last)
    )


async def _lock_streams(
    connection: Connection, sql: ImportStatements, streams: list[str], key: int
) -> dict[str, int]:
    """Lock the batch's streams; their stored versions. A stream whose latest version came
    from a younger transaction cannot be continued by this one (it would sort before it)."""
    locked = await connection.fetch(sql.lock_streams, streams)
    younger = next((r["stream_id"] for r in locked if r["last_tx_id"] > key), None)
    if younger is not None:
        raise TransactionConflictError(
            f"import: stream {younger!r} was appended to by a younger transaction; the batch "
            "is retried in a new one"
        )
    return {r["stream_id"]: r["version"] for r in locked}


async def _stored(
    connection: Connection, sql: ImportStatements, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, int]]:
    if not ids:
        return {}
    rows = await connection.fetch(sql.stored, ids)
    return {r["id"]: (r["stream_id"], r["version"]) for r in rows}


def _record(row: ImportRow, key: int, now: object) -> tuple[object, ...]:
    return (
        key,
        row.id,
        row.stream_id,
        row.version,
        row.type,
        row.data,
        row.metadata,
        row.recorded_at or now,
    )


Acquire = Callable[[str], AbstractAsyncContextManager[Connection]]
"""The store's pooled connection, its driver errors translated (``_connection``)."""


async def import_with_retries(
    acquire: Acquire, sql: ImportStatements, rows: list[ImportRow], attempts: int
) -> BatchWritten:
    """One batch, each attempt a new transaction: a conflict with a younger appender (or a
    deadlock) is retried with a new key; a unique violation (an id stored as another event,
    or stored meanwhile) is planned again with every id looked up, which names the event."""
    all_ids = False
    for attempt in range(1, attempts + 1):
        try:
            async with acquire("importing events") as connection:
                try:
                    return await import_batch(connection, sql, rows, all_ids=all_ids)
                except asyncpg.UniqueViolationError as exc:
                    if all_ids:  # stored meanwhile by a transaction that committed since
                        raise TransactionConflictError(f"import: {exc}") from exc
            all_ids = True
        except TransactionConflictError:
            if attempt == attempts:
                raise
    raise TransactionConflictError(f"import: the batch conflicted {attempts} times; retry")
