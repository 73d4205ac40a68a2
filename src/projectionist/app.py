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
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import ConfigurationError, ProjectionTimeoutError
from .events import Position, RecordedEvent
from .factory import create_store
from .live import LiveProjection
from .projection import Kind, Projection
from .readmodel import ReadModelStore, ReadModelTransaction
from .runner import Progress, ProjectionRunner, RunnerState, prepare_read_model, rebuild
from .store import ChangeSignal, EventStore, InlineHook, OpenClose


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    name: str
    kind: str
    version: int
    state: str
    position: Position | None
    head: Position
    lag: int
    """Events after the projection's position (0 for inline projections)."""
    events_processed: int
    updated_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "state": self.state,
            "position": None if self.position is None else str(self.position),
            "head": str(self.head),
            "lag": self.lag,
            "events_processed": self.events_processed,
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
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
        self._progress = ChangeSignal()
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

    async def setup(self) -> None:
        """Apply the schema and prepare every read model (idempotent).

        An inline projection seen for the first time is built from the whole history, with
        appends held back meanwhile, so it is complete before its first inline append.
        """
        await self.store.apply_schema()
        await self.read_models.apply_schema()
        for own in self._own_read_models():
            await own.apply_schema()
        for projection in self.projections.values():
            read_models = self.read_models_for(projection)
            checkpoint = await read_models.checkpoint(projection.name)
            if projection.kind is Kind.INLINE and checkpoint is None:
                await rebuild(self.store, read_models, projection)
            else:
                async with read_models.transaction() as tx:
                    await prepare_read_model(tx, projection)

    # -- running ----------------------------------------------------------------------------

    def runner(self, name: str) -> ProjectionRunner:
        projection = self.projection(name)
        if projection.kind is not Kind.ASYNC:
            raise ConfigurationError(f"projection {name!r} is {projection.kind}: it has no runner")
        if name not in self._runners:
            self._runners[name] = ProjectionRunner(
                self.store, self.read_models_for(projection), projection, progress=self._progress
            )
        return self._runners[name]

    def _async_names(self) -> list[str]:
        return [p.name for p in self.projections.values() if p.kind is Kind.ASYNC]

    async def run(self) -> None:
        """Run every async and live projection until ``stop()``; the current batches finish.

        If one projection's handler raises, the others are stopped and the error surfaces.
        """
        tasks = [asyncio.ensure_future(self.runner(name).run()) for name in self._async_names()]
        tasks += [asyncio.ensure_future(live.run(self.store)) for live in self.live.values()]
        if not tasks:
            return
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.stop()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        for runner in self._runners.values():
            runner.stop()
        for live in self.live.values():
            live.stop()

    async def run_until_caught_up(self) -> None:
        """Bring every async projection up to the current head, then return."""
        for name in self._async_names():
            await self.runner(name).run_until_caught_up()

    async def wait_for(self, name: str, position: Position, timeout: float = 5.0) -> None:
        """Return once projection ``name`` has processed ``position`` (read your writes).

        Raises ProjectionTimeoutError naming how far behind it is after ``timeout`` seconds.
        """
        projection = self.projection(name)
        if projection.kind is Kind.INLINE:
            return  # written in the same transaction as the events
        deadline = time.monotonic() + timeout
        while True:
            token = self._progress.token
            checkpoint = await self.read_models_for(projection).checkpoint(name)
            if checkpoint is not None and checkpoint.position >= position:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                at = checkpoint.position if checkpoint else None
                behind = await self.store.count_after(at) if at is not None else "all"
                raise ProjectionTimeoutError(
                    f"projection {name!r} did not reach position {position} within "
                    f"{timeout:g}s: it is at {at or 'no checkpoint'}, {behind} events behind "
                    "the head (is a worker running it?)"
                )
            # Runners in this process wake us at once; others are polled.
            await self._progress.wait(token, min(remaining, 0.05))

    async def rebuild(self, name: str, progress: Progress | None = None) -> int:
        """Drop the read model of ``name`` and replay all history into it."""
        projection = self.projection(name)
        return await rebuild(self.store, self.read_models_for(projection), projection, progress)

    async def status(self) -> list[ProjectionStatus]:
        head = await self.store.head()
        checkpoints = await self.read_models.checkpoints()
        for own in self.projections.values():
            if own.read_models is not None:
                checkpoints.pop(own.name, None)
                if (checkpoint := await own.read_models.checkpoint(own.name)) is not None:
                    checkpoints[own.name] = checkpoint
        statuses = []
        for projection in self.projections.values():
            checkpoint = checkpoints.get(projection.name)
            inline = projection.kind is Kind.INLINE
            position = None if checkpoint is None else head if inline else checkpoint.position
            lag = 0 if inline or position is None else await self.store.count_after(position)
            runner = self._runners.get(projection.name)
            if checkpoint is None:
                state = "not set up"
            elif checkpoint.version != projection.version:
                state = f"needs rebuild (read model is version {checkpoint.version})"
            elif runner is not None and runner.state is not RunnerState.STOPPED:
                state = runner.state.value
            else:
                state = "up to date" if lag == 0 else "behind"
            statuses.append(
                ProjectionStatus(
                    name=projection.name,
                    kind=projection.kind.value,
                    version=projection.version,
                    state=state,
                    position=position,
                    head=head,
                    lag=lag,
                    events_processed=checkpoint.events_processed if checkpoint else 0,
                    updated_at=checkpoint.updated_at if checkpoint else None,
                )
            )
        return statuses


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
