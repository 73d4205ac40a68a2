"""Feeding projections: the async runner (catch-up, then live), inline set-up, rebuilds.

The runner reads from the projection's checkpoint in batches of the types it handles,
applies a batch and moves the checkpoint in one read-model transaction. A crash anywhere
leaves the last committed batch as the truth: the next start continues exactly there.
Catch-up and live are the same loop (read from the checkpoint until nothing is left, then
sleep until new events are visible), so there is no seam where events could slip through.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable

from .errors import ProjectionVersionError, StoreUnavailableError, TransactionConflictError
from .events import Position
from .projection import Kind, Projection
from .readmodel import CheckpointConflictError, ReadModelStore, ReadModelTransaction
from .store import ChangeSignal, EventBatch, EventStore

logger = logging.getLogger("projectionist.runner")

RETRY_BASE_DELAY = 0.1
RETRY_MAX_DELAY = 30.0
# SQLSTATE classes of failures that pass: connection exceptions, transaction rollbacks
# (serialization failures, deadlocks), insufficient resources, operator intervention.
_TRANSIENT_SQLSTATES = ("08", "40", "53", "57P")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is worth retrying as is."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current, StoreUnavailableError | TransactionConflictError | OSError | TimeoutError
        ):
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATES):
            return True
        current = current.__cause__ or current.__context__
    return False


Progress = Callable[[int, int], None]
"""Called during rebuilds with (events done, events in all)."""


class RunnerState(enum.StrEnum):
    STOPPED = "stopped"
    CATCHING_UP = "catching up"
    LIVE = "live"


class ProjectionRunner:
    """Runs one async projection against a store until ``stop()``."""

    def __init__(
        self,
        store: EventStore,
        read_models: ReadModelStore,
        projection: Projection,
        *,
        batch_size: int | None = None,
        progress: ChangeSignal | None = None,
    ) -> None:
        self.store = store
        self.read_models = read_models
        self.projection = projection
        self.batch_size = batch_size or projection.batch_size
        self.state = RunnerState.STOPPED
        self.checkpoint: Position | None = None
        self.progress = progress or ChangeSignal()
        """Notified after every committed batch (``wait_for`` in this process listens)."""
        self._stop = asyncio.Event()
        self._prefetch: tuple[Position, asyncio.Future[EventBatch]] | None = None

    async def prepare(self) -> Position:
        """Create the read model and checkpoint when missing; return the checkpoint."""
        async with self.read_models.transaction() as tx:
            self.checkpoint = await prepare_read_model(tx, self.projection)
        return self.checkpoint

    async def step(self) -> bool:
        """Apply the next batch. False when there was nothing new to read."""
        if self.checkpoint is None:
            await self.prepare()
        assert self.checkpoint is not None
        projection = self.projection
        batch = await self._read_from(self.checkpoint)
        if batch.checkpoint == self.checkpoint:
            return False
        if len(batch.events) == self.batch_size:
            # More history follows: read the next batch while this one is applied.
            self._prefetch = (batch.checkpoint, asyncio.ensure_future(self._read(batch.checkpoint)))
        try:
            async with self.read_models.transaction() as tx:
                # Lock the checkpoint before applying: a second runner waits here and then
                # finds it moved, instead of applying the batch twice.
                stored = await tx.load_checkpoint(projection.name, lock=True)
                if (
                    stored is None
                    or stored.position != self.checkpoint
                    or stored.version != projection.version  # rebuilt by another version
                ):
                    raise CheckpointConflictError(f"projection {projection.name!r} moved on")
                await projection.apply(batch.events, tx)
                await tx.save_checkpoint(
                    projection.name,
                    projection.version,
                    self.checkpoint,
                    batch.checkpoint,
                    len(batch.events),
                )
        except BaseException as exc:
            await self.discard_prefetch()
            if not isinstance(exc, CheckpointConflictError):
                raise
            # Someone else (a rebuild, a second runner) moved it: continue from theirs.
            logger.warning(
                "checkpoint moved by another runner; reloading",
                extra={"action": "checkpoint_conflict", "projection": projection.name},
            )
            await self.prepare()
            return True
        self.checkpoint = batch.checkpoint
        self.state = (
            RunnerState.CATCHING_UP if len(batch.events) == self.batch_size else RunnerState.LIVE
        )
        self.progress.notify()
        return True

    def _read(self, after: Position) -> Awaitable[EventBatch]:
        return self.store.read_all(
            after,
            limit=self.batch_size,
            types=self.projection.types,
            max_bytes=self.projection.max_batch_bytes,
        )

    async def _read_from(self, after: Position) -> EventBatch:
        """The batch after ``after``: the prefetched one when it matches, else a fresh read."""
        if self._prefetch is not None and self._prefetch[0] == after:
            task = self._prefetch[1]
            self._prefetch = None
            return await task
        await self.discard_prefetch()
        return await self._read(after)

    async def discard_prefetch(self) -> None:
        if self._prefetch is not None:
            task = self._prefetch[1]
            self._prefetch = None
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def run(self) -> None:
        """Catch up, then follow live events, until ``stop()``; the current batch finishes."""
        self._stop.clear()
        await self.prepare()
        self.state = RunnerState.CATCHING_UP
        logger.info(
            "projection started at %s",
            self.checkpoint,
            extra={"action": "runner_start", "projection": self.projection.name},
        )
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    if not await self.step():
                        self.state = RunnerState.LIVE
                        assert self.checkpoint is not None
                        await sleep_until_new_events(self.store, self.checkpoint, self._stop)
                    failures = 0
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    failures += 1
                    await self._back_off(exc, failures)
        finally:
            await self.discard_prefetch()
            self.state = RunnerState.STOPPED
            logger.info(
                "projection stopped at %s",
                self.checkpoint,
                extra={"action": "runner_stop", "projection": self.projection.name},
            )

    async def _back_off(self, exc: Exception, failures: int) -> None:
        """After a transient failure (lost connection, serialization failure, timeout):
        wait with exponential backoff and jitter, then go on from the last commit."""
        await self.discard_prefetch()
        delay = min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2 ** (failures - 1))
        delay *= random.uniform(0.5, 1.5)
        logger.warning(
            "transient failure %d, retrying in %.2fs: %s",
            failures,
            delay,
            exc,
            extra={"action": "transient_retry", "projection": self.projection.name},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def run_until_caught_up(self) -> None:
        """Process every event committed before the call, then return."""
        target = await self.store.last_committed()
        await self.prepare()
        assert self.checkpoint is not None
        try:
            while self.checkpoint < target:
                if not await self.step():  # committed, not yet visible: wait for it
                    await self.store.wait_for_events(self.checkpoint, timeout=0.1)
        finally:
            await self.discard_prefetch()
            self.state = RunnerState.STOPPED

    def stop(self) -> None:
        self._stop.set()


async def sleep_until_new_events(store: EventStore, after: Position, stop: asyncio.Event) -> None:
    """Return when an event after ``after`` is visible, ``stop`` is set, or a poll passed."""
    waiting = asyncio.ensure_future(store.wait_for_events(after, timeout=store.poll_interval))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, stopping):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not waiting.cancelled() and waiting.exception() is not None:
        raise waiting.exception()  # type: ignore[misc]


async def prepare_read_model(tx: ReadModelTransaction, projection: Projection) -> Position:
    """Run the projection's (idempotent) setup; create its checkpoint if missing."""
    # Runners starting together queue here: one creates the tables and the checkpoint.
    await tx.lock_projection(projection.name)
    checkpoint = await tx.load_checkpoint(projection.name)
    if checkpoint is not None and checkpoint.version != projection.version:
        raise ProjectionVersionError(
            f"projection {projection.name!r} is at version {projection.version} in code but "
            f"its read model was built by version {checkpoint.version}: run "
            f"'projectionist rebuild {projection.name}'"
        )
    await projection.run_setup(tx)
    if checkpoint is None:
        await tx.save_checkpoint(projection.name, projection.version, None, projection.start, 0)
        return projection.start
    return checkpoint.position


async def rebuild(
    store: EventStore,
    read_models: ReadModelStore,
    projection: Projection,
    progress: Progress | None = None,
) -> int:
    """Drop the read model, reset the checkpoint, replay all history. Returns events applied.

    Async projections replay batch by batch while appends go on (runners elsewhere notice
    the moved checkpoint and follow it). Inline projections replay in one transaction that
    holds appends back, so none can slip between the replay and the first inline append.
    """
    if projection.kind is Kind.INLINE:
        return await _rebuild_inline(store, projection, progress)
    async with read_models.transaction() as tx:
        await _reset(tx, projection)
    target = await store.last_committed()
    total = await store.count_after(projection.start)
    runner = ProjectionRunner(store, read_models, projection)
    runner.checkpoint = projection.start
    last_report = 0.0
    try:
        while runner.checkpoint < target:
            if not await runner.step():
                await store.wait_for_events(runner.checkpoint, timeout=0.1)
            if progress is not None and time.monotonic() - last_report > 0.25:
                last_report = time.monotonic()  # counting is a query: not after every batch
                progress(total - await store.count_after(runner.checkpoint), total)
    finally:
        await runner.discard_prefetch()
    # Counted again: events held back when the rebuild began are in by now.
    total = await store.count_after(projection.start) - await store.count_after(runner.checkpoint)
    if progress is not None:
        progress(total, total)
    return total


async def _reset(tx: ReadModelTransaction, projection: Projection) -> None:
    await tx.lock_projection(projection.name)
    await projection.run_teardown(tx)
    await tx.delete_checkpoint(projection.name)
    await projection.run_setup(tx)
    await tx.save_checkpoint(projection.name, projection.version, None, projection.start, 0)


async def _rebuild_inline(
    store: EventStore, projection: Projection, progress: Progress | None
) -> int:
    async with store.exclusive_replay() as replay:
        tx = replay.read_model
        await _reset(tx, projection)
        checkpoint = projection.start
        applied = 0
        while True:
            batch = await replay.read_all(checkpoint, projection.batch_size, projection.types)
            if batch.checkpoint == checkpoint:
                break
            await projection.apply(batch.events, tx)
            applied += len(batch.events)
            checkpoint = batch.checkpoint
            if progress is not None:
                progress(applied, applied)
        await tx.save_checkpoint(
            projection.name, projection.version, projection.start, checkpoint, applied
        )
    return applied
