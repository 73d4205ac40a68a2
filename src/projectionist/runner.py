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
from collections import deque
from collections.abc import Awaitable, Callable

from . import operations
from .errors import (
    HandlerError,
    LeaseLostError,
    ProjectionSupersededError,
    ProjectionVersionError,
    StoreUnavailableError,
    TransactionConflictError,
)
from .events import Position
from .partitions import Partition, split_unit, unit_name
from .projection import Kind, OnError, Projection
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
            current,
            StoreUnavailableError | TransactionConflictError | ConnectionError | TimeoutError,
        ):
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATES):
            return True
        current = current.__cause__ or current.__context__
    return False


Progress = Callable[[int, int], None]
"""Called during rebuilds with (events done, events in all)."""
Fence = Callable[[ReadModelTransaction], Awaitable[None]]
"""Run inside every batch's transaction before it applies: raises LeaseLostError when this
runner no longer owns its unit (the worker's lease check)."""
RATE_WINDOW = 60.0


class RunnerState(enum.StrEnum):
    STOPPED = "stopped"
    CATCHING_UP = "catching up"
    LIVE = "live"
    FAULTED = "faulted"


class ProjectionRunner:
    """Runs one async projection, or one partition of it, against a store until ``stop()``.

    A handler's failure is met by the projection's policy: ``retries`` more attempts with
    backoff, then ``on_error``: stop in a faulted state (recorded in ``projection_faults``)
    or skip the event into ``projection_dead_letters``. A failure in a batch is first
    narrowed down to its event by applying that stretch of history one event at a time.
    """

    def __init__(
        self,
        store: EventStore,
        read_models: ReadModelStore,
        projection: Projection,
        *,
        batch_size: int | None = None,
        progress: ChangeSignal | None = None,
        partition: Partition | None = None,
        fence: Fence | None = None,
        operations_store: ReadModelStore | None = None,
        record_operations: bool = True,
    ) -> None:
        self.store = store
        self.read_models = read_models
        if not record_operations:  # a side build or a verification: faults in memory only
            operations_store = None
        elif operations_store is None and read_models.dialect in ("postgres", "sqlite"):
            operations_store = read_models
        self.operations_store = operations_store
        """Where faults and dead letters go (SQL): the read models' database, or for other
        targets (Redis) the application's; None: faults are kept in memory only."""
        self._shared = operations_store is read_models
        """Faults and dead letters commit with the batch (same database), else on their own."""
        self.projection = projection
        self.partition = partition
        self.unit = unit_name(projection.name, partition)
        """The checkpoint's name: the projection's, or its partition's ("name#2/4")."""
        self.batch_size = batch_size or projection.batch_size
        self.fence = fence
        self.state = RunnerState.STOPPED
        self.checkpoint: Position | None = None
        self.progress = progress or ChangeSignal()
        """Notified after every committed batch (``wait_for`` in this process listens)."""
        self.fault: operations.Fault | None = None
        self.last_error: str | None = None
        self.errors = 0
        self.last_batch_seconds: float | None = None
        self._processed: deque[tuple[float, int]] = deque()  # (time, events) per batch
        self._stop = asyncio.Event()
        self._prefetch: tuple[Position, asyncio.Future[EventBatch]] | None = None
        self._isolate_until: Position | None = None
        self.until: Position | None = None
        """If set, the runner never goes past this position."""
        self._attempts: dict[Position, int] = {}

    async def prepare(self) -> Position:
        """Create the read model and checkpoint when missing; return the checkpoint."""
        async with self.read_models.transaction() as tx:
            self.checkpoint = await prepare_read_model(tx, self.projection, self.unit)
        if self.operations_store is not None:
            async with self.operations_store.transaction() as tx:
                self.fault = await operations.load_fault(tx, self.unit)
        return self.checkpoint

    @property
    def events_per_second(self) -> float:
        """Events applied per second over the last minute."""
        horizon = time.monotonic() - RATE_WINDOW
        while self._processed and self._processed[0][0] < horizon:
            self._processed.popleft()
        return sum(count for _, count in self._processed) / RATE_WINDOW

    async def step(self) -> bool:
        """Apply the next batch. False when there was nothing new to read."""
        if self.checkpoint is None:
            await self.prepare()
        assert self.checkpoint is not None
        batch = await self._read_from(self.checkpoint)
        if self.until is not None and batch.checkpoint > self.until:
            # Stop exactly at ``until`` (verify compares with a read model that is there).
            batch = EventBatch([e for e in batch.events if e.position <= self.until], self.until)
        if batch.checkpoint == self.checkpoint:
            return False
        if len(batch.events) == self._limit():
            # More history follows: read the next batch while this one is applied.
            self._prefetch = (batch.checkpoint, asyncio.ensure_future(self._read(batch.checkpoint)))
        started = time.monotonic()
        try:
            async with self.read_models.transaction() as tx:
                await self._claim(tx)
                await self.projection.apply(batch.events, tx)
                await self._commit_checkpoint(tx, batch)
        except CheckpointConflictError:
            await self.discard_prefetch()
            # Someone else (a rebuild, a second runner) moved it: continue from theirs.
            logger.warning(
                "checkpoint moved by another runner; reloading",
                extra={"action": "checkpoint_conflict", "projection": self.unit},
            )
            await self.prepare()
            return True
        except HandlerError as exc:
            await self.discard_prefetch()
            if is_transient(exc):
                raise
            await self._handler_failed(batch, exc)
            return True
        except BaseException:
            await self.discard_prefetch()
            raise
        self.last_batch_seconds = time.monotonic() - started
        self._processed.append((started, len(batch.events)))
        await self._moved_to(batch)
        return True

    async def _claim(self, tx: ReadModelTransaction) -> None:
        """Lock the checkpoint before applying: a second runner waits here and then finds
        it moved, instead of applying the batch twice. Then check the lease, if any."""
        stored = await tx.load_checkpoint(self.unit, lock=True)
        if (
            stored is None
            or stored.position != self.checkpoint
            or stored.version != self.projection.version  # rebuilt by another version
        ):
            raise CheckpointConflictError(f"projection {self.unit!r} moved on")
        if self.fence is not None:
            await self.fence(tx)

    async def _commit_checkpoint(self, tx: ReadModelTransaction, batch: EventBatch) -> None:
        await tx.save_checkpoint(
            self.unit, self.projection.version, self.checkpoint, batch.checkpoint, len(batch.events)
        )
        if self.fault is not None and self._shared:  # it got past the event that stopped it
            await operations.clear_fault(tx, self.unit)

    async def _moved_to(self, batch: EventBatch) -> None:
        self.checkpoint = batch.checkpoint
        if self.fault is not None and not self._shared and self.operations_store is not None:
            async with self.operations_store.transaction() as tx:
                await operations.clear_fault(tx, self.unit)
        self.fault = None
        if self._isolate_until is not None and self.checkpoint >= self._isolate_until:
            self._isolate_until = None
        self.state = (
            RunnerState.CATCHING_UP if len(batch.events) == self._limit() else RunnerState.LIVE
        )
        self.progress.notify()

    async def _handler_failed(self, batch: EventBatch, exc: HandlerError) -> None:
        """Find the failing event, retry it, then stop or skip it as the projection says."""
        self.errors += 1
        self.last_error = str(exc)
        if len(batch.events) > 1:
            # Which event? Apply this stretch one event at a time: the good ones commit,
            # the poison one fails alone.
            self._isolate_until = batch.checkpoint
            logger.warning(
                "batch failed; applying its events one at a time: %s",
                exc,
                extra={"action": "handler_error_isolating", "projection": self.unit},
            )
            return
        event = batch.events[0]
        attempts = self._attempts[event.position] = self._attempts.get(event.position, 0) + 1
        if attempts <= self.projection.retries:
            logger.warning(
                "handler failed (attempt %d of %d): %s",
                attempts,
                self.projection.retries + 1,
                exc,
                extra={"action": "handler_retry", "projection": self.unit},
            )
            await self._sleep(_backoff(attempts))
            return
        del self._attempts[event.position]
        if self.projection.on_error is OnError.SKIP:
            await self._dead_letter(batch, exc, attempts)
            return
        if self.operations_store is not None:
            async with self.operations_store.transaction() as tx:
                self.fault = await operations.record_fault(
                    tx, self.unit, self.projection.version, event, exc, attempts
                )
        self.state = RunnerState.FAULTED
        logger.error(
            "projection faulted: %s",
            exc,
            extra={"action": "projection_faulted", "projection": self.unit},
        )
        raise exc

    async def _dead_letter(self, batch: EventBatch, exc: HandlerError, attempts: int) -> None:
        """Record the event as a dead letter and move the checkpoint past it, together."""
        event = batch.events[0]
        version = self.projection.version
        if self.operations_store is not None and not self._shared:
            # Another database: the letter first (at least once), then the checkpoint.
            async with self.operations_store.transaction() as tx:
                await operations.add_dead_letter(tx, self.unit, version, event, exc, attempts)
        try:
            async with self.read_models.transaction() as tx:
                await self._claim(tx)
                if self._shared:
                    await operations.add_dead_letter(tx, self.unit, version, event, exc, attempts)
                await self._commit_checkpoint(tx, batch)
        except CheckpointConflictError:
            await self.prepare()
            return
        logger.error(
            "event skipped into the dead letters: %s",
            exc,
            extra={"action": "dead_lettered", "projection": self.unit},
        )
        await self._moved_to(batch)

    def _limit(self) -> int:
        return 1 if self._isolate_until is not None else self.batch_size

    def _read(self, after: Position) -> Awaitable[EventBatch]:
        return self.store.read_all(
            after,
            limit=self._limit(),
            types=self.projection.types,
            max_bytes=self.projection.max_batch_bytes,
            partition=self.partition,
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
        """Catch up, then follow live events, until ``stop()``; the current batch finishes.

        Returns (does not raise) when the projection faults (``state`` is FAULTED, ``fault``
        says why) or when its lease is lost; transient failures are retried forever."""
        self._stop.clear()
        failures = 0
        try:
            await self._prepare_retrying()
            if self.fault is not None:
                # Stopped by an earlier run (maybe another worker's): it stays stopped
                # until someone clears the fault (Application.restart).
                self.state = RunnerState.FAULTED
                return
            self.state = RunnerState.CATCHING_UP
            logger.info(
                "projection started at %s",
                self.checkpoint,
                extra={"action": "runner_start", "projection": self.unit},
            )
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
        except HandlerError:
            return  # faulted: recorded, logged; the other projections go on
        except LeaseLostError as exc:
            logger.warning(
                "lease lost, stopping: %s",
                exc,
                extra={"action": "lease_lost", "projection": self.unit},
            )
        finally:
            await self.discard_prefetch()
            if self.state is not RunnerState.FAULTED:
                self.state = RunnerState.STOPPED
            logger.info(
                "projection stopped at %s",
                self.checkpoint,
                extra={"action": "runner_stop", "projection": self.unit},
            )

    async def _prepare_retrying(self) -> None:
        failures = 0
        while True:
            try:
                await self.prepare()
                return
            except Exception as exc:
                if not is_transient(exc) or self._stop.is_set():
                    raise
                failures += 1
                await self._back_off(exc, failures)

    async def _back_off(self, exc: Exception, failures: int) -> None:
        """After a transient failure (lost connection, serialization failure, timeout):
        wait with exponential backoff and jitter, then go on from the last commit."""
        await self.discard_prefetch()
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        delay = _backoff(failures)
        logger.warning(
            "transient failure %d, retrying in %.2fs: %s",
            failures,
            delay,
            exc,
            extra={"action": "transient_retry", "projection": self.unit},
        )
        await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on ``stop()``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def run_until_caught_up(self, stop: asyncio.Event | None = None) -> None:
        """Process every event committed before the call, then return (sooner if ``stop``
        is set: after the current batch)."""
        target = await self.store.last_committed()
        await self.prepare()
        assert self.checkpoint is not None
        try:
            while self.checkpoint < target and not (stop is not None and stop.is_set()):
                if not await self.step():  # committed, not yet visible: wait for it
                    await self.store.wait_for_events(self.checkpoint, timeout=0.1)
        finally:
            await self.discard_prefetch()
            self.state = RunnerState.STOPPED

    def stop(self) -> None:
        self._stop.set()


def _backoff(failures: int) -> float:
    """Exponential backoff with jitter: 0.1 s, 0.2 s, 0.4 s ... up to 30 s, +-50%."""
    delay = min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2.0 ** (failures - 1))
    return delay * random.uniform(0.5, 1.5)


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


async def prepare_read_model(
    tx: ReadModelTransaction, projection: Projection, unit: str | None = None
) -> Position:
    """Run the projection's (idempotent) setup; create the checkpoint of ``unit`` (default:
    the projection's only unit) if missing; return it."""
    unit = unit or projection.name
    # Runners starting together queue here: one creates the tables and the checkpoint.
    await tx.lock_projection(projection.name)
    checkpoint = await tx.load_checkpoint(unit)
    if checkpoint is not None and checkpoint.version > projection.version:
        raise ProjectionSupersededError(
            f"projection {projection.name!r} is at version {projection.version} in code but "
            f"version {checkpoint.version} has taken over its read model: deploy the newer code"
        )
    if checkpoint is not None and checkpoint.version != projection.version:
        raise ProjectionVersionError(
            f"projection {projection.name!r} is at version {projection.version} in code but "
            f"its read model was built by version {checkpoint.version}: run "
            f"'projectionist rebuild {projection.name}'"
        )
    if checkpoint is None:
        await _refuse_other_partitioning(tx, projection)
    await projection.run_setup(tx)
    if checkpoint is None:
        await tx.save_checkpoint(unit, projection.version, None, projection.start, 0)
        return projection.start
    return checkpoint.position


async def _refuse_other_partitioning(tx: ReadModelTransaction, projection: Projection) -> None:
    """A new unit's checkpoint starts from the beginning: right for a new projection, wrong
    for one whose read model was built with another partition count (it would apply
    history twice). That takes a new version (blue/green) or a rebuild."""
    stored = await stored_units(tx, projection.name)
    strangers = sorted(set(stored) - set(projection.units))
    if strangers and max(stored.values()) > projection.version:
        raise ProjectionSupersededError(
            f"projection {projection.name!r} is at version {projection.version} in code but "
            f"version {max(stored.values())} has taken over its read model"
        )
    if strangers:
        raise ProjectionVersionError(
            f"projection {projection.name!r} has {projection.partitions} partition(s) in code "
            f"but its read model was built with checkpoints {', '.join(strangers)}: raise its "
            f"version (blue/green rebuild) or run 'projectionist rebuild {projection.name}'"
        )


async def stored_units(tx: ReadModelTransaction, name: str) -> dict[str, int]:
    """The checkpoints stored for projection ``name`` (any partitioning): unit -> version."""
    stored = await tx.checkpoint_versions()
    return {unit: version for unit, version in stored.items() if split_unit(unit)[0] == name}


async def rebuild(
    store: EventStore,
    read_models: ReadModelStore,
    projection: Projection,
    progress: Progress | None = None,
    operations_store: ReadModelStore | None = None,
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
    ops = operations_store or (read_models if read_models.dialect != "redis" else None)
    if ops is not None:  # the replay applies those events again: faults and letters are moot
        async with ops.transaction() as tx:
            await operations.clear_faults(tx, projection.name)
            await operations.delete_dead_letters_of(tx, projection.name)
    target = await store.last_committed()
    total = await store.count_after(projection.start) * projection.partitions
    done = 0
    for partition in projection.partition_list:
        runner = ProjectionRunner(
            store, read_models, projection, partition=partition, operations_store=ops
        )
        done += await _replay(runner, target, _offset(progress, done, total))
    # Counted again: events held back when the rebuild began are in by now.
    applied = await store.count_after(projection.start) - await store.count_after(target)
    if progress is not None:
        progress(applied, applied)
    return applied


def _offset(progress: Progress | None, base: int, total: int) -> Callable[[int], None]:
    """Progress of one unit, reported as part of the whole rebuild."""

    def report(done: int) -> None:
        if progress is not None:
            progress(base + done, total)

    return report


async def _replay(
    runner: ProjectionRunner, target: Position, progress: Callable[[int], None]
) -> int:
    """Run one unit from its start to ``target``; report the events scanned on the way."""
    store, start = runner.store, runner.projection.start
    runner.checkpoint = start
    before = await store.count_after(start)
    last_report = 0.0
    try:
        while runner.checkpoint < target:
            if not await runner.step():
                await store.wait_for_events(runner.checkpoint, timeout=0.1)
            if time.monotonic() - last_report > 0.25:
                last_report = time.monotonic()  # counting is a query: not after every batch
                progress(before - await store.count_after(runner.checkpoint))
    finally:
        await runner.discard_prefetch()
    return before - await store.count_after(runner.checkpoint)


async def _reset(tx: ReadModelTransaction, projection: Projection) -> None:
    """Drop the read model and every checkpoint of the projection (of any partitioning);
    create it afresh with a checkpoint per unit at the start."""
    await tx.lock_projection(projection.name)
    await projection.run_teardown(tx)
    for unit in await stored_units(tx, projection.name):
        await tx.delete_checkpoint(unit)
    await projection.run_setup(tx)
    for unit in projection.units:
        await tx.save_checkpoint(unit, projection.version, None, projection.start, 0)


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
