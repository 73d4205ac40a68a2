"""Drift check: rebuild a projection into scratch space and compare it with the live one.

Differences reveal handlers that are not deterministic or not safe to replay, or manual
edits of the read model. The scratch copy is brought to exactly the live checkpoint of each
unit, then the live checkpoints are locked (their runners wait) while the tables are
compared row by row, so both sides reflect the same events.

Rows are matched by their table's primary key, so an edited row shows as the cells that
differ (key, column, live value, rebuilt value), not as one row lost and one gained. Tables a
projection declares but that do not exist on this database (a search index's FTS5 table
outside SQLite) are not compared. Floats compare exactly unless a tolerance is given.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError, InvalidInputError, ProjectionistError
from .events import Position
from .identifiers import quote_identifier
from .projection import Kind, Projection
from .readmodel import ReadModelStore, ReadModelTransaction
from .rebuild import PROGRESS_INTERVAL, Progress, refuse_replay
from .recording import OperationsRecords
from .runner import ProjectionRunner, partition_runners
from .source import EventSource

MAX_SHOWN = 10
ATTEMPTS = 5
Row = tuple[Any, ...]


class VerificationError(ProjectionistError):
    """The live read model kept moving; verification could not find a stable point."""


@dataclass(frozen=True, slots=True)
class CellDifference:
    """One value of a row present on both sides that differs."""

    key: Row
    """The row's primary-key values."""
    column: str
    live: Any
    rebuilt: Any


@dataclass(frozen=True, slots=True)
class TableDifference:
    table: str
    only_live: list[Row]
    """Rows (up to ten) in the live table and not in the rebuilt one."""
    only_rebuilt: list[Row]
    missing: int
    extra: int
    """How many rows are only in the rebuild (missing) or only live (extra), in all."""
    key_columns: list[str] = field(default_factory=list)
    """The primary key rows are matched by (none: whole rows are compared)."""
    changed: list[CellDifference] = field(default_factory=list)
    """Cells (up to ten) of rows on both sides whose values differ."""
    differing: int = 0
    """How many rows on both sides differ in some column, in all."""
    problem: str | None = None
    """A difference of the tables themselves (one is missing, their columns differ)."""


@dataclass(frozen=True, slots=True)
class Verification:
    projection: str
    tables: list[str]
    """The tables compared: those of the projection that exist on this database."""
    rows: dict[str, int]
    differences: list[TableDifference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def checked_tolerance(value: object) -> float:
    """A float tolerance: a finite number from 0 (exact) up to, not including, 1."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"float_tolerance must be a number, not {value!r}")
    if not 0 <= value < 1:  # NaN fails this too
        raise InvalidInputError(f"float_tolerance must be at least 0 and below 1, not {value!r}")
    return float(value)


async def verify(
    store: EventSource,
    read_models: ReadModelStore,
    projection: Projection,
    *,
    float_tolerance: float = 0.0,
    progress: Progress | None = None,
) -> Verification:
    """Rebuild ``projection`` in scratch space and compare it with the live read model.

    Two floats are equal when they differ by at most ``float_tolerance`` times the larger
    one's magnitude (or by at most ``float_tolerance`` near zero); 0 means exactly equal.
    ``progress`` is called with (events replayed, events to replay) during the rebuild.
    """
    tolerance = checked_tolerance(float_tolerance)
    refuse_replay(projection, "verified (it has no read model to compare)")
    if projection.kind is not Kind.ASYNC:
        raise ConfigurationError(
            f"verify compares async projections; {projection.name!r} is inline"
        )
    if not projection.tables:
        raise ConfigurationError(f"projection {projection.name!r} declares no tables to compare")
    async with read_models.scratch(f"{projection.name}_{uuid.uuid4().hex}") as scratch:
        # Faults and skipped events of the scratch copy are not the live projection's; its
        # parked streams are held back as the live ones are.
        runners = partition_runners(
            store, scratch, projection, records=OperationsRecords.in_memory(parks=True)
        )
        for _ in range(ATTEMPTS):
            targets = await _live_positions(read_models, projection)
            await _replay(store, runners, targets, progress)
            async with read_models.transaction() as live:
                locked = {u: await live.load_checkpoint(u, lock=True) for u in projection.units}
                if all(c is not None and c.position == targets[u] for u, c in locked.items()):
                    return await _compare(projection, live, scratch, tolerance)
    raise VerificationError(
        f"projection {projection.name!r} kept moving during {ATTEMPTS} attempts; try again"
    )


async def _live_positions(
    read_models: ReadModelStore, projection: Projection
) -> dict[str, Position]:
    checkpoints = await read_models.checkpoints()
    missing = [unit for unit in projection.units if unit not in checkpoints]
    if missing:
        raise ConfigurationError(f"projection {projection.name!r} is not set up ({missing})")
    for unit in projection.units:
        if checkpoints[unit].version != projection.version:
            raise ConfigurationError(
                f"projection {projection.name!r}: the read model is version "
                f"{checkpoints[unit].version}, the code {projection.version}"
            )
    return {unit: checkpoints[unit].position for unit in projection.units}


async def _replay(
    store: EventSource,
    runners: Sequence[ProjectionRunner],
    targets: dict[str, Position],
    progress: Progress | None,
) -> None:
    """Bring every scratch unit to exactly its live checkpoint, reporting the events
    replayed (at each unit's start, now and then on the way, and at the end)."""
    remaining: dict[str, int] = {}
    for runner in runners:
        runner.until = targets[runner.unit]
        await runner.prepare()
        assert runner.checkpoint is not None
        if progress is not None:  # counting is a query: only for someone who asked
            left = await store.count_after(runner.checkpoint) - await store.count_after(
                runner.until
            )
            remaining[runner.unit] = max(left, 0)
    total, done = sum(remaining.values()), 0
    for runner in runners:
        report = None
        if progress is not None:
            report = _reporter(progress, done, total)
            done += remaining[runner.unit]
        await _run_to(store, runner, report)
    if progress is not None:
        progress(done, total)


def _reporter(progress: Progress, base: int, total: int) -> Callable[[int], None]:
    def report(done: int) -> None:
        progress(min(base + done, total), total)

    return report


async def _run_to(
    store: EventSource, runner: ProjectionRunner, report: Callable[[int], None] | None
) -> None:
    assert runner.checkpoint is not None and runner.until is not None
    before = await store.count_after(runner.checkpoint) if report is not None else 0
    if report is not None:
        report(0)
    last_report = time.monotonic()
    try:
        while runner.checkpoint < runner.until and await runner.step():
            if report is not None and time.monotonic() - last_report > PROGRESS_INTERVAL:
                last_report = time.monotonic()
                report(before - await store.count_after(runner.checkpoint))
    finally:
        await runner.discard_prefetch()


# -- comparing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shape:
    columns: list[str]
    key: list[str]


async def _shape(tx: ReadModelTransaction, table: str) -> _Shape | None:
    """The table's columns and primary key in this read model, or None if it has none."""
    rows = await tx.fetch(tx.sql.table_columns, table)
    if not rows:
        return None
    return _Shape([str(r[0]) for r in rows], [str(r[0]) for r in rows if r[1]])


async def _compare(
    projection: Projection,
    live: ReadModelTransaction,
    scratch: ReadModelStore,
    tolerance: float,
) -> Verification:
    differences, counts = [], {}
    async with scratch.transaction() as rebuilt:
        for table in projection.tables:
            live_shape, rebuilt_shape = await _shape(live, table), await _shape(rebuilt, table)
            if live_shape is None and rebuilt_shape is None:
                continue  # not a table of this database (e.g. an FTS5 index outside SQLite)
            live_rows = await _rows(live, table, live_shape)
            rebuilt_rows = await _rows(rebuilt, table, rebuilt_shape)
            counts[table] = len(live_rows)
            if live_shape is None or rebuilt_shape is None or live_shape != rebuilt_shape:
                shapes = (live_shape, rebuilt_shape)
                differences.append(_shapes_differ(table, shapes, live_rows, rebuilt_rows))
                continue
            difference = _diff(table, live_shape, live_rows, rebuilt_rows, tolerance)
            if difference is not None:
                differences.append(difference)
    return Verification(projection.name, list(counts), counts, differences)


async def _rows(tx: ReadModelTransaction, table: str, shape: _Shape | None) -> list[Row]:
    if shape is None:
        return []
    columns = ", ".join(quote_identifier(column) for column in shape.columns)
    return [
        _hashable(row) for row in await tx.fetch(f"SELECT {columns} FROM {quote_identifier(table)}")
    ]


def _shapes_differ(
    table: str,
    shapes: tuple[_Shape | None, _Shape | None],
    live_rows: list[Row],
    rebuilt_rows: list[Row],
) -> TableDifference:
    live, rebuilt = shapes
    if live is None:
        problem = "the table is missing from the live read model"
    elif rebuilt is None:
        problem = "the table is missing from the rebuild"
    else:
        problem = f"the columns differ: live {live.columns}, rebuilt {rebuilt.columns}"
    return TableDifference(
        table, live_rows[:MAX_SHOWN], rebuilt_rows[:MAX_SHOWN],
        missing=len(rebuilt_rows), extra=len(live_rows), problem=problem,
    )  # fmt: skip


def _diff(
    table: str, shape: _Shape, live_rows: list[Row], rebuilt_rows: list[Row], tolerance: float
) -> TableDifference | None:
    positions = [shape.columns.index(column) for column in shape.key]
    live_by_key = _by_key(live_rows, positions)
    rebuilt_by_key = _by_key(rebuilt_rows, positions)
    if live_by_key is None or rebuilt_by_key is None:
        return _diff_whole_rows(table, live_rows, rebuilt_rows)
    only_live = [live_by_key[k] for k in sorted(live_by_key.keys() - rebuilt_by_key, key=repr)]
    only_rebuilt = [
        rebuilt_by_key[k] for k in sorted(rebuilt_by_key.keys() - live_by_key, key=repr)
    ]
    changed: list[CellDifference] = []
    differing = 0
    for key in sorted(live_by_key.keys() & rebuilt_by_key, key=repr):
        cells = [
            CellDifference(key, column, a, b)
            for column, a, b in zip(
                shape.columns, live_by_key[key], rebuilt_by_key[key], strict=True
            )
            if not _same(a, b, tolerance)
        ]
        differing += bool(cells)
        changed.extend(cells[: MAX_SHOWN - len(changed)])
    if not (only_live or only_rebuilt or differing):
        return None
    return TableDifference(
        table, only_live[:MAX_SHOWN], only_rebuilt[:MAX_SHOWN],
        missing=len(only_rebuilt), extra=len(only_live),
        key_columns=shape.key, changed=changed, differing=differing,
    )  # fmt: skip


def _by_key(rows: list[Row], positions: list[int]) -> dict[Row, Row] | None:
    """Rows by primary key; None without one (or when keys repeat, as SQLite's NULLs can)."""
    if not positions:
        return None
    by_key = {tuple(row[p] for p in positions): row for row in rows}
    return by_key if len(by_key) == len(rows) else None


def _diff_whole_rows(
    table: str, live_rows: list[Row], rebuilt_rows: list[Row]
) -> TableDifference | None:
    live, rebuilt = Counter(live_rows), Counter(rebuilt_rows)
    only_live, only_rebuilt = live - rebuilt, rebuilt - live
    if not (only_live or only_rebuilt):
        return None
    return TableDifference(
        table,
        sorted(only_live.elements(), key=repr)[:MAX_SHOWN],
        sorted(only_rebuilt.elements(), key=repr)[:MAX_SHOWN],
        missing=sum(only_rebuilt.values()),
        extra=sum(only_live.values()),
    )


def _same(live: Any, rebuilt: Any, tolerance: float) -> bool:
    if live == rebuilt:
        return True
    if isinstance(live, float) and isinstance(rebuilt, float):
        if math.isnan(live) and math.isnan(rebuilt):
            return True
        return tolerance > 0 and math.isclose(live, rebuilt, rel_tol=tolerance, abs_tol=tolerance)
    return False


def _hashable(value: Any) -> Any:
    """Rows as tuples of hashable values (arrays come back as lists)."""
    if isinstance(value, list | tuple):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((key, _hashable(item)) for key, item in value.items()))
    return value
