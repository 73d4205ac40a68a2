"""Rebuilding a projection: drop its read model, reset its checkpoints, replay all history.

Async projections replay unit by unit through ordinary runners while appends go on (runners
elsewhere notice the moved checkpoint and follow it). Inline projections replay in one
transaction that holds appends back, so none can slip between the replay and the first
inline append.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .events import Position
from .preparation import stored_units
from .projection import Kind, Projection
from .readmodel import ReadModelStore, ReadModelTransaction
from .recording import OperationsRecords
from .runner import ProjectionRunner, partition_runners
from .store import EventStore

Progress = Callable[[int, int], None]
"""Called during rebuilds with (events done, events in all)."""
PROGRESS_INTERVAL = 0.25
"""Seconds between progress reports of a replay: counting the rest is a query."""


async def rebuild(
    store: EventStore,
    read_models: ReadModelStore,
    projection: Projection,
    progress: Progress | None = None,
    records: OperationsRecords | None = None,
) -> int:
    """Drop the read model, reset the checkpoint, replay all history. Returns events applied.

    ``records`` is where the projection's faults and dead letters are (default: the read
    models' own database); the replay applies those events again, so they are dropped.
    """
    if projection.kind is Kind.INLINE:
        return await _rebuild_inline(store, projection, progress)
    records = records or OperationsRecords.in_batch(read_models)
    async with read_models.transaction() as tx:
        await _reset(tx, projection)
    await records.forget_projection(projection.name)
    target = await store.last_committed()
    total = await store.count_after(projection.start) * projection.partitions
    done = 0
    for runner in partition_runners(store, read_models, projection, records=records):
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
            if time.monotonic() - last_report > PROGRESS_INTERVAL:
                last_report = time.monotonic()  # counting is a query: not after every batch
                progress(before - await store.count_after(runner.checkpoint))
    finally:
        await runner.discard_prefetch()
    return before - await store.count_after(runner.checkpoint)


async def _reset(tx: ReadModelTransaction, projection: Projection) -> None:
    """Drop the read model and every checkpoint of the projection (of any partitioning);
    create it afresh with a checkpoint per unit at the start."""
    await tx.lock_projection(projection.name)
    stored = await stored_units(tx, projection.name)
    for unit in sorted({*stored, *projection.units}):
        # Read every checkpoint this reset changes before it queues a write: Redis can
        # WATCH a key only before its transaction's MULTI (the teardown's first write).
        await tx.load_checkpoint(unit)
    await projection.run_teardown(tx)
    for unit in stored:
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
