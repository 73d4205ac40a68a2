"""Partial replay: move a projection's checkpoints back to a point and apply from there again.

For projections that declare their handlers safe to apply again over their current rows
(``replay_safe=True``: upserts of absolute values, not increments); the idempotency kit checks
that claim (``testing.assert_replay_safe``). The read model is not dropped: each unit whose
checkpoint lies after the point is reset to it and replayed by a runner with ``replaying``
set (``tx.replaying`` is True in its handlers) up to the last event committed when the replay
began (so at least to where its checkpoint was). A unit at or before the point is left alone.

The units' leases are held meanwhile (``rebuild.holding_units``, as a rebuild does): no worker
applies a batch of them during the replay, and the workers resume from the new checkpoints
once the leases are released. The checkpoints are reset, then replayed unit by unit: a replay
that dies leaves checkpoints behind where they were, and the workers that take the units back
(once the leases expire) apply those events again; for a replay-safe projection that is the
rest of the replay. Readers see older rows meanwhile: re-applying an old event sets its
old values again until the later ones are re-applied.

The point is a ``Position`` (replay the events after it) or an aware ``datetime``: the replay
then starts at the first event, of the types the projection handles, recorded at or after
it, found by reading the history up to it once (``source.read_all`` pages).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import ConfigurationError, InvalidInputError, ProjectionVersionError
from .events import Position, validate_position
from .preparation import stored_units
from .projection import Kind, Projection
from .readmodel import Checkpoint, ReadModelStore
from .rebuild import holding_units
from .recording import OperationsRecords
from .runner import Fence, ProjectionRunner
from .source import EventSource

Point = Position | datetime
"""Where a replay starts: after a position, or at the first event recorded at a time."""
SCAN_PAGE = 1000
"""Events per page of the scan that turns a timestamp into a position."""
_POSITION_TEXT = re.compile(r"\s*[0-9]+(/[0-9]+)?\s*")


@dataclass(frozen=True, slots=True)
class UnitReplay:
    """What a replay did to one unit (the projection, or one partition of it)."""

    unit: str
    was: Position | None
    """Its checkpoint before (None: it had none yet)."""
    now: Position | None
    """Its checkpoint after."""
    events: int
    """Events re-applied to it (of the types it handles)."""
    left_alone: str | None = None
    """Why it was not replayed (None: it was)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "was": None if self.was is None else str(self.was),
            "now": None if self.now is None else str(self.now),
            "events": self.events,
            "left_alone": self.left_alone,
        }


@dataclass(frozen=True, slots=True)
class Replay:
    """What ``replay`` did: the point its units were reset to, and each unit's outcome."""

    projection: str
    point: Position
    """The position the replayed units' checkpoints were reset to (events after it were
    applied again)."""
    units: list[UnitReplay]

    @property
    def events(self) -> int:
        """Events re-applied, over every unit."""
        return sum(unit.events for unit in self.units)

    @property
    def replayed(self) -> list[str]:
        return [unit.unit for unit in self.units if unit.left_alone is None]

    def as_dict(self) -> dict[str, Any]:
        return {
            "projection": self.projection,
            "point": str(self.point),
            "events": self.events,
            "units": [unit.as_dict() for unit in self.units],
        }


# -- the point --------------------------------------------------------------------------------


def parse_point(text: str) -> Point:
    """``--from`` as typed: a position (``TX/SEQ``, or a bare ``SEQ``, as ``Position.parse``)
    or an ISO 8601 timestamp with a timezone (``2024-05-01T12:00:00+00:00``, ``...Z``)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"a replay point must be text, not {type(text).__name__}")
    if _POSITION_TEXT.fullmatch(text):
        return Position.parse(text)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInputError(
            f"invalid replay point {text!r}: give a position ('TX/SEQ', e.g. '0/42') or an "
            "ISO 8601 timestamp with a timezone (e.g. '2024-05-01T12:00:00+00:00')"
        ) from None
    return validate_point(moment)


def validate_point(point: object) -> Point:
    """A valid Position, or a datetime with a timezone (a naive one is ambiguous: refused)."""
    if isinstance(point, datetime):
        if point.tzinfo is None or point.utcoffset() is None:
            raise InvalidInputError(
                f"replay timestamp {point.isoformat()} has no timezone: give one (e.g. "
                "+00:00 or Z), a naive time could mean any zone"
            )
        return point
    if isinstance(point, Position):
        return validate_position(point, "replay position")
    hint = " (use parse_point or Position.parse)" if isinstance(point, str) else ""
    raise InvalidInputError(
        f"a replay starts from a Position or an aware datetime, not "
        f"{type(point).__name__} {point!r}{hint}"
    )


async def position_at(source: EventSource, projection: Projection, moment: datetime) -> Position:
    """The position just before the first event in the global order, of the types
    ``projection`` handles and after its start, whose ``recorded_at`` is at or after
    ``moment``: replaying after it re-applies that event and everything after it.

    ``recorded_at`` need not grow with the position (clocks of several writers, imports that
    keep their own times): the rule is the first such event in the order, not every event
    recorded after ``moment``. When there is none, the position after the last event read
    (nothing to replay). Reads the history up to that event once, page by page; a source's
    time without a timezone counts as UTC."""
    checkpoint = projection.start
    while True:
        batch = await source.read_all(
            checkpoint,
            limit=SCAN_PAGE,
            types=projection.types,
            max_bytes=projection.max_batch_bytes,
        )
        before = checkpoint
        for event in batch.events:
            recorded = event.recorded_at
            if recorded.tzinfo is None:
                recorded = recorded.replace(tzinfo=UTC)
            if recorded >= moment:
                return before
            before = event.position
        if batch.checkpoint == checkpoint:
            return checkpoint
        checkpoint = batch.checkpoint


# -- refusals ---------------------------------------------------------------------------------


def refuse_unreplayable(projection: Projection) -> None:
    """Refuse a projection a replay could harm, saying why (a ConfigurationError): what
    ``refuse_never_replayable`` refuses, and one that does not declare its handlers safe to
    apply again over its current rows."""
    refuse_never_replayable(projection)
    if not projection.replay_safe:
        raise ConfigurationError(
            f"projection {projection.name!r} is not declared replay-safe: a partial replay "
            "applies events again over its current rows, which double-counts anything a "
            "handler increments or appends. If its handlers set absolute values (upserts), "
            "declare replay_safe=True and check it with testing.assert_replay_safe; else run "
            f"'projectionist rebuild {projection.name}'"
        )


def refuse_never_replayable(projection: Projection) -> None:
    """Refuse, whatever it claims, a reactor (its effects would run again) and an inline
    projection (rebuilt instead)."""
    name = projection.name
    if not projection.replayable:
        raise ConfigurationError(
            f"projection {name!r} cannot be replayed: its handlers have effects outside the "
            "read model that must not run twice (a reactor)"
        )
    if projection.kind is Kind.INLINE:
        raise ConfigurationError(
            f"projection {name!r} is inline: it is rebuilt, not replayed (its rows are "
            f"written in each append's transaction; 'projectionist rebuild {name}' replays "
            "all history while appends are held back)"
        )


async def _check_units(
    read_models: ReadModelStore, projection: Projection, records: OperationsRecords
) -> dict[str, Checkpoint | None]:
    """Each unit's checkpoint, after refusing what a replay cannot fix: a read model of
    another version or partitioning (a rebuild's job) and a faulted unit (the replay would
    meet the same failure: fix it and restart first)."""
    async with read_models.transaction() as tx:
        stored = await stored_units(tx, projection.name)
        checkpoints = {unit: await tx.load_checkpoint(unit) for unit in projection.units}
    strangers = sorted(set(stored) - set(projection.units))
    versions = {version for version in stored.values() if version != projection.version}
    if strangers or versions:
        raise ProjectionVersionError(
            f"projection {projection.name!r} (version {projection.version}, "
            f"{projection.partitions} partition(s)) has a read model built by another version "
            f"or partitioning: a replay cannot fix that, run 'projectionist rebuild "
            f"{projection.name}'"
        )
    for unit in projection.units:
        fault = await records.load_fault(unit)
        if fault is not None:
            raise InvalidInputError(
                f"{unit!r} is faulted at {fault.position} ({fault.error}): fix it and run "
                f"'projectionist restart {projection.name}' (or skip the fault) before a replay"
            )
    return checkpoints


# -- the replay -------------------------------------------------------------------------------


async def replay(
    source: EventSource,
    read_models: ReadModelStore,
    projection: Projection,
    from_: Point,
    *,
    records: OperationsRecords | None = None,
    leases_in: ReadModelStore | None = None,
) -> Replay:
    """Reset the checkpoints of ``projection``'s units that lie after ``from_`` to it and
    apply the events after it again, up to the last event committed now.

    Every refusal (the projection, the point, a fault, another version) comes before anything
    is written. ``records`` is where its faults and dead letters are (default: in the read
    models' database); dead letters of replayed events stay. ``leases_in`` is where the units'
    leases are: they are held meanwhile, so no worker applies a batch of them."""
    refuse_unreplayable(projection)
    return await replay_units(
        source, read_models, projection, from_, records=records, leases_in=leases_in
    )


async def replay_units(
    source: EventSource,
    read_models: ReadModelStore,
    projection: Projection,
    from_: Point,
    *,
    records: OperationsRecords | None = None,
    leases_in: ReadModelStore | None = None,
) -> Replay:
    """``replay`` without asking for the projection's claim (the kit uses it to check the
    claim); a reactor or an inline projection is still refused."""
    refuse_never_replayable(projection)
    from_ = validate_point(from_)
    records = records or OperationsRecords.in_batch(read_models)
    checkpoints = await _check_units(read_models, projection, records)
    point = from_ if isinstance(from_, Position) else await position_at(source, projection, from_)
    point = max(point, projection.start)  # the projection never applied what lies before it
    if not any(_after(checkpoint, point) for checkpoint in checkpoints.values()):
        return Replay(projection.name, point, [_alone(u, c, point) for u, c in checkpoints.items()])
    if leases_in is None:
        return await _replay_held(source, read_models, projection, point, records, None)
    async with holding_units(leases_in, projection) as held:
        # As for a rebuild: the lease is checked in a batch's transaction where it lives.
        fence = held if read_models is leases_in else None
        return await _replay_held(source, read_models, projection, point, records, fence)


def _after(checkpoint: Checkpoint | None, point: Position) -> bool:
    return checkpoint is not None and checkpoint.position > point


def _alone(unit: str, checkpoint: Checkpoint | None, point: Position) -> UnitReplay:
    if checkpoint is None:
        return UnitReplay(unit, None, None, 0, "it has no checkpoint yet (never run)")
    at = checkpoint.position
    return UnitReplay(unit, at, at, 0, f"its checkpoint {at} is at or before {point}")


async def _replay_held(
    source: EventSource,
    read_models: ReadModelStore,
    projection: Projection,
    point: Position,
    records: OperationsRecords,
    fence: Fence | None,
) -> Replay:
    """With the units held: reset the checkpoints after ``point`` to it, then replay them
    up to the last event committed by now (no checkpoint lies beyond it)."""
    was = await _reset_to(read_models, projection, point)
    target = await source.last_committed()
    outcomes = []
    for partition, unit in zip(projection.partition_list, projection.units, strict=True):
        checkpoint = was[unit]
        if not _after(checkpoint, point):
            outcomes.append(_alone(unit, checkpoint, point))
            continue
        assert checkpoint is not None
        runner = ProjectionRunner(
            source, read_models, projection,
            partition=partition, fence=fence, records=records, replaying=True,
        )  # fmt: skip
        events = await _run_to(runner, point, target, read_models)
        outcomes.append(UnitReplay(unit, checkpoint.position, runner.checkpoint, events))
    return Replay(projection.name, point, outcomes)


async def _reset_to(
    read_models: ReadModelStore, projection: Projection, point: Position
) -> dict[str, Checkpoint | None]:
    """In one transaction, move every checkpoint after ``point`` back to it (read again
    under the leases: a worker may have moved it since the checks); return them as they were."""
    async with read_models.transaction() as tx:
        await tx.lock_projection(projection.name)
        was = {unit: await tx.load_checkpoint(unit, lock=True) for unit in projection.units}
        for unit, checkpoint in was.items():
            if checkpoint is not None and checkpoint.position > point:
                await tx.save_checkpoint(unit, projection.version, checkpoint.position, point, 0)
    return was


async def _run_to(
    runner: ProjectionRunner, point: Position, target: Position, read_models: ReadModelStore
) -> int:
    """Apply from ``point`` up to ``target``; the events applied (the checkpoint's count)."""
    before = await read_models.checkpoint(runner.unit)
    assert before is not None
    runner.checkpoint = point
    try:
        while runner.checkpoint < target:
            if not await runner.step():  # committed, not yet visible: wait for it
                await runner.store.wait_for_events(runner.checkpoint, timeout=0.1)
    finally:
        await runner.discard_prefetch()
    after = await read_models.checkpoint(runner.unit)
    assert after is not None
    return after.events_processed - before.events_processed
