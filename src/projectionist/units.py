"""What the worker needs, declared beside it: the host that gives it units, and a unit's work.

The worker (``worker``) depends on these protocols, not on ``Application``: an application
satisfies ``WorkerHost`` as it is, and anything else that can hand out runners could too.
``ProjectionRunner`` (a projection or one partition of it) and ``BlueGreenBuild`` (a new
version built beside the old one) both satisfy ``UnitWork``, the part of a unit the worker
starts, stops, and reports; ``unit_report`` is what a unit's lease publishes about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from .leases import UnitReport
from .operations import Fault
from .partitions import Partition
from .projection import Projection
from .readmodel import ReadModelStore
from .runner import Fence, ProjectionRunner, RunnerState
from .store import ChangeSignal, EventStore


class WorkerHost(Protocol):
    """The opened, set-up application whose async projections a worker runs."""

    @property
    def store(self) -> EventStore:
        """The event store the runners read."""
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
