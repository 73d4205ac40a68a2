"""What the worker needs, declared beside it: the host that gives it units, and a unit's work.

The worker (``worker``) depends on these protocols, not on ``Application``: an application
satisfies ``WorkerHost`` as it is, and anything else that can hand out runners could too.
``ProjectionRunner`` (a projection or one partition of it) and ``BlueGreenBuild`` (a new
version built beside the old one) both satisfy ``UnitWork``, the part of a unit the worker
starts, stops, and reports; ``unit_report`` is what a unit's lease publishes about it;
``WorkerTimings`` are a worker's periods, checked before anything runs.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from .changes import ChangeSignal
from .errors import ConfigurationError
from .leases import DEFAULT_LEASE_SECONDS, UnitReport
from .operations import Fault
from .partitions import Partition
from .projection import Kind, Projection
from .readmodel import ReadModelStore
from .runner import Fence, ProjectionRunner, RunnerState
from .source import EventSource


class WorkerHost(Protocol):
    """The opened, set-up application whose async projections a worker runs."""

    @property
    def source(self) -> EventSource:
        """The events the runners read (our own event store, or another source)."""
        ...

    @property
    def read_models(self) -> ReadModelStore:
        """The application's read-model store: where leases and heartbeats live."""
        ...

    @property
    def projections(self) -> Mapping[str, Projection]:
        """Every projection of the application, by name (the worker runs the async ones)."""
        ...

    @property
    def progress(self) -> ChangeSignal:
        """Notified after every batch committed in this process."""
        ...

    def read_models_for(self, projection: Projection) -> ReadModelStore:
        """Where ``projection``'s read model and checkpoint live."""
        ...

    def new_runner(
        self,
        projection: Projection,
        partition: Partition | None = None,
        *,
        fence: Fence | None = None,
    ) -> ProjectionRunner:
        """A runner of ``projection`` (its ``partition``), checking ``fence`` in each batch
        where it can: only when its read models are in the leases' database."""
        ...


class UnitWork(Protocol):
    """The work of one unit the worker owns: run it, stop it, show how it goes."""

    unit: str
    state: RunnerState
    """Set to STOPPED by the worker before a restart after a fault or a failure."""
    last_error: str | None
    """Set by the worker to the error a run ended with."""

    @property
    def fault(self) -> Fault | None: ...

    @property
    def errors(self) -> int: ...

    @property
    def last_batch_seconds(self) -> float | None: ...

    @property
    def events_per_second(self) -> float: ...

    async def run(self) -> None:
        """Work until stopped, until the lease is lost, or until done (a build swapped in)."""
        ...

    def stop(self) -> None:
        """Ask ``run`` to return after the current batch."""
        ...


def unit_report(work: UnitWork, note: str | None, *, running: bool) -> UnitReport:
    """What a unit's lease publishes at a heartbeat: ``note`` (why it is not running) or
    its state, and its figures. Owned but not ``running`` yet (or any more) is "starting"."""
    if note is not None:
        state = note
    elif work.state is RunnerState.FAULTED or work.fault is not None:
        state = str(RunnerState.FAULTED)
    elif not running:
        state = "starting"
    else:
        state = str(work.state)
    return UnitReport(
        state=state,
        events_per_second=work.events_per_second,
        last_batch_seconds=work.last_batch_seconds,
        errors=work.errors,
        last_error=work.last_error,
    )


@dataclass(frozen=True, slots=True)
class WorkerTimings:
    """A worker's periods in seconds: each a finite number above 0, the heartbeat at most
    half a lease. An infinite lease would never expire after a crash (nobody would take the
    units over again), so it is refused like NaN, zero or a string."""

    lease: float = DEFAULT_LEASE_SECONDS
    heartbeat: float | None = None
    """Every ``lease / 4`` if None."""
    shutdown: float = 30.0
    idle_transaction: float | None = None
    """``lease`` if None."""
    retire_after: float = 300.0

    def __post_init__(self) -> None:
        _seconds("lease_seconds", self.lease)
        _seconds("shutdown_seconds", self.shutdown)
        _seconds("retire_after_seconds", self.retire_after)
        for name, value in (
            ("heartbeat_seconds", self.heartbeat),
            ("idle_transaction_seconds", self.idle_transaction),
        ):
            if value is not None:
                _seconds(name, value)
        if self.heartbeat is not None and self.heartbeat > self.lease / 2:
            raise ConfigurationError(
                f"heartbeat_seconds must be at most half of lease_seconds ({self.lease:g}), "
                f"got {self.heartbeat!r}"
            )

    @property
    def heartbeat_seconds(self) -> float:
        return self.heartbeat if self.heartbeat is not None else self.lease / 4

    @property
    def idle_transaction_seconds(self) -> float:
        return self.idle_transaction if self.idle_transaction is not None else self.lease


def _seconds(name: str, value: object) -> None:
    """Refuse what is not a finite number of seconds above 0 (bool is not a number here)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"{name} must be a finite number of seconds above 0, got {value!r}"
        )


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def async_projections(
    projections: Mapping[str, Projection], names: Iterable[str] | None
) -> list[Projection]:
    """The async projections among ``names`` (all of them if None or empty)."""
    selected = list(names) if names is not None else []
    for name in selected:
        if name not in projections:
            known = ", ".join(sorted(projections)) or "none"
            raise ConfigurationError(f"no projection named {name!r} (known: {known})")
    chosen = [projections[name] for name in selected] or list(projections.values())
    return [p for p in chosen if p.kind is Kind.ASYNC]
