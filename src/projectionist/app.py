"""An application: one event store, its projections, and what to do with them.

It is what ``projectionist run|status|rebuild --app APP`` loads (``APP`` =
``module:attribute``) and what a program embeds:

    app = Application("sqlite:///shop.db", [order_summaries, daily_sales])
    async with app:                      # opens the store, registers inline projections
        await app.setup()                # schema + read models (idempotent)
        result = await app.store.append("order-1", [NewEvent("OrderCreated", {...})])
        await app.wait_for("order_summaries", result.position)  # read your writes
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

from . import leases, operations
from .bluegreen import stale_projections
from .composition import (
    check_projections,
    checked_upcasters,
    events_given,
    give_upcasters,
    inline_hook,
    read_models_url,
)
from .consistency import wait_until_processed
from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_POLL_INTERVAL
from .errors import (
    ConfigurationError,
)
from .events import Position, validate_position
from .factory import create_store, open_read_models
from .live import LiveProjection
from .operations import DeadLetter, Fault
from .partitions import Partition
from .preparation import prepare_read_model
from .projection import Kind, Projection
from .readmodel import ReadModelStore
from .rebuild import Progress, rebuild
from .recording import OperationsRecords
from .remedies import (
    StreamRetry,
    discard_dead_letters,
    retry_dead_letters,
    retry_parked_stream,
    skip_faults,
)
from .replay import Point, Replay, replay
from .runner import Fence, ProjectionRunner
from .source import EventSource
from .status import ProjectionStatus, projection_statuses
from .store import ChangeSignal, EventStore, OpenClose
from .upcasting import Upcasters
from .upgrading import Progress as UpgradeProgress
from .upgrading import UpgradeReport, upgrade_events
from .urls import redact_url
from .verify import Verification, verify
from .worker import Worker


class Application(OpenClose):
    """An event store, the projections over it, and the operations on them."""

    def __init__(
        self,
        store: str | EventStore | None = None,
        projections: Iterable[Projection] = (),
        *,
        live: Iterable[LiveProjection[Any]] = (),
        schema: str | None = None,
        read_model_url: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        url: str | EventStore | None = None,
        source: EventSource | None = None,
        read_models: str | None = None,
        upcasters: Upcasters | None = None,
    ) -> None:
        """``store`` is the event store's URL (``postgresql://...``, ``sqlite:///path.db``,
        ``memory://``), which the application opens and closes, or an ``EventStore``
        object, which it shares: its owner opens and closes it. (``url=`` is its former
        name, still accepted.)

        Or ``source`` is another ``EventSource`` (events that are not in a store of ours),
        shared as an ``EventStore`` object is, with ``read_models`` the URL of the read
        models' database (``open_read_models``); inline projections need our own store.

        ``upcasters`` are put on the source when it opens: every consumer reads the current
        shapes of events, and our own store records their schema versions
        (docs/schema-evolution.md)."""
        events = events_given(store, url, source)
        self._shared_source = events if isinstance(events, EventSource) else None
        # The URL to connect with, password and all; ``url`` is the one to show.
        self._url = events.url if isinstance(events, EventSource) else events
        self.url = redact_url(self._url)
        """The event store's URL without its password (``open(url)`` may override it)."""
        self.schema = schema
        self.poll_interval = poll_interval
        self.upcasters = checked_upcasters(upcasters)
        projections, live = list(projections), list(live)  # a generator is iterated once
        self.read_model_url = read_models_url(read_model_url, read_models, source)
        check_projections(projections, live, self.read_model_url is not None, source)
        self.projections = {p.name: p for p in projections}
        self.live = {p.name: p for p in live}
        self._source: EventSource | None = None
        # A read-model database of its own (open_read_models).
        self._own_database: ReadModelStore | None = None
        self._opened: contextlib.AsyncExitStack | None = None
        """What open() opened, closed by close() in reverse order."""
        self._runners: dict[str, ProjectionRunner] = {}
        self._worker: Worker | None = None
        self.progress = ChangeSignal()
        """Notified after every batch committed in this process (``wait_for`` listens)."""

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self, url: str | None = None) -> None:
        """Open the store (``url`` overrides the application's), register the inline hooks,
        open the read-model database and projections' own stores. If any of them fails,
        what was opened is closed again and the error raised."""
        if self._source is not None:
            return
        if url is not None and self._shared_source is not None:
            raise ConfigurationError(
                f"this application reads the events of the object it was given "
                f"({self._shared_source.url}): a store URL cannot replace it (no --url)"
            )
        async with contextlib.AsyncExitStack() as opened:
            source = self._shared_source or create_store(
                url or self._url, schema=self.schema, poll_interval=self.poll_interval
            )
            await source.open()
            if source is not self._shared_source:
                opened.push_async_callback(source.close)
            give_upcasters(source, self.upcasters)
            if isinstance(source, EventStore):
                self._add_inline_hooks(source, opened)
            database = None
            if self._read_model_url:
                models = open_read_models(self._read_model_url, schema=self.schema)
                database = await opened.enter_async_context(models)
            for own in self._own_read_models():
                if isinstance(own, OpenClose):
                    await opened.enter_async_context(own)
            self._opened = opened.pop_all()
        self._source, self._own_database = source, database

    def _add_inline_hooks(self, store: EventStore, opened: contextlib.AsyncExitStack) -> None:
        for projection in self.projections.values():
            if projection.kind is Kind.INLINE:
                hook = inline_hook(projection, store)
                store.add_inline_hook(hook)
                opened.callback(store.inline_hooks.remove, hook)

    async def close(self) -> None:
        """Close what ``open()`` opened (a shared store stays open); idempotent."""
        opened, self._opened = self._opened, None
        self._source = self._own_database = None
        if opened is not None:
            await opened.aclose()

    @property
    def read_model_url(self) -> str | None:
        """The read-model database's URL, if it has its own, without its password."""
        return None if self._read_model_url is None else redact_url(self._read_model_url)

    @read_model_url.setter
    def read_model_url(self, url: str | None) -> None:
        self._read_model_url = url

    @property
    def source(self) -> EventSource:
        """Where the projections read their events: our own store, or another source."""
        if self._source is None:
            raise ConfigurationError("the application is not open: use 'async with app:'")
        return self._source

    @property
    def store(self) -> EventStore:
        """Our own event store (append, streams); an application over another source has none."""
        if not isinstance(source := self.source, EventStore):
            raise ConfigurationError(
                f"this application reads events from {source.url}, not from an event store "
                "of ours: it has no app.store (use app.source to read)"
            )
        return source

    @property
    def read_models(self) -> ReadModelStore:
        """Where the read models and their checkpoints live."""
        if self._own_database is not None:
            return self._own_database
        return self.store.read_models()

    # -- per-projection read-model stores (e.g. Redis) ------------------------------------

    def read_models_for(self, projection: Projection) -> ReadModelStore:
        """Where ``projection``'s read model and checkpoint live: its own store, if it has
        one (``projection.read_models``), else the application's."""
        return self.read_models if projection.read_models is None else projection.read_models

    def _own_read_models(self) -> list[ReadModelStore]:
        stores = [p.read_models for p in self.projections.values() if p.read_models is not None]
        return list({id(store): store for store in stores}.values())

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
        if isinstance(self.source, EventStore):
            await self.source.apply_schema()
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
                start = await projection.first_position(self.source)
                async with read_models.transaction() as tx:
                    await prepare_read_model(tx, projection, unit, start)

    async def _built_by_workers(self, projection: Projection) -> bool:
        """A raised version that workers build blue/green (PostgreSQL, declared tables)."""
        read_models = self.read_models_for(projection)
        return (
            projection.kind is Kind.ASYNC
            and bool(projection.tables)
            and read_models.side_schemas() is not None
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
                self._runners[unit] = self.new_runner(projection, partition)
        return [self._runners[unit] for unit in projection.units]

    def new_runner(
        self,
        projection: Projection,
        partition: Partition | None = None,
        *,
        fence: Fence | None = None,
    ) -> ProjectionRunner:
        """A new runner of ``projection`` (or one partition of it) on this application's
        store, its read models, progress signal and operations tables.

        ``fence`` (a lease check) runs in each batch's own transaction, so it is used only
        where the leases are: when the projection's read models are the application's own.
        Another target (Redis) is kept from applying a batch twice by its own checkpoint
        compare-and-set instead.
        """
        read_models = self.read_models_for(projection)
        return ProjectionRunner(
            self.source,
            read_models,
            projection,
            partition=partition,
            fence=fence if read_models is self.read_models else None,
            progress=self.progress,
            records=OperationsRecords.choose(read_models, self.read_models),
        )

    def _async_names(self) -> list[str]:
        return [p.name for p in self.projections.values() if p.kind is Kind.ASYNC]

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
        tasks += [asyncio.ensure_future(live.run(self.source)) for live in self.live.values()]
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
        validate_position(position)
        if projection.kind is not Kind.INLINE:  # inline: written with the events
            read_models = self.read_models_for(projection)
            await wait_until_processed(
                self.source, read_models, projection, position, timeout, self.progress
            )

    async def rebuild(self, name: str, progress: Progress | None = None) -> int:
        """Drop the read model of ``name`` and replay all history into it. Its units' leases
        are taken first, from any worker holding them, and handed back at the end."""
        projection = self.projection(name)
        return await rebuild(
            self.source,
            self.read_models_for(projection),
            projection,
            progress,
            OperationsRecords.choose(self.read_models_for(projection), self.read_models),
            leases_in=self.read_models,
        )

    async def replay(self, name: str, from_: Point) -> Replay:
        """Apply the events of ``name`` after ``from_`` (a Position, or an aware datetime: the
        first event recorded at or after it) again over its current rows, for a projection
        declared ``replay_safe=True``; its units' leases are held meanwhile, as for a rebuild
        (docs/replay.md). Returns each unit's outcome and the events re-applied."""
        projection = self.projection(name)
        read_models = self.read_models_for(projection)
        return await replay(
            self.source,
            read_models,
            projection,
            from_,
            records=OperationsRecords.choose(read_models, self.read_models),
            leases_in=self.read_models,
        )

    async def verify(
        self, name: str, *, float_tolerance: float = 0.0, progress: Progress | None = None
    ) -> Verification:
        """Rebuild ``name`` into scratch space and compare it with the live read model
        (floats within ``float_tolerance``, relative; ``progress`` as for ``rebuild``)."""
        projection = self.projection(name)
        return await verify(
            self.source,
            self.read_models_for(projection),
            projection,
            float_tolerance=float_tolerance,
            progress=progress,
        )

    async def upgrade_events(
        self, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: UpgradeProgress | None = None
    ) -> UpgradeReport:
        """Rewrite the stored events that an upcaster applies to into their current shape,
        in batches (``upgrading``); refused over another system's source and while a
        blue/green build runs."""
        return await upgrade_events(
            self.source, leases_in=self.read_models, batch_size=batch_size, progress=progress
        )

    # -- errors -----------------------------------------------------------------------------

    async def restart(self, name: str) -> int:
        """Clear the faults of projection ``name``: its workers resume it (and retry the
        event that stopped it). Returns how many faulted units were cleared."""
        self.projection(name)
        async with self.read_models.transaction() as tx:
            return await operations.clear_faults(tx, name)

    async def faults(self, name: str | None = None) -> list[Fault]:
        """The faults that stopped this application's projections (``name``'s, if given),
        by unit: the event, the error and its traceback."""
        names = [self.projection(name).name] if name is not None else list(self.projections)
        async with self.read_models.transaction() as tx:
            return await operations.faults_of(tx, names)

    async def skip_fault(self, name: str) -> list[Fault]:
        """Past a poison event under ``on_error="stop"``: move the event that stopped each
        faulted unit of ``name`` to the dead letters and its checkpoint past it; workers
        resume the units at their next heartbeat. Returns the faults skipped."""
        projection = self.projection(name)
        read_models = self.read_models_for(projection)
        records = OperationsRecords.choose(read_models, self.read_models)
        return await skip_faults(
            self.source, read_models, projection, await self.faults(name), records
        )

    async def dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        """Events skipped by this application's ``on_error="skip"`` projections (of one,
        if ``name`` is given), oldest first: another application's on the same database
        are not among them."""
        if name is not None:
            self.projection(name)
        async with self.read_models.transaction() as tx:
            return await operations.dead_letters(tx, name, among=self.projections)

    async def retry_dead_letters(self, ids: Sequence[int]) -> list[tuple[int, str | None]]:
        """Apply each dead letter's event again (after a fix). A letter that succeeds is
        removed in the same transaction; one that fails again stays. The first letter of a
        parked stream retries the stream (``retry_parked_stream``); a later one is refused.
        Returns (id, error)."""
        return await retry_dead_letters(
            self.read_models, self.projections, self.read_models_for, ids, self.source.upcasters
        )

    async def retry_parked_stream(self, name: str, stream_id: str) -> list[StreamRetry]:
        """Apply the letters of ``stream_id`` parked by projection ``name``, in order, and
        un-park it; a letter that fails again stays first, the rest behind it. Safe while
        its workers run (remedies)."""
        projection = self.projection(name)
        return await retry_parked_stream(
            self.read_models,
            projection,
            self.read_models_for(projection),
            stream_id,
            self.source.upcasters,
        )

    async def discard_dead_letters(self, ids: Sequence[int]) -> int:
        """Forget dead letters for good. Returns how many were removed."""
        return await discard_dead_letters(self.read_models, self.projections, ids)

    # -- workers ----------------------------------------------------------------------------

    async def live_workers(self, within: float) -> list[tuple[str, float]]:
        """This application's workers whose last heartbeat is at most ``within`` seconds
        old: (worker id, seconds since that heartbeat), by id. A worker of this application
        can run one of its async projections; one of an application without async
        projections publishes no units, and is told apart from other applications' that way.
        """
        names = set(self._async_names())
        live = await leases.live_workers(self.read_models, within)
        return [
            (worker.worker_id, worker.age)
            for worker in live.values()
            if (worker.projections & names if names else not worker.projections)
        ]

    # -- status -----------------------------------------------------------------------------

    async def status(self) -> list[ProjectionStatus]:
        """Every projection (every partition of partitioned ones), as of now."""
        return await projection_statuses(
            self.source,
            self.read_models,
            self.projections.values(),
            own_read_models=self._own_read_models(),
            runners=self._runners,
        )
