"""One batch of a bulk import into the PostgreSQL store: binary COPY in one transaction.

The batch takes what an append takes, in the same order (docs/global-order.md): it
announces itself and chooses its order key with the store's ``order_key()`` (the shared
advisory lock readers' horizon waits for) before it writes anything, locks its streams'
rows (in ``streams_of`` order), refuses to follow a younger transaction's version of a
stream (a conflict: the batch is retried in a new transaction), sets each stream's
``version`` and ``last_tx_id`` as ``append_events()`` does, then COPYs the planned rows
into ``events`` with that key as ``tx_id``. Its events sort after everything committed
before its key was chosen, in input order (COPY draws the identity positions row by row).

Two ways to plan a batch. The fast one (first): one statement creates, locks and advances
all of the batch's streams at once, taking for granted that each stream's events in the
batch continue its stored version, as in a first import or its next batch; it returns the
streams for which that was not so, and if there are any the transaction is rolled back and
the batch planned the careful way in a new one: lock and read the versions, look up the ids
the plan asks about, plan (skip what a previous run imported, name a gap or a duplicate),
then set the versions.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager

import asyncpg

from ...errors import TransactionConflictError
from ...events import Position
from ...importing import (
    BatchWritten,
    ImportPlan,
    ImportRow,
    ids_to_look_up,
    plan_batch,
    stream_spans,
    streams_of,
)
from .connections import Connection

_COLUMNS = ("tx_id", "id", "stream_id", "version", "type", "data", "metadata", "recorded_at")


class Planning(enum.Enum):
    """How a batch is planned: taking its streams' continuation for granted (``FAST``), or
    against their stored versions, looking up the ids at or below them (``VERSIONS``) or
    every id of the batch (``EVERY_ID``: after a unique violation, to name the event)."""

    FAST = "fast"
    VERSIONS = "versions"
    EVERY_ID = "every id"


class _NotContinuing(Exception):
    """A stream's events in the batch do not continue its stored version: plan carefully."""


class ImportStatements:
    """The SQL of an import batch in one store schema (``q`` quoted, ``schema`` bare)."""

    def __init__(self, q: str, schema: str) -> None:
        self.schema = schema
        self.announce = f"SELECT {q}.order_key($1), now()"
        # The fast plan in one statement, rows locked in stream order: a new stream is
        # created at its count of events, an existing one advanced by it, last_tx_id set
        # to the key unless a younger one is stored. Returns the streams for which the
        # batch did not continue the stored version (or a younger transaction's).
        self.advance_streams = (
            "WITH batch AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) "
            "AS b(stream_id, first, last)), "
            f"advanced AS (INSERT INTO {q}.streams AS s (stream_id, version, last_tx_id) "
            "SELECT stream_id, last - first + 1, $4 FROM batch ORDER BY stream_id "
            "ON CONFLICT (stream_id) DO UPDATE SET version = s.version + excluded.version, "
            "last_tx_id = greatest(s.last_tx_id, excluded.last_tx_id) "
            "RETURNING s.stream_id, s.version, s.last_tx_id) "
            "SELECT a.stream_id, a.last_tx_id FROM advanced a JOIN batch b USING (stream_id) "
            "WHERE a.version <> b.last OR a.last_tx_id <> $4"
        )
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
    connection: Connection, sql: ImportStatements, rows: list[ImportRow], planning: Planning
) -> BatchWritten:
    """Plan and write ``rows`` in one transaction on ``connection``, planned ``planning``'s
    way; the fast way raises ``_NotContinuing`` when it does not apply."""
    async with connection.transaction():
        announced = await connection.fetchrow(sql.announce, rows[0].stream_id)
        assert announced is not None
        key, now = announced
        if planning is Planning.FAST:
            plan = await _advance_streams(connection, sql, rows, key)
        else:
            plan = await _plan_carefully(connection, sql, rows, key, planning)
        if not plan.rows:
            return BatchWritten(0, plan.skipped, frozenset(), None, None)
        await connection.copy_records_to_table(
            "events",
            schema_name=sql.schema,
            columns=_COLUMNS,
            records=(_record(row, key, now) for row in plan.rows),  # made as sent, not kept
        )
        span = await connection.fetchrow(sql.written, key)
        assert span is not None
        first, last = span
    return BatchWritten(
        len(plan.rows),
        plan.skipped,
        frozenset(plan.versions),
        Position(key, first),
        Position(key, last),
    )


async def _advance_streams(
    connection: Connection, sql: ImportStatements, rows: list[ImportRow], key: int
) -> ImportPlan:
    """The fast plan: every row written, every stream advanced to its last version."""
    names, firsts, lasts = stream_spans(rows)
    odd = await connection.fetch(sql.advance_streams, names, firsts, lasts, key)
    _refuse_younger(odd, key)
    if odd:
        raise _NotContinuing(odd[0]["stream_id"])
    return ImportPlan(rows, 0, dict(zip(names, lasts, strict=True)))


async def _plan_carefully(
    connection: Connection,
    sql: ImportStatements,
    rows: list[ImportRow],
    key: int,
    planning: Planning,
) -> ImportPlan:
    """Lock the streams, read their versions and the stored copies of the ids the plan asks
    about, plan, and set the versions of the streams written to."""
    locked = await connection.fetch(sql.lock_streams, streams_of(rows))
    _refuse_younger(locked, key)
    versions = {r["stream_id"]: r["version"] for r in locked}
    every = planning is Planning.EVERY_ID
    wanted = [row.id for row in rows] if every else ids_to_look_up(rows, versions)
    plan = plan_batch(rows, versions, await _stored(connection, sql, wanted))
    if plan.rows:
        names, numbers = list(plan.versions), list(plan.versions.values())
        await connection.execute(sql.set_versions, names, numbers, key)
    return plan


def _refuse_younger(streams: Sequence[asyncpg.Record], key: int) -> None:
    """A stream whose latest version came from a younger transaction cannot be continued by
    this one (it would sort before it)."""
    younger = next((r["stream_id"] for r in streams if r["last_tx_id"] > key), None)
    if younger is not None:
        raise TransactionConflictError(
            f"import: stream {younger!r} was appended to by a younger transaction; the batch "
            "is retried in a new one"
        )


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
    """One batch, each attempt a new transaction: the fast plan first, the careful one when
    it does not apply (a re-run's batch, a gap or a duplicate); a conflict with a younger
    appender (or a deadlock) is retried with a new key; a unique violation (an id stored as
    another event, or stored meanwhile) is planned again with every id looked up, which
    names the event. The fast plan's failure does not count as an attempt."""
    planning = Planning.FAST
    attempt = 1
    while True:
        try:
            async with acquire("importing events") as connection:
                try:
                    return await import_batch(connection, sql, rows, planning)
                except _NotContinuing:
                    planning = Planning.VERSIONS
                    continue
                except asyncpg.UniqueViolationError as exc:
                    if planning is Planning.EVERY_ID:  # stored meanwhile, committed since
                        raise TransactionConflictError(f"import: {exc}") from exc
            planning = Planning.EVERY_ID
        except TransactionConflictError:
            if attempt >= attempts:
                raise
        attempt += 1
        if attempt > attempts:
            raise TransactionConflictError(f"import: the batch conflicted {attempts} times; retry")
