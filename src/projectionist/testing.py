"""Helpers for testing your own projections.

``assert_idempotent`` runs a projection over events once, cleanly, then again in a fresh
store with every batch delivered twice and the whole history replayed on top, and fails
when the read model differs: the check that a handler is safe to replay.

    rows = await assert_idempotent(
        order_summaries,
        [("order-1", [NewEvent("OrderCreated", {...}), NewEvent("ItemAdded", {...})])],
        "SELECT * FROM order_summary ORDER BY order_id",
    )
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from .defaults import DEFAULT_BATCH_SIZE
from .events import START, NewEvent, RecordedEvent
from .factory import create_store
from .preparation import prepare_read_model
from .projection import Projection
from .readmodel import ReadModelTransaction
from .store import EventStore

Query = str | Callable[[ReadModelTransaction], Awaitable[Any]]
Appends = Iterable[tuple[str, Sequence[NewEvent]]]


async def project(
    projection: Projection, appends: Appends, query: Query, *, url: str = "memory://"
) -> Any:
    """Append ``appends`` to a fresh store, run ``projection`` over them once, return ``query``."""
    async with create_store(url) as store:
        events = await _fresh_history(store, projection, appends)
        await _deliver(store, projection, [events])
        return await _query(store, query)


async def assert_idempotent(
    projection: Projection,
    appends: Appends,
    query: Query,
    *,
    url: str = "memory://",
    batch_size: int = 7,
) -> Any:
    """Fail unless duplicated and replayed deliveries leave the read model unchanged.

    Returns the query's result from the clean run. ``url`` must name a fresh store (the
    default, ``memory://``, keeps read models in an in-memory SQLite database).
    """
    appends = list(appends)
    expected = await project(projection, appends, query, url=url)
    async with create_store(url) as store:
        events = await _fresh_history(store, projection, appends)
        batches = [events[i : i + batch_size] for i in range(0, len(events), batch_size)]
        twice = [delivery for batch in batches for delivery in (batch, batch)]
        await _deliver(store, projection, twice)  # every batch delivered twice
        await _deliver(store, projection, [events])  # then the whole history replayed
        actual = await _query(store, query)
    if actual != expected:
        raise AssertionError(
            f"projection {projection.name!r} is not idempotent: after duplicated and replayed "
            f"deliveries the read model is\n  {actual!r}\nbut one clean run gives\n  {expected!r}"
        )
    return expected


async def _fresh_history(
    store: EventStore, projection: Projection, appends: Appends
) -> list[RecordedEvent]:
    await store.apply_schema()
    async with store.read_models().transaction() as tx:
        await prepare_read_model(tx, projection)
    for stream_id, events in appends:
        await store.append(stream_id, events)
    recorded: list[RecordedEvent] = []
    checkpoint = START
    while True:
        batch = await store.read_all(checkpoint, limit=DEFAULT_BATCH_SIZE)
        if not batch.events:
            return recorded
        recorded += batch.events
        checkpoint = batch.checkpoint


async def _deliver(
    store: EventStore, projection: Projection, deliveries: list[list[RecordedEvent]]
) -> None:
    for events in deliveries:
        async with store.read_models().transaction() as tx:
            await projection.apply(events, tx)


async def _query(store: EventStore, query: Query) -> Any:
    async with store.read_models().transaction() as tx:
        if isinstance(query, str):
            return await tx.fetch(query)
        return await query(tx)
