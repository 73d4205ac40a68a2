"""The operations tables beside the checkpoints: leases, workers, faults and dead letters.

They live in the read-model database, next to ``projection_checkpoints``, so that a batch can
check its lease and a poison event can be dead-lettered in the same transaction as the rows
and the checkpoint; their shapes are migrations of the ``read_models`` track
(``sql/<backend>/read_models/``, docs/schema.md). The SQL here runs unchanged on PostgreSQL
and SQLite (``$n`` placeholders are translated for SQLite); the few differences are the
backend's ``tx.sql`` features. Times are seconds since the epoch read from the database's clock
(``db_now``), so that workers on machines with skewed clocks still agree on when a lease
expires.
"""

from __future__ import annotations

import traceback as traceback_module
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from .events import Position, RecordedEvent
from .readmodel import ReadModelStore, ReadModelTransaction


def db_now(tx: ReadModelTransaction) -> str:
    """SQL for the database's current time in epoch seconds (not the transaction's start)."""
    return tx.sql.clock


# -- faults -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failure:
    """A handler's failure as recorded: its error line, its traceback, the attempts made."""

    error: str
    traceback: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Fault:
    """Why a unit (a projection or one of its partitions) stopped: the event and the error."""

    unit: str
    projection: str
    version: int
    position: Position
    stream_id: str
    stream_version: int | None
    event_type: str
    error: str
    traceback: str
    attempts: int
    failed_at: float

    @property
    def failure(self) -> Failure:
        return Failure(self.error, self.traceback, self.attempts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "projection": self.projection,
            "version": self.version,
            "position": str(self.position),
            "stream_id": self.stream_id,
            "stream_version": self.stream_version,
            "event_type": self.event_type,
            "error": self.error,
            "attempts": self.attempts,
            "failed_at": self.failed_at,
        }


def describe(exc: BaseException) -> tuple[str, str]:
    """The error line and the traceback of a handler failure (its cause, when wrapped)."""
    cause = exc.__cause__ or exc
    text = f"{type(cause).__name__}: {cause}"
    trace = "".join(traceback_module.format_exception(cause))
    return text, trace


async def record_fault(
    tx: ReadModelTransaction,
    unit: str,
    version: int,
    event: RecordedEvent,
    exc: BaseException,
    attempts: int,
) -> Fault:
    error, trace = describe(exc)
    projection = unit.partition("#")[0]
    await tx.execute(
        "INSERT INTO projection_faults VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
        f"{db_now(tx)}) ON CONFLICT (unit) DO UPDATE SET version = excluded.version, "
        "position = excluded.position, stream_id = excluded.stream_id, "
        "stream_version = excluded.stream_version, event_type = excluded.event_type, "
        "error = excluded.error, traceback = excluded.traceback, "
        "attempts = excluded.attempts, failed_at = excluded.failed_at",
        unit, projection, version, str(event.position), event.stream_id,
        stored_version(event.version),
        event.type, error, trace, attempts,
    )  # fmt: skip
    fault = await load_fault(tx, unit)
    assert fault is not None
    return fault


_FAULT_COLUMNS = (
    "unit, projection, version, position, stream_id, stream_version, event_type, error, "
    "traceback, attempts, failed_at"
)


def _fault(row: tuple[Any, ...]) -> Fault:
    return Fault(
        unit=row[0],
        projection=row[1],
        version=row[2],
        position=Position.parse(row[3]),
        stream_id=row[4],
        stream_version=loaded_version(row[5]),
        event_type=row[6],
        error=row[7],
        traceback=row[8],
        attempts=int(row[9]),
        failed_at=float(row[10]),
    )


async def load_fault(tx: ReadModelTransaction, unit: str) -> Fault | None:
    rows = await tx.fetch(f"SELECT {_FAULT_COLUMNS} FROM projection_faults WHERE unit = $1", unit)
    return _fault(rows[0]) if rows else None


async def clear_faults(tx: ReadModelTransaction, projection: str) -> int:
    """Forget the faults of every unit of ``projection``: workers resume it."""
    return await tx.execute("DELETE FROM projection_faults WHERE projection = $1", projection)


async def clear_fault(tx: ReadModelTransaction, unit: str) -> None:
    await tx.execute("DELETE FROM projection_faults WHERE unit = $1", unit)


async def all_faults(read_models: ReadModelStore) -> dict[str, Fault]:
    async with read_models.transaction() as tx:
        rows = await tx.fetch(f"SELECT {_FAULT_COLUMNS} FROM projection_faults")
    return {row[0]: _fault(row) for row in rows}


async def faults_of(tx: ReadModelTransaction, projections: Collection[str]) -> list[Fault]:
    """The faults of the units of ``projections``, by unit."""
    rows = await tx.fetch(
        f"SELECT {_FAULT_COLUMNS} FROM projection_faults "
        f"WHERE {tx.sql.is_one_of('projection', '$1')} ORDER BY unit",
        tx.sql.text_list(sorted(projections)),
    )
    return [_fault(row) for row in rows]


# -- dead letters -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a projection skipped after its handler failed (``on_error="skip"``), or,
    under ``on_error="park"``, one that failed or waits behind one that did (``parked``)."""

    id: int
    projection: str
    unit: str
    version: int
    event: RecordedEvent
    error: str
    traceback: str
    attempts: int
    failed_at: float
    parked: bool = False
    """Its stream is parked by its unit: it is applied by retrying the stream, in order."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "projection": self.projection,
            "unit": self.unit,
            "version": self.version,
            "position": str(self.event.position),
            "stream_id": self.event.stream_id,
            "stream_version": self.event.version,
            "event_type": self.event.type,
            "event_id": None if self.event.id is None else str(self.event.id),
            "error": self.error,
            "attempts": self.attempts,
            "failed_at": self.failed_at,
            "parked": self.parked,
        }


# A source may leave out an event's id or stream version (docs/sources.md). The operations
# tables keep their NOT NULL columns, so an absent version is stored as -1 (no stream has a
# negative version) and an absent id as '' (no UUID prints empty).
NO_STORED_VERSION = -1


def stored_version(version: int | None) -> int:
    return NO_STORED_VERSION if version is None else version


def loaded_version(stored: int) -> int | None:
    return None if stored == NO_STORED_VERSION else int(stored)


def stored_id(event_id: uuid.UUID | None) -> str:
    return "" if event_id is None else str(event_id)


async def add_dead_letter(
    tx: ReadModelTransaction, unit: str, version: int, event: RecordedEvent, failure: Failure
) -> None:
    """Record ``event`` as skipped by ``unit`` after ``failure`` (a handler's, or that of a
    fault being skipped past: recorded when it failed)."""
    error, trace, attempts = failure.error, failure.traceback, failure.attempts
    await tx.execute(
        "INSERT INTO projection_dead_letters (projection, unit, version, position, event_id, "
        "stream_id, stream_version, event_type, data, metadata, recorded_at, error, traceback, "
        "attempts, failed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
        f"$14, {db_now(tx)})",
        unit.partition("#")[0], unit, version, str(event.position), stored_id(event.id),
        event.stream_id, stored_version(event.version), event.type,
        orjson.dumps(event.data).decode(), orjson.dumps(event.metadata).decode(),
        event.recorded_at.isoformat(), error, trace, attempts,
    )  # fmt: skip


_DEAD_LETTER_COLUMNS = (
    "d.id, d.projection, d.unit, d.version, d.position, d.event_id, d.stream_id, "
    "d.stream_version, d.event_type, d.data, d.metadata, d.recorded_at, d.error, d.traceback, "
    "d.attempts, d.failed_at, p.unit IS NOT NULL"
)
_DEAD_LETTERS_FROM = (
    "projection_dead_letters d LEFT JOIN projection_parked_streams p "
    "ON p.unit = d.unit AND p.stream_id = d.stream_id"
)


def _dead_letter(row: tuple[Any, ...]) -> DeadLetter:
    event = RecordedEvent(
        id=uuid.UUID(row[5]) if row[5] else None,
        stream_id=row[6],
        version=loaded_version(row[7]),
        type=row[8],
        data=orjson.loads(row[9]),
        metadata=orjson.loads(row[10]),
        recorded_at=datetime.fromisoformat(row[11]),
        position=Position.parse(row[4]),
    )
    return DeadLetter(
        int(row[0]),
        row[1],
        row[2],
        row[3],
        event,
        row[12],
        row[13],
        int(row[14]),
        float(row[15]),
        parked=bool(row[16]),
    )


async def dead_letters(
    tx: ReadModelTransaction,
    projection: str | None = None,
    ids: list[int] | None = None,
    *,
    among: Collection[str] | None = None,
) -> list[DeadLetter]:
    """Dead letters, oldest first, of one projection or all, or only those with ``ids``;
    only those of the projections named ``among``, if given (one application's: other
    applications may share the database)."""
    sql = f"SELECT {_DEAD_LETTER_COLUMNS} FROM {_DEAD_LETTERS_FROM} WHERE 1 = 1"
    args: list[object] = []
    if projection is not None:
        args.append(projection)
        sql += f" AND d.projection = ${len(args)}"
    if among is not None:
        args.append(tx.sql.text_list(sorted(among)))
        sql += f" AND {tx.sql.is_one_of('d.projection', f'${len(args)}')}"
    if ids is not None and len(ids) == 1:  # retry and discard look them up one by one
        args.append(ids[0])
        sql += f" AND d.id = ${len(args)}"
    rows = await tx.fetch(sql + " ORDER BY d.id", *args)
    letters = [_dead_letter(row) for row in rows]
    return letters if ids is None else [letter for letter in letters if letter.id in ids]


async def delete_dead_letters_of(tx: ReadModelTransaction, projection: str) -> int:
    """Forget the dead letters and parked streams of every unit of ``projection``."""
    await tx.execute("DELETE FROM projection_parked_streams WHERE projection = $1", projection)
    return await tx.execute("DELETE FROM projection_dead_letters WHERE projection = $1", projection)


async def delete_dead_letter(tx: ReadModelTransaction, letter_id: int) -> None:
    await tx.execute("DELETE FROM projection_dead_letters WHERE id = $1", letter_id)


async def count_dead_letters(read_models: ReadModelStore) -> dict[str, int]:
    """Dead letters per unit."""
    async with read_models.transaction() as tx:
        rows = await tx.fetch("SELECT unit, count(*) FROM projection_dead_letters GROUP BY unit")
    return {row[0]: int(row[1]) for row in rows}


async def count_parked_streams(read_models: ReadModelStore) -> dict[str, int]:
    """Parked streams per unit."""
    async with read_models.transaction() as tx:
        rows = await tx.fetch("SELECT unit, count(*) FROM projection_parked_streams GROUP BY unit")
    return {row[0]: int(row[1]) for row in rows}


# -- parked streams (on_error="park") -----------------------------------------------------------
# A parked stream is a row of projection_parked_streams; its letters are the unit's dead
# letters of that stream, in id order (the order the unit read them in: position order).


async def parked_streams(tx: ReadModelTransaction, unit: str) -> set[str]:
    """The streams ``unit`` holds back."""
    rows = await tx.fetch("SELECT stream_id FROM projection_parked_streams WHERE unit = $1", unit)
    return {row[0] for row in rows}


async def park_stream(tx: ReadModelTransaction, unit: str, event: RecordedEvent) -> None:
    """Park the stream of ``event`` (whose letter is written in ``tx`` too) for ``unit``."""
    await tx.execute(
        "INSERT INTO projection_parked_streams VALUES ($1, $2, $3, $4, "
        f"{db_now(tx)}) ON CONFLICT (unit, stream_id) DO NOTHING",
        unit, event.stream_id, unit.partition("#")[0], str(event.position),
    )  # fmt: skip


async def unpark_stream(tx: ReadModelTransaction, unit: str, stream_id: str) -> None:
    await tx.execute(
        "DELETE FROM projection_parked_streams WHERE unit = $1 AND stream_id = $2",
        unit,
        stream_id,
    )


async def units_parking(tx: ReadModelTransaction, projection: str, stream_id: str) -> list[str]:
    """The units of ``projection`` that park ``stream_id`` (one, unless partitions changed)."""
    rows = await tx.fetch(
        "SELECT unit FROM projection_parked_streams WHERE projection = $1 AND stream_id = $2 "
        "ORDER BY unit",
        projection,
        stream_id,
    )
    return [row[0] for row in rows]


async def stream_letters(
    tx: ReadModelTransaction, unit: str, stream_id: str, *, limit: int | None = None
) -> list[DeadLetter]:
    """The letters of ``stream_id`` held by ``unit``, in order (the first ``limit``)."""
    rows = await tx.fetch(
        f"SELECT {_DEAD_LETTER_COLUMNS} FROM {_DEAD_LETTERS_FROM} "
        "WHERE d.unit = $1 AND d.stream_id = $2 ORDER BY d.id"
        + ("" if limit is None else f" LIMIT {int(limit)}"),
        unit,
        stream_id,
    )
    return [_dead_letter(row) for row in rows]


async def note_failure(tx: ReadModelTransaction, letter_id: int, failure: Failure) -> None:
    """The letter failed again on a retry: keep why, and count the attempts."""
    await tx.execute(
        "UPDATE projection_dead_letters SET error = $2, traceback = $3, "
        f"attempts = attempts + $4, failed_at = {db_now(tx)} WHERE id = $1",
        letter_id, failure.error, failure.traceback, failure.attempts,
    )  # fmt: skip
