"""Feeding an async projection: the runner, catch-up then live, one batch at a time.

The runner reads from the projection's checkpoint in batches of the types it handles,
applies a batch and moves the checkpoint in one read-model transaction. A crash anywhere
leaves the last committed batch as the truth: the next start continues exactly there.
Catch-up and live are the same loop (read from the checkpoint until nothing is left, then
sleep until new events are visible), so there is no seam where events could slip through.
Rebuilds (``rebuild``), read-model preparation (``preparation``), the transient-failure
policy (``transient``) and where faults and dead letters go (``recording``) live apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from .allocation import fewer_collections
from .changes import ChangeSignal
from .errors import HandlerError, LeaseLostError
from .events import Position, RecordedEvent
from .operations import Fault
from .partitions import Partition, unit_name
from .preparation import prepare_read_model
from .projection import OnError, Projection
from .readmodel import CheckpointConflictError, ReadModelStore, ReadModelTransaction
from .recording import OperationsRecords
from .source import EventBatch, EventSource
from .transient import backoff, is_transient

logger = logging.getLogger("projectionist.runner")

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
    backoff, then ``on_error``: stop in a faulted state (recorded in ``projection_faults``),
    skip the event into ``projection_dead_letters`` (``records`` says where those go:
    by default in the read models' own database, with the batch), or park its stream: the
    event and every later one of its stream go to the dead letters, in order, with the
    batches that read them. A failure in a batch is first narrowed down to its event by
    applying that stretch of history one event at a time.

    Parked streams are cached (``_parked``, loaded by ``prepare``). Only this unit's runner
    parks, and parking moves the checkpoint, so a runner whose cache predates a park finds
    the checkpoint moved and prepares again; an un-park (a retry, in any process) leaves the
    checkpoint where it is, so a non-empty cache is read again in each batch's transaction,
    after the checkpoint lock the retry takes too. An empty cache costs nothing per batch.
    """

    def __init__(
        self,
        store: EventSource,
        read_models: ReadModelStore,
        projection: Projection,
        *,
        batch_size: int | None = None,
        progress: ChangeSignal | None = None,
        partition: Partition | None = None,
        fence: Fence | None = None,
        records: OperationsRecords | None = None,
        replaying: bool = False,
    ) -> None:
        self.store = store
        self.read_models = read_models
        self.records = records or OperationsRecords.in_batch(read_models)
        """Where this unit's fault and dead letters go (see ``recording``)."""
        self.projection = projection
        self.partition = partition
        self.unit = unit_name(projection.name, partition)
        """The checkpoint's name: the projection's, or its partition's ("name#2/4")."""
        self.batch_size = batch_size or projection.batch_size
        self.fence = fence
        self.replaying = replaying
        """Whether its batches replay history (``ReadModelTransaction.replaying``): set for
        the runners of rebuilds, blue/green builds, verify and partial replays."""
        self.state = RunnerState.STOPPED
        self.checkpoint: Position | None = None
        self.progress = progress or ChangeSignal()
        """Notified after every committed batch (``wait_for`` in this process listens)."""
        self.fault: Fault | None = None
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
        self._parked: set[str] = set()
        """The streams this unit holds back (``on_error="park"``); see the class doc."""

    async def prepare(self) -> Position:
        """Create the read model and checkpoint when missing; return the checkpoint."""
        # Asked before the transaction: SQLite's store and read models share one connection.
        start = await self.projection.first_position(self.store)
        async with self.read_models.transaction() as tx:
            self.checkpoint = await prepare_read_model(tx, self.projection, self.unit, start)
        self.fault = await self.records.load_fault(self.unit)
        self._parked = await self.records.parked(self.unit)
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
        with fewer_collections():
            return await self._step()

    async def _step(self) -> bool:
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
            # Inside the try: an upcaster that raises fails this event as a handler would.
            events = self.store.upcasters.apply(
                batch.events, self.projection.name, self.projection.types
            )
            async with self.read_models.transaction() as tx:
                await self._claim(tx)
                await self.projection.apply(await self._unparked(events, tx), tx)
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
        """Check the lease, if any, then lock the checkpoint before applying: a second
        runner waits here and then finds it moved, instead of applying the batch twice.
        The lease first: a runner fenced out (by a takeover, a rebuild) stops as such
        rather than reloading the checkpoint that its new owner moves."""
        tx.replaying = self.replaying
        if self.fence is not None:
            await self.fence(tx)
        stored = await tx.load_checkpoint(self.unit, lock=True)
        if (
            stored is None
            or stored.position != self.checkpoint
            or stored.version != self.projection.version  # rebuilt by another version
        ):
            raise CheckpointConflictError(f"projection {self.unit!r} moved on")

    async def _unparked(
        self, events: Sequence[RecordedEvent], tx: ReadModelTransaction
    ) -> Sequence[RecordedEvent]:
        """The events to apply: those of parked streams go behind their letters instead."""
        if not self._parked:
            return events
        self._parked = await self.records.parked_in(tx, self.unit)
        held = [event for event in events if event.stream_id in self._parked]
        if not held:
            return events
        await self.records.hold_back(tx, self.unit, self.projection.version, held)
        return [event for event in events if event.stream_id not in self._parked]

    async def _commit_checkpoint(self, tx: ReadModelTransaction, batch: EventBatch) -> None:
        await tx.save_checkpoint(
            self.unit, self.projection.version, self.checkpoint, batch.checkpoint, len(batch.events)
        )
        if self.fault is not None:  # it got past the event that stopped it
            await self.records.clear_fault_in(tx, self.unit)

    async def _moved_to(self, batch: EventBatch) -> None:
        self.checkpoint = batch.checkpoint
        if self.fault is not None:
            await self.records.fault_cleared(self.unit)
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
            await self._sleep(backoff(attempts))
            return
        del self._attempts[event.position]
        on_error = self.projection.on_error
        if on_error is OnError.SKIP or (on_error is OnError.PARK and self.records.parks):
            await self._dead_letter(batch, exc, attempts, park=on_error is OnError.PARK)
            return
        self.fault = await self.records.record_fault(
            self.unit, self.projection.version, event, exc, attempts
        )
        self.state = RunnerState.FAULTED
        logger.error(
            "projection faulted: %s",
            exc,
            extra={"action": "projection_faulted", "projection": self.unit},
        )
        raise exc

    async def _dead_letter(
        self, batch: EventBatch, exc: HandlerError, attempts: int, *, park: bool
    ) -> None:
        """Record the event as a dead letter (and park its stream) and move the checkpoint
        past it, together."""
        event = batch.events[0]
        version = self.projection.version
        try:
            async with self.read_models.transaction() as tx:
                await self._claim(tx)
                if park:
                    await self.records.park(tx, self.unit, version, event, exc, attempts)
                else:
                    await self.records.dead_letter(tx, self.unit, version, event, exc, attempts)
                await self._commit_checkpoint(tx, batch)
        except CheckpointConflictError:
            await self.prepare()
            return
        if park:
            self._parked.add(event.stream_id)
            logger.error(
                "stream %r parked: its event failed, later ones wait behind it: %s",
                event.stream_id,
                exc,
                extra={"action": "stream_parked", "projection": self.unit},
            )
        else:
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
            types=self.store.upcasters.read_types(self.projection.types),
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
                    await self._follow()
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

    async def _follow(self) -> None:
        """Apply the next batch; when it was the last one there is (nothing, or a short
        batch), wait for the next change.

        The token is taken before the read: a change after it sends the runner straight back
        to reading, with no look at the head in between, and a short batch is not followed
        by a read that would find nothing (the wait's own look at the head catches what
        arrived unannounced). Two round trips fewer on the way of a live event."""
        token = self.store.changes.token
        if await self.step() and self.state is not RunnerState.LIVE:
            return  # a full batch: more history follows
        self.state = RunnerState.LIVE
        assert self.checkpoint is not None
        await sleep_until_new_events(self.store, self.checkpoint, self._stop, since=token)

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
        delay = backoff(failures)
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


async def sleep_until_new_events(
    store: EventSource, after: Position, stop: asyncio.Event, since: int | None = None
) -> None:
    """Return when an event after ``after`` is visible, ``stop`` is set, or a poll passed
    (with ``since``, a token taken before the caller's empty read: on a change after it)."""
    waiting = asyncio.ensure_future(
        store.wait_for_events(after, timeout=store.poll_interval, since=since)
    )
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


def partition_runners(
    store: EventSource,
    read_models: ReadModelStore,
    projection: Projection,
    *,
    records: OperationsRecords,
    fence: Fence | None = None,
) -> list[ProjectionRunner]:
    """One replaying runner per partition of ``projection`` (one when it is not partitioned):
    how the engine's rebuilds, verifications and blue/green builds get theirs. (An application's
    runners come from ``Application.new_runner``, which adds its progress signal.)"""
    return [
        ProjectionRunner(
            store, read_models, projection,
            partition=partition, fence=fence, records=records, replaying=True,
        )
        for partition in projection.partition_list
    ]  # fmt: skip
