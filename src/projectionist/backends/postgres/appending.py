"""Writing an append: the rows (one statement), then the inline projections on its connection."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import orjson

from ...errors import ConcurrencyError, InvalidInputError, TransactionConflictError
from ...events import EncodedEvent, Position, RecordedEvent
from ...store import AppendResult, ExpectedVersion, InlineHook
from .connections import Connection
from .read_models import PostgresReadModelTransaction

_SET_LOCAL_PATH = "SELECT set_config('search_path', $1, true)"
"""Until the transaction ends; the path as text, read back exactly as it was set."""


async def insert_events(
    connection: Connection,
    append_sql: str,
    stream_id: str,
    expected: int | None,
    encoded: list[EncodedEvent],
    expected_version: ExpectedVersion,
) -> tuple[AppendResult, asyncpg.Record]:
    """Insert validated events with the store's append function (``statements.append``, or
    ``append_reading_path``, whose rows also carry the caller's ``search_path``, read in
    the same round trip); the recorded events and the statement's first row."""
    rows = await _insert_rows(connection, append_sql, stream_id, expected, encoded)
    return _recorded(stream_id, encoded, expected_version, rows), rows[0]


async def _insert_rows(
    connection: Connection,
    append_sql: str,
    stream_id: str,
    expected: int | None,
    encoded: list[EncodedEvent],
) -> list[asyncpg.Record]:
    try:
        return await connection.fetch(
            append_sql,
            stream_id,
            expected,
            [e.id for e in encoded],
            [e.type for e in encoded],
            [e.data for e in encoded],
            [e.metadata for e in encoded],
        )
    except asyncpg.UniqueViolationError as exc:
        raise InvalidInputError(
            f"append to stream {stream_id!r}: an event id already exists ({exc.detail})"
        ) from exc
    except asyncpg.SerializationError as exc:
        raise TransactionConflictError(
            f"append to stream {stream_id!r} conflicts with a younger transaction that "
            "appended to it first: roll back and retry the whole transaction"
        ) from exc


def _recorded(
    stream_id: str,
    encoded: list[EncodedEvent],
    expected_version: ExpectedVersion,
    rows: list[asyncpg.Record],
) -> AppendResult:
    if rows[0]["position"] is None:
        raise ConcurrencyError(stream_id, expected_version, rows[0]["version"])
    rows = sorted(rows, key=lambda row: row["version"])
    return AppendResult(
        tuple(
            RecordedEvent(
                id=event.id,
                stream_id=stream_id,
                version=row["version"],
                type=event.type,
                data=orjson.loads(event.data),
                metadata=orjson.loads(event.metadata),
                recorded_at=row["recorded_at"],
                position=Position(row["tx_id"], row["position"]),
            )
            for event, row in zip(encoded, rows, strict=True)
        )
    )


async def run_inline_hooks(
    connection: Connection,
    quoted_schema: str,
    paths: tuple[str, str],
    hooks: Sequence[InlineHook],
    result: AppendResult,
    restore: bool,
) -> None:
    """Run the inline projections on ``connection`` with the store's schema first on the
    path, whatever the caller's connection resolves names to (``paths``: the store's, the
    caller's), and put the caller's back if ``restore``.

    A transaction-local setting made in a savepoint outlives it until the caller's
    transaction ends, so the caller's own later statements would resolve in our schema:
    hence the restore when the append is a savepoint in the caller's transaction. In a
    transaction of the append's own the commit ends the setting: no restore, no trip.
    A failing hook rolls the savepoint (or the transaction) back, which undoes the
    setting by itself.
    """
    ours, callers = paths
    if callers != ours:
        await connection.execute(_SET_LOCAL_PATH, ours)
    read_model = PostgresReadModelTransaction(connection, quoted_schema)
    for hook in hooks:
        await hook(read_model, result.events)
    if restore and callers != ours:
        await connection.execute(_SET_LOCAL_PATH, callers)
