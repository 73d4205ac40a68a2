"""The status of every projection unit (a projection, or one of its partitions), as of now.

``Application.status()`` calls :func:`projection_statuses`; the CLI's ``status`` table, its
``--json`` lines and the dashboard show what it returns. A unit's state is a
:class:`UnitState` (with a :class:`Severity` for colouring and alerting) plus a free-text
``detail``; nothing downstream needs to match the human text.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import leases, operations
from .bluegreen import BlueGreenBuild, build_unit, stale_projections
from .errors import BackendError
from .events import Position
from .leases import LiveWorker
from .operations import Fault
from .partitions import split_unit
from .projection import Kind, Projection
from .readmodel import Checkpoint, ReadModelStore
from .runner import ProjectionRunner, RunnerState
from .source import Backlog, EventSource, HeldBack


class Severity(enum.StrEnum):
    """How a state should catch an operator's eye."""

    OK = "ok"
    """Steady and doing its job."""
    WARN = "warn"
    """On its way somewhere (catching up, starting, building): no action needed yet."""
    BAD = "bad"
    """Needs someone: faulted, or refusing to run until rebuilt."""
    IDLE = "idle"
    """Nothing runs it (not set up, stopped) or its state is not known."""


class UnitState(enum.StrEnum):
    """What a unit is doing. The values are the words ``status`` has always printed."""

    NOT_SET_UP = "not set up"
    STARTING = "starting"
    """A worker took its lease and is (re)starting its runner, possibly after a failure."""
    CATCHING_UP = "catching up"
    LIVE = "live"
    INLINE = "inline"
    """Written in the append's own transaction: always up to date."""
    STOPPED = "stopped"
    """No worker runs it."""
    NO_WORKER = "no worker"
    """Workers of this application are live, but none of them can run it (each was started
    with other projections, or runs older code): nobody will ever take it as things are."""
    FAULTED = "faulted"
    RESTARTING = "restarting"
    """Its fault was cleared; its owner has not reported since."""
    NEEDS_REBUILD = "needs rebuild"
    SERVING_OLD_VERSION = "serving old version"
    """The read model of an older version serves readers while workers build the new one."""
    REBUILDING_BLUE_GREEN = "rebuilding (blue/green)"
    WAITING_TO_REBUILD = "waiting to rebuild"
    """A blue/green build that no worker holds right now."""
    UNKNOWN = "unknown"
    """A worker reported a state this version does not know (the text is the detail)."""

    @property
    def severity(self) -> Severity:
        return _SEVERITY[self]

    @classmethod
    def parse(cls, text: str | None) -> tuple[UnitState, str | None]:
        """A reported state's text as (state, detail); text it does not know is UNKNOWN
        with the text as detail, never an error (a newer worker may report new states)."""
        if text is None:
            return cls.UNKNOWN, None
        try:
            return cls(text), None
        except ValueError:
            return cls.UNKNOWN, text


_SEVERITY: Mapping[UnitState, Severity] = {
    UnitState.NOT_SET_UP: Severity.IDLE,
    UnitState.STARTING: Severity.WARN,
    UnitState.CATCHING_UP: Severity.WARN,
    UnitState.LIVE: Severity.OK,
    UnitState.INLINE: Severity.OK,
    UnitState.STOPPED: Severity.IDLE,
    UnitState.NO_WORKER: Severity.BAD,
    UnitState.FAULTED: Severity.BAD,
    UnitState.RESTARTING: Severity.WARN,
    UnitState.NEEDS_REBUILD: Severity.BAD,
    UnitState.SERVING_OLD_VERSION: Severity.WARN,
    UnitState.REBUILDING_BLUE_GREEN: Severity.WARN,
    UnitState.WAITING_TO_REBUILD: Severity.WARN,
    UnitState.UNKNOWN: Severity.IDLE,
}


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """One unit of a projection (the projection, or one of its partitions), as of now."""

    name: str
    kind: str
    version: int
    state: UnitState
    position: Position | None
    head: Position
    lag: int
    """Committed events after the projection's position, visible to readers or still held
    back (0 for inline projections); estimated beyond BACKLOG_COUNTED (``lag_estimated``)."""
    events_processed: int
    updated_at: datetime | None
    detail: str | None = None
    """What the state alone does not say, e.g. "read model is version 1"."""
    partition: str | None = None
    """"2/4" for partition 2 of 4; None when the projection is not partitioned."""
    owner: str | None = None
    """The worker holding its lease, if any."""
    lag_seconds: float | None = None
    """Age of the oldest committed event it has still to process (0 when caught up)."""
    lag_estimated: bool = False
    events_per_second: float | None = None
    """Over the last minute, as reported by its owner."""
    last_batch_seconds: float | None = None
    errors: int = 0
    """Failures seen by its current owner (transient ones included)."""
    last_error: str | None = None
    dead_letters: int = 0
    parked_streams: int = 0
    """Streams it holds back behind a dead letter (``on_error="park"``): a warning."""
    fault: Fault | None = None
    held_back_seconds: float = 0.0
    """How long committed events have waited, invisible to every reader, behind an older
    open transaction that appended to this store (the same for every projection)."""
    held_back_by: str | None = None
    """That transaction: process id, state and age (never its SQL text)."""

    @property
    def severity(self) -> Severity:
        """The state's, but a parked stream makes a steady or idle unit a warning: its
        streams are behind until someone retries them."""
        severity = self.state.severity
        if self.parked_streams and severity in (Severity.OK, Severity.IDLE):
            return Severity.WARN
        return severity

    @property
    def state_text(self) -> str:
        """The state in words, with its detail: "needs rebuild (read model is version 1)"."""
        if self.state is UnitState.UNKNOWN:
            return self.detail or self.state.value  # the worker's own words
        if self.state is UnitState.SERVING_OLD_VERSION:
            return f"serving version {self.version} ({self.detail})"
        return self.state.value if self.detail is None else f"{self.state.value} ({self.detail})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "partition": self.partition,
            "state": self.state.value,
            "detail": self.detail,
            "state_text": self.state_text,
            "severity": self.severity.value,
            "owner": self.owner,
            "position": None if self.position is None else str(self.position),
            "head": str(self.head),
            "lag": self.lag,
            "lag_seconds": self.lag_seconds,
            "lag_estimated": self.lag_estimated,
            "events_per_second": self.events_per_second,
            "events_processed": self.events_processed,
            "last_batch_seconds": self.last_batch_seconds,
            "errors": self.errors,
            "last_error": self.last_error,
            "dead_letters": self.dead_letters,
            "parked_streams": self.parked_streams,
            "fault": None if self.fault is None else _fault_dict(self.fault),
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
            "held_back_seconds": self.held_back_seconds,
            "held_back_by": self.held_back_by,
        }


def _fault_dict(fault: Fault) -> dict[str, Any]:
    """The fault with its traceback: ``--json`` and the dashboard show the whole of it."""
    return {**fault.as_dict(), "traceback": fault.traceback}


@dataclass(frozen=True, slots=True)
class _Records:
    """What the operations tables say about every unit."""

    leases: dict[str, leases.LeaseRow]
    faults: dict[str, Fault]
    dead_letters: dict[str, int]
    held_back: HeldBack | None
    workers: Sequence[LiveWorker] = ()
    """The live workers of this application: those that can run one of its projections."""
    parked_streams: dict[str, int] = dataclasses.field(default_factory=dict)


async def projection_statuses(
    store: EventSource,
    read_models: ReadModelStore,
    projections: Iterable[Projection],
    *,
    own_read_models: Sequence[ReadModelStore] = (),
    runners: Mapping[str, ProjectionRunner] | None = None,
) -> list[ProjectionStatus]:
    """Every unit of ``projections``, and any blue/green build in progress beside them.

    ``read_models`` holds the checkpoints and the operations tables (leases, faults, dead
    letters); ``own_read_models`` are projections' own stores (Redis), whose checkpoints
    live there; ``runners`` (unit -> runner) are those of this process, whose state shows
    when no worker reports one.
    """
    head = await store.head()
    checkpoints = await read_models.checkpoints()
    for own in own_read_models:
        checkpoints.update(await own.checkpoints())
    projections = list(projections)
    records = await _records(store, read_models, {p.name for p in projections})
    statuses = []
    for projection in projections:
        for partition, unit in zip(projection.partition_list, projection.units, strict=True):
            status = await _unit_status(
                store,
                projection,
                unit,
                head,
                checkpoints.get(unit),
                records,
                (runners or {}).get(unit),
            )
            statuses.append(
                dataclasses.replace(status, partition=None if partition is None else str(partition))
            )
        statuses += await _build_status(store, read_models, projection, head, records)
    return statuses


async def _records(store: EventSource, read_models: ReadModelStore, names: set[str]) -> _Records:
    held_back = await store.held_back()
    try:
        live = await leases.live_workers(read_models)
        return _Records(
            await leases.all_leases(read_models),
            await operations.all_faults(read_models),
            await operations.count_dead_letters(read_models),
            held_back,
            [worker for worker in live.values() if worker.projections & names],
            await operations.count_parked_streams(read_models),
        )
    except BackendError:  # operations tables missing: set up by an older release
        return _Records({}, {}, {}, held_back)


async def _unit_status(
    store: EventSource,
    projection: Projection,
    unit: str,
    head: Position,
    checkpoint: Checkpoint | None,
    records: _Records,
    runner: ProjectionRunner | None,
) -> ProjectionStatus:
    inline = projection.kind is Kind.INLINE
    position = None if checkpoint is None else head if inline else checkpoint.position
    backlog = None
    if not inline and position is not None:
        backlog = await store.backlog(position, split_unit(unit)[1])
    lease = records.leases.get(unit)
    report = lease.report if lease is not None else None
    building = build_unit(projection) in records.leases
    state, detail = _unit_state(projection, checkpoint, report, runner, building=building)
    if state is UnitState.STOPPED and projection.kind is Kind.ASYNC:
        state, detail = _nobody_can_run(unit, records.workers) or (state, detail)
    fault = records.faults.get(unit)
    errors, last_error = _errors(report, fault)
    held_back = records.held_back
    return ProjectionStatus(
        name=projection.name,
        kind=projection.kind.value,
        version=checkpoint.version if checkpoint else projection.version,
        state=_with_fault(state, faulted=fault is not None),
        detail=detail,
        position=position,
        head=head,
        lag=backlog.events if backlog else 0,
        lag_estimated=backlog.estimated if backlog else False,
        events_processed=checkpoint.events_processed if checkpoint else 0,
        updated_at=checkpoint.updated_at if checkpoint else None,
        owner=lease.owner if lease is not None else None,
        lag_seconds=None if position is None else _age(backlog),
        events_per_second=report.events_per_second if report else None,
        last_batch_seconds=report.last_batch_seconds if report else None,
        errors=errors,
        last_error=last_error,
        dead_letters=records.dead_letters.get(unit, 0),
        parked_streams=records.parked_streams.get(unit, 0),
        fault=fault,
        held_back_seconds=held_back.seconds if held_back else 0.0,
        held_back_by=held_back.by if held_back else None,
    )


def _unit_state(
    projection: Projection,
    checkpoint: Checkpoint | None,
    report: leases.UnitReport | None,
    runner: ProjectionRunner | None,
    *,
    building: bool,
) -> tuple[UnitState, str | None]:
    """The state from the checkpoint's version, then the owner's report, then this
    process's runner."""
    if checkpoint is None:
        return UnitState.NOT_SET_UP, None
    if checkpoint.version < projection.version and building:
        return UnitState.SERVING_OLD_VERSION, f"version {projection.version} building"
    if checkpoint.version < projection.version and not projection.replayable:
        # A reactor is never rebuilt: its runner takes the checkpoint over where it is.
        return UnitState.STOPPED, f"version {projection.version} takes over at its next start"
    if checkpoint.version != projection.version:
        return UnitState.NEEDS_REBUILD, f"read model is version {checkpoint.version}"
    if projection.kind is Kind.INLINE:
        return UnitState.INLINE, None
    if report is not None:
        return UnitState.parse(report.state)  # the one place a worker's words are read
    if runner is not None and runner.state is not RunnerState.STOPPED:
        return UnitState.parse(runner.state.value)
    return UnitState.STOPPED, None


def _errors(report: leases.UnitReport | None, fault: Fault | None) -> tuple[int, str | None]:
    """Errors and the last error: the owner's figures, but a recorded fault is the source
    while it stands, so a worker that took a faulted unit over (its figures start at 0)
    does not hide it."""
    errors = report.errors if report else 0
    last_error = report.last_error if report else None
    if fault is None:
        return errors, last_error
    return max(errors, fault.attempts), fault.error


def _nobody_can_run(unit: str, workers: Sequence[LiveWorker]) -> tuple[UnitState, str] | None:
    """NO_WORKER when this application's workers are live and none can run ``unit``; None
    when one can, or when none is live (then it is plainly stopped)."""
    if not workers or any(unit in worker.units for worker in workers):
        return None
    names = [worker.worker_id for worker in workers]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return UnitState.NO_WORKER, f"no live worker can run it; live: {shown}"


def _with_fault(state: UnitState, *, faulted: bool) -> UnitState:
    """A recorded fault wins; a cleared one shows as restarting until its owner reports."""
    if faulted:
        return UnitState.FAULTED
    return UnitState.RESTARTING if state is UnitState.FAULTED else state


async def _build_status(
    store: EventSource,
    read_models: ReadModelStore,
    projection: Projection,
    head: Position,
    records: _Records,
) -> list[ProjectionStatus]:
    """A blue/green build of a newer version in progress, shown beside the old one."""
    lease = records.leases.get(build_unit(projection))
    if lease is None or projection.kind is not Kind.ASYNC:
        return []
    if projection not in await stale_projections(read_models, [projection]):
        return []
    position = await BlueGreenBuild(store, read_models, projection).checkpoint()
    backlog = await store.backlog(position or projection.start)
    report = lease.report
    return [
        ProjectionStatus(
            name=projection.name,
            kind="async",
            version=projection.version,
            state=UnitState.REBUILDING_BLUE_GREEN if lease.owner else UnitState.WAITING_TO_REBUILD,
            position=position,
            head=head,
            lag=backlog.events,
            lag_estimated=backlog.estimated,
            lag_seconds=_age(backlog),
            events_processed=0,
            updated_at=None,
            owner=lease.owner,
            events_per_second=report.events_per_second if report else None,
            last_error=report.last_error if report else None,
        )
    ]


def _age(backlog: Backlog | None) -> float:
    """How long the oldest event of a backlog has waited (0 when nothing waits)."""
    if backlog is None or backlog.oldest is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - backlog.oldest).total_seconds())


__all__ = ["ProjectionStatus", "Severity", "UnitState", "projection_statuses"]
