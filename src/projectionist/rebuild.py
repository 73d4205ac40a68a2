"""Rebuilding a projection: drop its read model, reset its checkpoints, replay all history.

Async projections replay unit by unit through ordinary runners while appends go on. A
rebuild given the leases' store (``leases``: the application's) first takes the leases of
the projection's units, from whichever worker holds them: the owner's batches find their
lease gone (fenced out, as in a takeover) and it stops those runners at its next heartbeat,
so no worker applies a batch under the replay (no race, no checkpoint conflicts); the
rebuild renews the leases while it runs and releases them at the end, and the workers take
the units back. Inline projections replay in one transaction that holds appends back, so
none can slip between the replay and the first inline append.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable

from . import leases
from .errors import ConfigurationError, InvalidInputError
from .events import Position
from .leases import Lease, UnitReport
from .operations import db_now
from .preparation import stored_units
from .projection import Kind, Projection
from .readmodel import ReadModelStore, ReadModelTransaction
from .recording import OperationsRecords
from .runner import Fence, ProjectionRunner, partition_runners
from .source import EventSource
from .store import EventStore

Progress = Callable[[int, int], None]
"""Called during rebuilds with (events done, events in all)."""
PROGRESS_INTERVAL = 0.25
"""Seconds between progress reports of a replay: counting the rest is a query."""
LEASE_SECONDS = 10.0
"""How long a rebuild's leases last unless renewed (every quarter of it): a rebuild that
dies hands its units back to the workers after this long."""
OWNER_PREFIX = "rebuild:"
_REPORT = UnitReport("catching up", None, None, 0, None)


async def rebuild(
    store: EventSource,
    read_models: ReadModelStore,
    projection: Projection,
    progress: Progress | None = None,
    records: OperationsRecords | None = None,
    leases_in: ReadModelStore | None = None,
) -> int:
    """Drop the read model, reset the checkpoint, replay all history. Returns events applied.

    ``records`` is where the projection's faults and dead letters are (default: the read
    models' own database); the replay applies those events again, so they are dropped.
    ``leases_in`` is where the units' leases are: the rebuild holds them meanwhile.
    An async projection replays from any ``EventSource``; an inline one needs our own
    ``EventStore`` (it holds appends back while it replays).
    """
    refuse_replay(projection, "rebuilt")
    if projection.kind is Kind.INLINE:
        if not isinstance(store, EventStore):
            raise ConfigurationError(
                f"projection {projection.name!r} is inline: only an EventStore of ours can "
                "rebuild it (it holds appends back meanwhile), not another event source"
            )
        return await _rebuild_inline(store, projection, progress)
    if leases_in is None:
        return await _rebuild_async(store, read_models, projection, progress, records, None)
    async with holding_units(leases_in, projection) as held:
        # The lease is checked in each batch's transaction where it lives (SQL read models
        # of that store); elsewhere (Redis) the checkpoint's compare-and-set guards them.
        fence = held if read_models is leases_in else None
        return await _rebuild_async(store, read_models, projection, progress, records, fence)


async def _rebuild_async(
    store: EventSource,
    read_models: ReadModelStore,
    projection: Projection,
    progress: Progress | None,
    records: OperationsRecords | None,
    fence: Fence | None,
) -> int:
    records = records or OperationsRecords.in_batch(read_models)
    async with read_models.transaction() as tx:
        await _reset(tx, projection)
    await records.forget_projection(projection.name)
    target = await store.last_committed()
    total = await store.count_after(projection.start) * projection.partitions
    done = 0
    for runner in partition_runners(store, read_models, projection, records=records, fence=fence):
        done += await _replay(runner, target, _offset(progress, done, total))
    # Counted again: events held back when the rebuild began are in by now.
    applied = await store.count_after(projection.start) - await store.count_after(target)
    if progress is not None:
        progress(applied, applied)
    return applied


def refuse_replay(projection: Projection, done: str) -> None:
    """A ConfigurationError for a projection whose events must not be applied again (a
    reactor: its effects would be made twice); ``done`` says what was asked ("rebuilt")."""
    if not projection.replayable:
        raise ConfigurationError(
            f"projection {projection.name!r} is a reactor: its effects (messages, emails, "
            f"calls) must not be made again, so it is never {done}; it goes on from its own "
            "checkpoint (a raised version too). To send events again, append new ones"
        )


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
        tx.replaying = True
        await _reset(tx, projection)
        checkpoint = projection.start
        applied = 0
        upcasters, name = store.upcasters, projection.name
        read_types = upcasters.read_types(projection.types)
        while True:
            batch = await replay.read_all(checkpoint, projection.batch_size, read_types)
            if batch.checkpoint == checkpoint:
                break
            await projection.apply(upcasters.apply(batch.events, name, projection.types), tx)
            applied += len(batch.events)
            checkpoint = batch.checkpoint
            if progress is not None:
                progress(applied, applied)
        await tx.save_checkpoint(
            projection.name, projection.version, projection.start, checkpoint, applied
        )
    return applied


# -- holding the units' leases --------------------------------------------------------------


@contextlib.asynccontextmanager
async def holding_units(
    read_models: ReadModelStore, projection: Projection
) -> AsyncIterator[Fence]:
    """Hold the leases of ``projection``'s units (in ``read_models``) until the block ends,
    renewing them meanwhile; yields the fence that checks them in a batch's transaction."""
    owner = f"{OWNER_PREFIX}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    await leases.register_units(read_models, {unit: projection.name for unit in projection.units})
    held = await _take_over(read_models, projection.units, owner)
    renewing = asyncio.ensure_future(_renew(read_models, held))

    async def fence(tx: ReadModelTransaction) -> None:
        for lease in held:
            await leases.check(tx, lease)

    try:
        yield fence
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        for lease in held:
            await leases.release(read_models, lease)


async def _take_over(read_models: ReadModelStore, units: list[str], owner: str) -> list[Lease]:
    """Take every unit's lease at once, whoever holds it (its fencing token grows, so the
    holder's batches fail their lease check); refused while another rebuild holds one."""
    async with read_models.transaction() as tx:
        now = db_now(tx)
        held = []
        for unit in sorted(units):
            changed = await tx.execute(
                f"UPDATE projection_leases SET owner = $2, token = token + 1, "
                f"expires_at = {now} + $3, state = $4, errors = 0, last_error = NULL, "
                f"reported_at = {now} WHERE unit = $1 AND (owner IS NULL "
                f"OR owner NOT LIKE '{OWNER_PREFIX}%' OR expires_at < {now})",
                unit, owner, LEASE_SECONDS, _REPORT.state,
            )  # fmt: skip
            if changed != 1:
                rival = await tx.fetchval(
                    "SELECT owner FROM projection_leases WHERE unit = $1", unit
                )
                raise InvalidInputError(
                    f"{unit!r} is being rebuilt or replayed by {rival}: wait for it"
                )
            token = await tx.fetchval("SELECT token FROM projection_leases WHERE unit = $1", unit)
            held.append(Lease(unit, owner, int(token)))
    return held


async def _renew(read_models: ReadModelStore, held: list[Lease]) -> None:
    """Renew the rebuild's leases every quarter of their time, until cancelled. A lease
    lost meanwhile (a long pause) fails the rebuild's next batch (its fence)."""
    while True:
        await asyncio.sleep(LEASE_SECONDS / 4)
        for lease in held:
            await leases.renew(read_models, lease, LEASE_SECONDS, _REPORT)
