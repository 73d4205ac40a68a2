"""The worker: runs an application's async projections, shared with other workers.

Start any number of workers, in one process or on many machines, against the same read-model
database: they share the units of work (each projection, or each partition of a partitioned
one) through leases in that database (see ``leases``). Every ``heartbeat`` seconds a worker

1. records its heartbeat with the units it can run, and reads the live workers' units;
2. renews its leases and publishes each unit's state and figures (status reads them);
3. hands back units above its fair share (per pool of units that the same live workers can
   run, ``ceil(units / those workers)``, see ``fairshare``), after their current batch, so
   that a joining worker gets some;
4. takes free or expired units up to its fair share of each pool, and starts their runners.

A worker that dies stops renewing; its leases expire after ``lease_seconds`` and the others
take its units over. Every batch checks its lease inside its own transaction, so a worker
that lost its lease (a pause, a network split) cannot commit once another has taken over.
A paused worker's open batch is ended by the database once it has been idle for
``idle_transaction_seconds`` (``lease_seconds`` by default), so it holds no lock the taker
needs (docs/operations.md, "A paused worker").

It depends on a ``WorkerHost`` (``units``: the stores, projections and runner factory that an
``Application`` provides), not on the application itself. It installs no signal handlers:
``stop()`` ends it (the CLI wires SIGTERM/SIGINT to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import leases, operations
from .bluegreen import BlueGreenBuild, build_unit, drop_retired, stale_projections
from .errors import (
    ProjectionistError,
    ProjectionSupersededError,
    ProjectionVersionError,
)
from .fairshare import Pool, plan, pools_of, runnable_units
from .leases import DEFAULT_LEASE_SECONDS, Lease, LiveWorker, UnitReport, WorkerEntry
from .partitions import split_unit
from .projection import Projection
from .readmodel import ReadModelTransaction
from .runner import RunnerState
from .transient import is_transient
from .units import (
    UnitWork,
    WorkerHost,
    WorkerTimings,
    async_projections,
    default_worker_id,
    unit_report,
)

logger = logging.getLogger("projectionist.worker")


@dataclass
class _Owned:
    lease: Lease
    runner: UnitWork
    task: asyncio.Task[None] | None = None
    note: str | None = None
    """Why it is not running (needs a rebuild, failed to start): shown as its state."""
    retry_at: float = 0.0
    failures: int = field(default=0)

    def report(self) -> UnitReport:
        """What its lease publishes: its figures, and its state as status shows it."""
        running = self.task is not None and not self.task.done()
        return unit_report(self.runner, self.note, running=running)


class Worker:
    """Runs the async projections of ``host`` (an application, opened and set up) until
    ``stop()``; ``projections`` names a subset of them."""

    def __init__(
        self,
        host: WorkerHost,
        *,
        worker_id: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        heartbeat_seconds: float | None = None,
        shutdown_seconds: float = 30.0,
        projections: Iterable[str] | None = None,
        retire_after_seconds: float = 300.0,
        idle_transaction_seconds: float | None = None,
    ) -> None:
        """Every period is checked here (``WorkerTimings``): a ConfigurationError before
        anything runs."""
        timings = WorkerTimings(
            lease_seconds,
            heartbeat_seconds,
            shutdown_seconds,
            idle_transaction_seconds,
            retire_after_seconds,
        )
        self.host = host
        self.worker_id = worker_id or default_worker_id()
        self.lease_seconds = timings.lease
        self.heartbeat_seconds = timings.heartbeat_seconds
        self.shutdown_seconds = timings.shutdown
        self.idle_transaction_seconds = timings.idle_transaction_seconds
        self._projections = async_projections(host.projections, projections)
        self._units = {unit: p for p in self._projections for unit in p.units}
        self._builds: dict[str, Projection] = {}
        """Blue/green build units of projections whose stored version is older."""
        self.retire_after_seconds = timings.retire_after
        self._superseded: set[str] = set()
        """Units a newer version of the code has taken over."""
        self._owned: dict[str, _Owned] = {}
        self._stop = asyncio.Event()
        self.live_workers: list[str] = []
        """Every live worker's id, this application's or not (see ``fairshare``)."""
        self._capabilities: dict[str, frozenset[str]] = {}
        """The units each live worker can run, as of the last heartbeat."""
        self._published: dict[str, str] | None = None
        """The units this worker published at its last heartbeat (unit -> projection)."""
        self.heartbeats = 0
        """Heartbeats completed since ``run()`` began (tests and monitors count them)."""

    @property
    def owned(self) -> dict[str, RunnerState | str]:
        """The units this worker holds, with their state."""
        return {unit: owned.note or owned.runner.state for unit, owned in self._owned.items()}

    def stop(self) -> None:
        """Finish the current batches, hand the leases back, return from ``run()``."""
        self._stop.set()

    async def run(self) -> None:
        self._stop.clear()
        read_models = self.host.read_models
        for store in {read_models, *map(self.host.read_models_for, self._projections)}:
            store.guard_transactions(self.worker_id, self.idle_transaction_seconds)
        await leases.register_units(read_models, {u: p.name for u, p in self._units.items()})
        url = self.host.source.url  # a source keeps its URL without the password
        logger.info(
            "worker %s started: %d units it can run, store %s",
            *(self.worker_id, len(self._units), url),
            extra={"action": "worker_start", "worker": self.worker_id}
            | {"units": len(self._units), "store": url},
        )
        try:
            while not self._stop.is_set():
                try:
                    await self._unless_stopped(self._tick())
                    self.heartbeats += 1
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    logger.warning(
                        "heartbeat failed, retrying: %s",
                        exc,
                        extra={"action": "heartbeat_failed", "worker": self.worker_id},
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stop.wait(), self._jittered(self.heartbeat_seconds)
                    )
        finally:
            await self._shut_down()

    async def _unless_stopped(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work``; cancel it if ``stop()`` comes first. On SQLite (one connection) a
        heartbeat queues behind a batch in flight: stopping must not wait for that batch
        beyond ``shutdown_seconds``. Cancelling rolls the heartbeat's transaction back; the
        units it touched are released by ``_shut_down``."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if not task.cancelled():
            task.result()  # its exception, if any

    # -- one heartbeat --------------------------------------------------------------------------

    async def _tick(self) -> None:
        await self._beat()
        await self._find_builds()
        await self._renew()
        await self._leave_old_versions()
        pools = pools_of(self.worker_id, self._capable(), self._capabilities)
        change = plan(self._owned, pools, keep_longest=self._builds)
        for unit in change.hand_back:
            await self._hand_back_unit(unit, "above its fair share")
        if change.take:
            await self._take(change.take)
        await self._start_runners()

    async def _beat(self) -> None:
        """Record the heartbeat with the units this worker can run now; read the others'."""
        capable = self._capable()
        me = WorkerEntry(self.worker_id, socket.gethostname(), os.getpid(), self.lease_seconds)
        live: dict[str, LiveWorker] = await leases.heartbeat(
            self.host.read_models, me, capable, changed=capable != self._published
        )
        self._published = capable
        self.live_workers = sorted(live)
        self._capabilities = {worker_id: w.units for worker_id, w in live.items()}

    def _capable(self) -> dict[str, str]:
        """The units this worker would take now (unit -> projection name): its runnable
        units and its blue/green builds."""
        units = {unit: self._units[unit].name for unit in self._runnable()}
        return units | {unit: p.name for unit, p in self._builds.items()}

    async def _find_builds(self) -> None:
        """On PostgreSQL, a projection whose code version is newer than its read model gets
        a blue/green build unit; its own units are left to older workers until the swap."""
        read_models = self.host.read_models
        if read_models.side_schemas() is None:
            return
        stale = await stale_projections(read_models, self._projections)
        # Without declared tables there is nothing to swap: those need a rebuild instead.
        self._builds = {build_unit(p): p for p in stale if p.tables}
        if self._builds:
            await leases.register_units(read_models, {u: p.name for u, p in self._builds.items()})
        for schema in await drop_retired(read_models):
            logger.info(
                "dropped %s after its grace period",
                schema,
                extra={"action": "retired_dropped", "worker": self.worker_id},
            )

    def _runnable(self) -> list[str]:
        """This worker's units it can run now (see ``fairshare.runnable_units``)."""
        return runnable_units(
            {unit: projection.name for unit, projection in self._units.items()},
            self._superseded,
            {projection.name for projection in self._builds.values()},
        )

    async def _leave_old_versions(self) -> None:
        """Hand back units of projections whose newer version is being built."""
        runnable = set(self._runnable())
        for unit in [u for u in self._owned if u not in self._builds and u not in runnable]:
            await self._hand_back_unit(unit, "its newer version is being built")

    async def _renew(self) -> None:
        for unit, owned in list(self._owned.items()):
            if unit in self._superseded:
                await self._hand_back_unit(unit, "newer code runs it now")
                continue
            if isinstance(owned.runner, BlueGreenBuild) and owned.runner.switched:
                await self._hand_back_unit(unit, "built: the projection's own units take over")
                continue
            if (
                owned.task is not None
                and owned.task.done()
                and owned.runner.state is not RunnerState.FAULTED
            ):
                self._finished(unit, owned)
            if not await leases.renew(
                self.host.read_models, owned.lease, self.lease_seconds, owned.report()
            ):
                logger.warning(
                    "lease on %s lost",
                    unit,
                    extra={"action": "lease_lost", "worker": self.worker_id, "unit": unit},
                )
                await self._stop_runner(owned)
                del self._owned[unit]

    def _finished(self, unit: str, owned: _Owned) -> None:
        """A runner ended on its own: a lost lease, or an error that is not transient."""
        task, owned.task = owned.task, None
        assert task is not None
        exc = None if task.cancelled() else task.exception()
        if exc is None:
            return  # lease lost or stopped: the renewal tells which
        owned.failures += 1
        if isinstance(exc, ProjectionSupersededError):
            self._superseded.add(unit)  # handed back at the next renewal
        if isinstance(exc, ProjectionVersionError):
            owned.note = "needs rebuild"
        owned.runner.last_error = f"{type(exc).__name__}: {exc}"
        owned.retry_at = asyncio.get_running_loop().time() + min(60.0, 2.0**owned.failures)
        logger.error(
            "runner of %s failed: %s",
            unit,
            exc,
            exc_info=exc,
            extra={"action": "runner_failed", "worker": self.worker_id, "unit": unit},
        )

    async def _hand_back_unit(self, unit: str, why: str) -> None:
        """Stop its runner (after the current batch), then release its lease."""
        owned = self._owned[unit]
        await self._stop_runner(owned)
        del self._owned[unit]  # only now: if stop() interrupts, _shut_down waits for it
        await leases.release(self.host.read_models, owned.lease)
        logger.info(
            "handed %s back (%s)",
            unit,
            why,
            extra={"action": "lease_released", "worker": self.worker_id, "unit": unit},
        )

    async def _take(self, wanted: list[tuple[Pool, int]]) -> None:
        """Take free units: ``count`` of each pool."""
        units = [unit for pool, _ in wanted for unit in pool.units]
        free = await leases.free_units(self.host.read_models, units)
        random.shuffle(free)  # workers starting together spread out
        for pool, count in wanted:
            for unit in (unit for unit in free if unit in pool.units):
                if count == 0:
                    break
                if await self._acquire(unit):
                    count -= 1

    async def _acquire(self, unit: str) -> bool:
        read_models = self.host.read_models
        lease = await leases.acquire(read_models, unit, self.worker_id, self.lease_seconds)
        if lease is None:
            await self._end_stuck_owner(unit)
            return False
        try:
            runner = self._runner(unit, lease)
        except ProjectionistError as exc:  # one unit that cannot run must not stop the rest
            logger.error(
                "cannot run %s: %s",
                unit,
                exc,
                extra={"action": "runner_failed", "worker": self.worker_id, "unit": unit},
            )
            await leases.release(read_models, lease)
            return False
        self._owned[unit] = _Owned(lease, runner)
        logger.info(
            "took %s (token %d)",
            unit,
            lease.token,
            extra={"action": "lease_acquired", "worker": self.worker_id, "unit": unit},
        )
        return True

    async def _end_stuck_owner(self, unit: str) -> None:
        """A free unit we could not take is locked by a batch of its expired owner: one that
        is stopped in the middle of a statement, which no idle limit ends. End it; the unit
        is taken at the next heartbeat."""
        owner = await leases.expired_owner(self.host.read_models, unit)
        if owner is None or owner == self.worker_id:
            return
        stores = {self.host.read_models}
        if unit in self._units:  # a build unit runs on the application's read models
            stores.add(self.host.read_models_for(self._units[unit]))
        # Its stuck batch began before it stopped renewing, at least ~3/4 of a lease ago; a
        # younger transaction of that owner is left alone.
        ended = 0
        for read_models in stores:
            ended += await read_models.end_stuck_transactions(owner, self.lease_seconds / 2)
        if ended:
            logger.warning(
                "ended %d stuck transactions of %s, whose lease on %s expired",
                ended,
                owner,
                unit,
                extra={
                    "action": "stuck_transactions_ended",
                    "worker": self.worker_id,
                    "unit": unit,
                },
            )

    def _runner(self, unit: str, lease: Lease) -> UnitWork:
        if unit in self._builds:
            return BlueGreenBuild(
                self.host.source,
                self.host.read_models,
                self._builds[unit],
                lease,
                retire_after=self.retire_after_seconds,
            )
        _, partition = split_unit(unit)

        async def fence(tx: ReadModelTransaction) -> None:
            await leases.check(tx, lease)

        # The host checks the lease in each batch's transaction where the leases are (its
        # own read models); on another target (Redis), the checkpoint's compare-and-set
        # still prevents a double application.
        return self.host.new_runner(self._units[unit], partition, fence=fence)

    async def _start_runners(self) -> None:
        now = asyncio.get_running_loop().time()
        for unit, owned in self._owned.items():
            if owned.task is not None and not owned.task.done():
                continue
            if owned.task is not None and owned.runner.state is not RunnerState.FAULTED:
                self._finished(unit, owned)  # ended since the renewals: back off if it failed
            if owned.runner.state is RunnerState.FAULTED:
                if not await self._fault_cleared(owned):
                    continue
            elif owned.retry_at > now:
                continue
            owned.note = None
            owned.runner.state = RunnerState.STOPPED
            owned.task = asyncio.create_task(owned.runner.run())

    async def _fault_cleared(self, owned: _Owned) -> bool:
        """A faulted unit resumes once its fault is gone (``projectionist restart``)."""
        async with self.host.read_models.transaction() as tx:
            fault = await operations.load_fault(tx, owned.runner.unit)
        if fault is None:
            logger.info(
                "%s was restarted",
                owned.runner.unit,
                extra={"action": "fault_cleared", "worker": self.worker_id},
            )
        return fault is None

    async def _stop_runner(self, owned: _Owned) -> None:
        owned.runner.stop()
        if owned.task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(owned.task), self.shutdown_seconds)
        except TimeoutError:
            owned.task.cancel()  # its transaction rolls back: nothing half-written
            with contextlib.suppress(BaseException):
                await owned.task
        except Exception:  # noqa: BLE001 - it ended with an error: it has stopped all the same
            pass

    async def _shut_down(self) -> None:
        owned = list(self._owned.values())
        self._owned.clear()
        await asyncio.gather(*(self._stop_runner(o) for o in owned))
        with contextlib.suppress(Exception):
            await leases.unregister(self.host.read_models, self.worker_id)
        logger.info(
            "worker %s stopped",
            self.worker_id,
            extra={"action": "worker_stop", "worker": self.worker_id},
        )

    @staticmethod
    def _jittered(seconds: float) -> float:
        return seconds * random.uniform(0.8, 1.2)
