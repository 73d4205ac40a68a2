"""Helpers for testing your own projections.

``assert_idempotent`` runs a projection over events once, cleanly, then again in fresh read
models with every batch delivered twice and the whole history replayed on top, and fails
when the read model differs: the check that a handler is safe to replay.

    rows = await assert_idempotent(
        order_summaries,
        [("order-1", [NewEvent("OrderCreated", {...}), NewEvent("ItemAdded", {...})])],
        "SELECT * FROM order_summary ORDER BY order_id",
    )

``assert_replay_safe`` checks the claim ``replay_safe=True`` makes (docs/replay.md): it
builds the read model with a runner, then replays it partially (``replay``) from the first,
the middle and the last handled event, and fails when the rows differ from the clean run's.

The events are appends to a fresh store of ours (at ``url``), or any ``EventSource``: then
its events, read up to its head, go into fresh read models at ``url`` (docs/sources.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

from .defaults import DEFAULT_BATCH_SIZE
from .errors import ConfigurationError
from .events import START, NewEvent, Position, RecordedEvent
from .factory import create_store, open_read_models
from .preparation import prepare_read_model
from .projection import Projection
from .readmodel import ReadModelStore, ReadModelTransaction
from .replay import refuse_never_replayable, replay_units
from .runner import ProjectionRunner
from .source import EventSource
from .upcasting import Upcasters

Query = str | Callable[[ReadModelTransaction], Awaitable[Any]]
Appends = Iterable[tuple[str, Sequence[NewEvent]]]
History = Appends | EventSource
"""Appends to a fresh store of ours, or a source whose events are read as they are."""


async def project(
    projection: Projection,
    history: History,
    query: Query,
    *,
    url: str = "memory://",
    upcasters: Upcasters | None = None,
) -> Any:
    """Run ``projection`` once over ``history`` in fresh read models, return ``query``."""
    fresh = _fresh(projection, history, url, upcasters, first=True)
    async with fresh as (read_models, _, events):
        await _deliver(read_models, projection, [events])
        return await _query(read_models, query)


async def assert_idempotent(
    projection: Projection,
    history: History,
    query: Query,
    *,
    url: str = "memory://",
    batch_size: int = 7,
    upcasters: Upcasters | None = None,
) -> Any:
    """Fail unless duplicated and replayed deliveries leave the read model unchanged.

    Returns the query's result from the clean run. ``url`` must name a fresh store (the
    default, ``memory://``, keeps read models in an in-memory SQLite database); over a
    source, only its read-model side is used. The events are upcast as a runner would,
    with ``upcasters`` (default: the source's own; a fresh store has none).
    """
    if not isinstance(history, EventSource):
        history = list(history)
    expected = await project(projection, history, query, url=url, upcasters=upcasters)
    # The same database again (memory:// gives a new one): the projection's tables are
    # made afresh; a store that kept the clean run's events is read again, not appended to.
    async with _fresh(projection, history, url, upcasters, first=False) as (
        read_models,
        _,
        events,
    ):
        batches = [events[i : i + batch_size] for i in range(0, len(events), batch_size)]
        twice = [delivery for batch in batches for delivery in (batch, batch)]
        await _deliver(read_models, projection, twice)  # every batch delivered twice
        await _deliver(read_models, projection, [events])  # then the whole history replayed
        actual = await _query(read_models, query)
    if actual != expected:
        raise AssertionError(
            f"projection {projection.name!r} is not idempotent: after duplicated and replayed "
            f"deliveries the read model is\n  {actual!r}\nbut one clean run gives\n  {expected!r}"
        )
    return expected


async def assert_replay_safe(
    projection: Projection, history: History, query: Query, *, url: str = "memory://"
) -> Any:
    """Fail unless partial replays leave the read model as one clean run does.

    Builds the read model with a runner (in fresh read models at ``url``), then replays it
    (the engine's own partial replay, ``tx.replaying`` True) from its first, its middle and
    its last handled event, one after the other; after each the ``query`` must return what
    the clean run gave, else an AssertionError names the point and the differing rows.
    Returns the clean run's result. The projection need not claim ``replay_safe=True`` yet:
    this is how the claim is checked before it is made.
    """
    refuse_never_replayable(projection)
    if not isinstance(history, EventSource):
        history = list(history)
    async with _fresh(projection, history, url, None, first=True) as (read_models, source, events):
        for partition in projection.partition_list:
            await ProjectionRunner(
                source, read_models, projection, partition=partition
            ).run_until_caught_up()
        expected = await _query(read_models, query)
        handled = [event for event in events if event.type in projection.types]
        for index in sorted({0, len(handled) // 2, len(handled) - 1} if handled else set()):
            point = handled[index - 1].position if index else projection.start
            await replay_units(source, read_models, projection, point)
            actual = await _query(read_models, query)
            if actual != expected:
                raise AssertionError(
                    _not_replay_safe(projection, index, len(handled), point, actual, expected)
                )
    return expected


def _not_replay_safe(
    projection: Projection, index: int, count: int, point: Position, actual: Any, expected: Any
) -> str:
    where = f"replayed from handled event {index + 1} of {count} (after position {point})"
    text = (
        f"projection {projection.name!r} is not replay-safe: {where} the read model is\n"
        f"  {actual!r}\nbut one clean run gives\n  {expected!r}"
    )
    if isinstance(actual, list) and isinstance(expected, list):
        text += (
            f"\nrows only after the replay: {[r for r in actual if r not in expected]!r}"
            f"\nrows only in the clean run: {[r for r in expected if r not in actual]!r}"
        )
    return text


@contextlib.asynccontextmanager
async def _fresh(
    projection: Projection,
    history: History,
    url: str,
    upcasters: Upcasters | None,
    *,
    first: bool,
) -> AsyncIterator[tuple[ReadModelStore, EventSource, list[RecordedEvent]]]:
    """Read models at ``url`` with ``projection``'s tables made afresh, where the history's
    events are read from, and those events (appended to the store at ``url`` unless a
    ``first`` run there did), upcast."""
    if isinstance(history, EventSource):
        async with open_read_models(url) as read_models:
            await _prepare(read_models, projection)
            events = await _read_everything(history)
            yield read_models, history, _upcast(upcasters or history.upcasters, projection, events)
        return
    async with create_store(url) as store:
        if upcasters is not None:
            store.use_upcasters(upcasters)  # appends record the schema versions
        await store.apply_schema()
        await _prepare(store.read_models(), projection)
        empty = await store.head() == START
        if first and not empty:
            raise ConfigurationError(f"{store.url} holds events: give a fresh store's URL")
        if empty:  # else the clean run's events, in the same database
            for stream_id, appended in history:
                await store.append(stream_id, appended)
        recorded = await _read_everything(store)
        yield store.read_models(), store, _upcast(store.upcasters, projection, recorded)


async def _prepare(read_models: ReadModelStore, projection: Projection) -> None:
    await read_models.apply_schema()
    async with read_models.transaction() as tx:
        await projection.run_teardown(tx)
        for unit in {projection.name, *projection.units}:
            await tx.delete_checkpoint(unit)
        for unit in projection.units:  # each partition's, as its runner expects
            await prepare_read_model(tx, projection, unit)


def _upcast(
    upcasters: Upcasters, projection: Projection, events: list[RecordedEvent]
) -> list[RecordedEvent]:
    return list(upcasters.apply(events, projection.name, projection.types))


async def _read_everything(source: EventSource) -> list[RecordedEvent]:
    recorded: list[RecordedEvent] = []
    checkpoint = START
    while True:
        batch = await source.read_all(checkpoint, limit=DEFAULT_BATCH_SIZE)
        if not batch.events:
            return recorded
        recorded += batch.events
        checkpoint = batch.checkpoint


async def _deliver(
    read_models: ReadModelStore, projection: Projection, deliveries: list[list[RecordedEvent]]
) -> None:
    for events in deliveries:
        async with read_models.transaction() as tx:
            await projection.apply(events, tx)


async def _query(read_models: ReadModelStore, query: Query) -> Any:
    async with read_models.transaction() as tx:
        if isinstance(query, str):
            return await tx.fetch(query)
        return await query(tx)
