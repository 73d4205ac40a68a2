"""Read your writes: wait until a projection has processed a position."""

from __future__ import annotations

import time

from .changes import ChangeSignal
from .errors import ProjectionTimeoutError
from .events import Position
from .projection import Projection
from .readmodel import ReadModelStore
from .source import EventSource


async def wait_until_processed(
    store: EventSource,
    read_models: ReadModelStore,
    projection: Projection,
    position: Position,
    timeout: float,
    progress: ChangeSignal,
) -> None:
    """Return once every unit of ``projection`` has its checkpoint at ``position`` or later;
    after ``timeout`` seconds raise ProjectionTimeoutError saying how far behind it is.
    Runners of this process wake the wait through ``progress``; others are polled."""
    deadline = time.monotonic() + timeout
    while True:
        token = progress.token
        checkpoints = await read_models.checkpoints()
        at = [checkpoints[u].position if u in checkpoints else None for u in projection.units]
        if all(p is not None and p >= position for p in at):
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            slowest = min((p for p in at if p is not None), default=None)
            behind = await store.count_after(slowest) if slowest is not None else "all"
            raise ProjectionTimeoutError(
                f"projection {projection.name!r} did not reach position {position} within "
                f"{timeout:g}s: it is at {slowest or 'no checkpoint'}, {behind} events "
                "behind the head (is a worker running it?)"
            )
        await progress.wait(token, min(remaining, 0.05))
