"""An application: one event store, its projections, and what to do with them.

It is what ``projectionist run|status|rebuild APP`` loads (``APP`` = ``module:attribute``)
and what a program embeds:

    app = Application("sqlite:///shop.db", [order_summaries, daily_sales])
    async with app:                      # opens the store, registers inline projections
        await app.setup()                # schema + read models (idempotent)
        result = await app.store.append("order-1", [NewEvent("OrderCreated", {...})])
        await app.wait_for("order_summaries", result.position)  # read your writes
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import leases, operations
from .bluegreen import BlueGreenBuild, build_unit, stale_projections
from .errors import (
    BackendError,
    ConfigurationError,
    HandlerError,
    InvalidInputError,
    ProjectionTimeoutError,
)
from .events import Position, RecordedEvent
from .factory import create_store
from .live import LiveProjection
from .operations import DeadLetter, Fault
from .partitions import Partition, split_unit
from .projection import Kind, Projection
from .readmodel import Checkpoint, ReadModelStore, ReadModelTransaction
from .runner import (
    Fence,
    Progress,
    ProjectionRunner,
    RunnerState,
    prepare_read_model,
    rebuild,
)
from .store import Backlog, ChangeSignal, EventStore, InlineHook, OpenClose
from .verify import Verification, verify
from .worker import Worker


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """One unit of a projection (the projection, or one of its partitions), as of now."""

    name: str
    kind: str
    version: int
    state: str
    """not set up, catching up, live, faulted, stopped (no worker runs it), needs rebuild..."""
    position: Position | None
    head: Position
    lag: int
    """Committed events after the projection's position, visible to readers or still held
    back (0 for inline projections); estimated beyond BACKLOG_COUNTED (``lag_estimated``)."""
    events_processed: int
    updated_at: datetime | None
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
    fault: Fault | None = None
    held_back_seconds: float = 0.0
    """How long committed events have waited, invisible to every reader, behind an older
    open transaction that appended to this store (the same for every projection)."""
    held_back_by: str | None = None
    """That transaction: process id, state and age (never its SQL text)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "partition": self.partition,
            "state": self.state,
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
            "fault": None if self.fault is None else self.fault.as_dict(),
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
            "held_back_seconds": self.held_back_seconds,
            "held_back_by": self.held_back_by,
        }


class Application(OpenClose):
    """The store URL, the projections, and the operations on them."""

    def __init__(
        self,
        url: str | EventStore,
        projections: Iterable[Projection] = (),
        *,
        live: Iterable[LiveProjection[Any]] = (),
        schema: str | None = None,
        read_model_url: str | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        # A store given as an object is shared, not owned: the caller opens and closes it.
        self._shared_store = url if isinstance(url, EventStore) else None
        self.url = url.url if isinstance(url, EventStore) else url
        self.schema = schema
        self.poll_interval = poll_interval
        self.projections = {p.name: p for p in projections}
        self.live = {p.name: p for p in live}
        names = [p.name for p in projections] + [p.name for p in live]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"projection names must be unique, got {sorted(names)}")
        self.read_model_url = read_model_url
        if read_model_url and any(p.kind is Kind.INLINE for p in self.projections.values()):
            raise ConfigurationError(
                "inline projections write in the append's transaction: their read model must "
                "live in the event store's database (drop read_model_url or make them async)"
            )
        _refuse_inline_with_own_read_models(self.projections.values())
        self._own_opened: list[OpenClose] = []  # projections' own read-model stores
        self._store: EventStore | None = None
        # A read-model database of its own: reached through a store object on that URL,
        # of which only the read-model side (tables and checkpoints) is used.
        self._read_model_host: EventStore | None = None
        self._runners: dict[str, ProjectionRunner] = {}
        self._worker: Worker | None = None
        self.progress = ChangeSignal()
        """Notified after every batch committed in this process (``wait_for`` listens)."""
        self._hooks: list[InlineHook] = []

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self, url: str | None = None) -> None:
        """Open the store (``url`` overrides the application's) and register inline hooks."""
        if self._store is not None:
            return
        store = self._shared_store or create_store(
            url or self.url, schema=self.schema, poll_interval=self.poll_interval
        )
        await store.open()
        self._hooks = [_inline_hook(p) for p in self.projections.values() if p.kind is Kind.INLINE]
        for hook in self._hooks:
            store.add_inline_hook(hook)
        self._store = store
        if self.read_model_url:
            host = create_store(self.read_model_url, schema=self.schema)
            try:
                await host.open()
            except BaseException:
                await self.close()
                raise
            self._read_model_host = host
        await self._open_own_read_models()

    async def close(self) -> None:
        await self._close_own_read_models()
        if self._read_model_host is not None:
            host, self._read_model_host = self._read_model_host, None
            await host.close()
        if self._store is not None:
            store, self._store = self._store, None
            for hook in self._hooks:
                store.inline_hooks.remove(hook)
            if store is not self._shared_store:
                await store.close()

    @property
    def store(self) -> EventStore:
        if self._store is None:
            raise ConfigurationError("the application is not open: use 'async with app:'")
        return self._store

    @property
    def read_models(self) -> ReadModelStore:
        """Where the read models and their checkpoints live."""
        return (self._read_model_host or self.store).read_models()

    # -- per-projection read-model stores (e.g. Redis) ------------------------------------

    def read_models_for(self, projection: Projection) -> ReadModelStore:
        """Where ``projection``'s read model and checkpoint live: its own store, if it has
        one (``projection.read_models``), else the application's."""
        return self.read_models if projection.read_models is None else projection.read_models

    def _own_read_models(self) -> list[ReadModelStore]:
        stores = [p.read_models for p in self.projections.values() if p.read_models is not None]
        return list({id(store): store for store in stores}.values())

    async def _open_own_read_models(self) -> None:
        opened: list[OpenClose] = []
        try:
            for store in self._own_read_models():
                if isinstance(store, OpenClose):
                    await store.open()
                    opened.append(store)
        except BaseException:
            for done in reversed(opened):
                await done.close()
            await self.close()
            raise
        self._own_opened = opened

    async def _close_own_read_models(self) -> None:
        opened, self._own_opened = self._own_opened, []
        for store in reversed(opened):
            await store.close()

    # ------------------------------------------------------------------------------------

    def projection(self, name: str) -> Projection:
        try:
            return self.projections[name]
        except KeyError:
            known = ", ".join(sorted(self.projections)) or "none"
            raise ConfigurationError(f"no projection named {name!r} (known: {known})") from None

    async def prepare_schema(self) -> None:
        """Create or migrate the store's schema, the checkpoint and operations tables
        (leases, workers, faults, dead letters: see ``operations``)."""
        await self.store.apply_schema()
        await self.read_models.apply_schema()
        for own in self._own_read_models():
            await own.apply_schema()

    async def setup(self) -> None:
        """Apply the schema and prepare every read model (idempotent).

        An inline projection seen for the first time is built from the whole history, with
        appends held back meanwhile, so it is complete before its first inline append.
        """
        await self.prepare_schema()
        for projection in self.projections.values():
            read_models = self.read_models_for(projection)
            checkpoint = await read_models.checkpoint(projection.name)
            if projection.kind is Kind.INLINE and checkpoint is None:
                await rebuild(self.store, read_models, projection)
                continue
            if await self._built_by_workers(projection):
                continue  # a worker builds the new version beside the old one (blue/green)
            for unit in projection.units:
                async with read_models.transaction() as tx:
                    await prepare_read_model(tx, projection, unit)

    async def _built_by_workers(self, projection: Projection) -> bool:
        """A raised version that workers build blue/green (PostgreSQL, declared tables)."""
        read_models = self.read_models_for(projection)
        return (
            projection.kind is Kind.ASYNC
            and bool(projection.tables)
            and hasattr(read_models, "in_schema")
            and bool(await stale_projections(read_models, [projection]))
        )

    # -- running ----------------------------------------------------------------------------

    def runner(self, name: str) -> ProjectionRunner:
        """The runner of an unpartitioned async projection, in this process."""
        runners = self.runners(name)
        if len(runners) != 1:
            raise ConfigurationError(f"projection {name!r} has partitions: use runners()")
        return runners[0]

    def runners(self, name: str) -> list[ProjectionRunner]:
        """The runners of an async projection in this process, one per partition."""
        projection = self.projection(name)
        if projection.kind is not Kind.ASYNC:
            raise ConfigurationError(f"projection {name!r} is {projection.kind}: it has no runner")
        for partition, unit in zip(projection.partition_list, projection.units, strict=True):
            if unit not in self._runners:
                self._runners[unit] = ProjectionRunner(
                    self.store,
                    self.read_models_for(projection),
                    projection,
                    progress=self.progress,
                    partition=partition,
                    operations_store=self.read_models,
                )
        return [self._runners[unit] for unit in projection.units]

    def _async_names(self) -> list[str]:
        return [p.name for p in self.projections.values() if p.kind is Kind.ASYNC]

    def new_runner(
        self,
        projection: Projection,
        partition: Partition | None = None,
        *,
        fence: Fence | None = None,
    ) -> ProjectionRunner:
        """A runner of ``projection`` (its ``partition``). ``fence`` is checked in each
        batch's transaction only where the leases are (the application's read models), not
        on another target (Redis), whose checkpoint compare-and-set still prevents a double
        application."""
        read_models = self.read_models_for(projection)
        return ProjectionRunner(
            self.store,
            read_models,
            projection,
            partition=partition,
            fence=fence if read_models is self.read_models else None,
            progress=self.progress,
            operations_store=self.read_models,
        )

    def worker(self, **options: Any) -> Worker:
        """A worker for this application's async projections (see ``Worker`` for options)."""
        return Worker(self, **options)

    async def run(self, **worker_options: Any) -> None:
        """Run every async projection (through a ``Worker``, sharing them with any other
        workers on the same database) and every live projection, until ``stop()``.

        A projection whose handler fails is handled by its ``on_error`` policy; it never
        stops the others. Returns once the current batches have committed.
        """
        worker = self._worker = self.worker(**worker_options)
        tasks = [asyncio.ensure_future(worker.run())]
        tasks += [asyncio.ensure_future(live.run(self.store)) for live in self.live.values()]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._worker = None

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()
        for runner in self._runners.values():
            runner.stop()
        for live in self.live.values():
            live.stop()

    async def run_until_caught_up(self) -> None:
        """Bring every async projection up to the current head, then return."""
        for name in self._async_names():
            for runner in self.runners(name):
                await runner.run_until_caught_up()

    async def wait_for(self, name: str, position: Position, timeout: float = 5.0) -> None:
        """Return once projection ``name`` has processed ``position`` (read your writes).

        Raises ProjectionTimeoutError naming how far behind it is after ``timeout`` seconds.
        """
        projection = self.projection(name)
        if projection.kind is Kind.INLINE:
            return  # written in the same transaction as the events
        deadline = time.monotonic() + timeout
        while True:
            token = self.progress.token
            checkpoints = await self.read_models_for(projection).checkpoints()
            at = [checkpoints[u].position if u in checkpoints else None for u in projection.units]
            if all(p is not None and p >= position for p in at):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                slowest = min((p for p in at if p is not None), default=None)
                behind = await self.store.count_after(slowest) if slowest is not None else "all"
                raise ProjectionTimeoutError(
                    f"projection {name!r} did not reach position {position} within "
                    f"{timeout:g}s: it is at {slowest or 'no checkpoint'}, {behind} events "
                    "behind the head (is a worker running it?)"
                )
            # Runners in this process wake us at once; others are polled.
            await self.progress.wait(token, min(remaining, 0.05))

    async def rebuild(self, name: str, progress: Progress | None = None) -> int:
        """Drop the read model of ``name`` and replay all history into it."""
        projection = self.projection(name)
        return await rebuild(
            self.store, self.read_models_for(projection), projection, progress, self.read_models
        )

    async def verify(self, name: str) -> Verification:
        """Rebuild ``name`` into scratch space and compare it with the live read model."""
        projection = self.projection(name)
        return await verify(self.store, self.read_models_for(projection), projection)

    # -- errors -----------------------------------------------------------------------------

    async def restart(self, name: str) -> int:
        """Clear the faults of projection ``name``: its workers resume it (and retry the
        event that stopped it). Returns how many faulted units were cleared."""
        self.projection(name)
        async with self.read_models.transaction() as tx:
            return await operations.clear_faults(tx, name)

    async def dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        """Events skipped by ``on_error="skip"`` projections, oldest first."""
        if name is not None:
            self.projection(name)
        async with self.read_models.transaction() as tx:
            return await operations.dead_letters(tx, name)

    async def retry_dead_letters(self, ids: Sequence[int]) -> list[tuple[int, str | None]]:
        """Apply each dead letter's event again (after a fix). A letter that succeeds is
        removed in the same transaction; one that fails again stays. Returns (id, error)."""
        results: list[tuple[int, str | None]] = []
        for letter_id in ids:
            try:
                async with self.read_models.transaction() as tx:
                    letter = await self._dead_letter(tx, letter_id)
                    projection = self.projection(letter.projection)
                    if letter.version != projection.version:
                        raise InvalidInputError(
                            f"dead letter {letter_id} was skipped by version {letter.version} "
                            f"of {projection.name!r}, the code is version "
                            f"{projection.version}: discard it"
                        )
                    if self.read_models_for(projection) is self.read_models:
                        await projection.apply([letter.event], tx)
                    else:  # its own store (Redis): applied there, then forgotten here
                        async with self.read_models_for(projection).transaction() as own:
                            await projection.apply([letter.event], own)
                    await operations.delete_dead_letter(tx, letter_id)
                results.append((letter_id, None))
            except HandlerError as exc:
                results.append((letter_id, operations.describe(exc)[0]))
        return results

    async def discard_dead_letters(self, ids: Sequence[int]) -> int:
        """Forget dead letters for good. Returns how many were removed."""
        async with self.read_models.transaction() as tx:
            for letter_id in ids:
                await self._dead_letter(tx, letter_id)
                await operations.delete_dead_letter(tx, letter_id)
        return len(ids)

    async def _dead_letter(self, tx: ReadModelTransaction, letter_id: int) -> DeadLetter:
        found = await operations.dead_letters(tx, ids=[letter_id])
        if not found:
            raise InvalidInputError(f"there is no dead letter {letter_id}")
        return found[0]

    # -- status -----------------------------------------------------------------------------

    async def status(self) -> list[ProjectionStatus]:
        """Every projection (every partition of partitioned ones), as of now."""
        head = await self.store.head()
        checkpoints = await self.read_models.checkpoints()
        for own in self._own_read_models():
            checkpoints.update(await own.checkpoints())
        held_back = await self.store.held_back()
        try:
            lease_rows = await leases.all_leases(self.read_models)
            faults = await operations.all_faults(self.read_models)
            letters = await operations.count_dead_letters(self.read_models)
        except BackendError:  # operations tables missing: set up by an older release
            lease_rows, faults, letters = {}, {}, {}
        statuses = []
        for projection in self.projections.values():
            for partition, unit in zip(projection.partition_list, projection.units, strict=True):
                status = await self._unit_status(
                    projection,
                    unit,
                    head,
                    checkpoints.get(unit),
                    lease_rows.get(unit),
                    building=build_unit(projection) in lease_rows,
                )
                statuses.append(
                    dataclasses.replace(
                        status,
                        partition=None if partition is None else str(partition),
                        fault=faults.get(unit),
                        state=_fault_state(unit in faults, status.state),
                        dead_letters=letters.get(unit, 0),
                        held_back_seconds=held_back.seconds if held_back else 0.0,
                        held_back_by=held_back.by if held_back else None,
                    )
                )
            statuses += await self._build_status(projection, head, lease_rows)
        return statuses

    async def _build_status(
        self, projection: Projection, head: Position, lease_rows: dict[str, leases.LeaseRow]
    ) -> list[ProjectionStatus]:
        """A blue/green build of a newer version in progress, shown beside the old one."""
        lease = lease_rows.get(build_unit(projection))
        if lease is None or projection.kind is not Kind.ASYNC:
            return []
        if projection not in await stale_projections(self.read_models, [projection]):
            return []
        build = BlueGreenBuild(self.store, self.read_models, projection)
        position = await build.checkpoint()
        backlog = await self.store.backlog(position or projection.start)
        report = lease.report
        return [
            ProjectionStatus(
                name=projection.name,
                kind="async",
                version=projection.version,
                state="rebuilding (blue/green)" if lease.owner else "waiting to rebuild",
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

    async def _unit_status(
        self,
        projection: Projection,
        unit: str,
        head: Position,
        checkpoint: Checkpoint | None,
        lease: leases.LeaseRow | None,
        *,
        building: bool = False,
    ) -> ProjectionStatus:
        inline = projection.kind is Kind.INLINE
        position = None if checkpoint is None else head if inline else checkpoint.position
        _, partition = split_unit(unit)
        backlog = None
        if not inline and position is not None:
            backlog = await self.store.backlog(position, partition)
        report = lease.report if lease is not None else None
        runner = self._runners.get(unit)
        if checkpoint is None:
            state = "not set up"
        elif checkpoint.version < projection.version and building:
            state = f"serving version {checkpoint.version} (version {projection.version} building)"
        elif checkpoint.version != projection.version:
            state = f"needs rebuild (read model is version {checkpoint.version})"
        elif inline:
            state = "inline"
        elif report is not None:
            state = report.state
        elif runner is not None and runner.state is not RunnerState.STOPPED:
            state = runner.state.value
        else:
            state = "stopped"
        return ProjectionStatus(
            name=projection.name,
            kind=projection.kind.value,
            version=checkpoint.version if checkpoint else projection.version,
            state=state,
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
            errors=report.errors if report else 0,
            last_error=report.last_error if report else None,
        )


def _age(backlog: Backlog | None) -> float:
    """How long the oldest event of a backlog has waited (0 when nothing waits)."""
    if backlog is None or backlog.oldest is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - backlog.oldest).total_seconds())


def _fault_state(faulted: bool, reported: str) -> str:
    """A recorded fault wins; a cleared one shows as restarting until its owner reports."""
    if faulted:
        return "faulted"
    return "restarting" if reported == "faulted" else reported


def _inline_hook(projection: Projection) -> InlineHook:
    async def hook(tx: ReadModelTransaction, events: Sequence[RecordedEvent]) -> None:
        await projection.apply(events, tx)

    return hook


def _refuse_inline_with_own_read_models(projections: Iterable[Projection]) -> None:
    for projection in projections:
        if projection.kind is Kind.INLINE and projection.read_models is not None:
            raise ConfigurationError(
                f"projection {projection.name!r} is inline, so it writes in the append's own "
                "transaction: it cannot have a read-model store of its own (such as Redis); "
                "make it async"
            )
