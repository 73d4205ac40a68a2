"""Proof that PostgreSQL's global order never skips or repeats an event under concurrency.

Eight appenders commit transactions out of order (each sleeps inside its open transaction, and
about one in ten rolls back) while two followers page through ``read_all``. Both followers must
see exactly the committed events, each once, in one identical, strictly increasing order. A
naive follower that pages by ``position > last position`` runs alongside and must miss events:
that shows the run really produced commits out of position order.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg

from projectionist import START, NewEvent, Position, TransactionConflictError, create_store
from projectionist.backends.postgres import PostgresEventStore
from tests.conftest import PG_DSN

APPENDERS = 8
TARGET_EVENTS = 20_000
STREAMS = 64
ROLLBACK_RATE = 0.1
MAX_SLEEP_IN_TRANSACTION = 0.003  # seconds
PAGE = 50
SEED = 20_240_601
DEADLINE = 50.0  # seconds; the whole run normally takes a fraction of this


class _Rollback(Exception):
    """Raised inside a transaction block to roll it back on purpose."""


@dataclass
class Run:
    """What the appenders committed, and when they are done."""

    committed: dict[uuid.UUID, Position] = field(default_factory=dict)
    committed_streams: dict[uuid.UUID, tuple[str, int]] = field(default_factory=dict)
    rolled_back: int = 0
    conflicts: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    final: Position = START
    """The largest (tx_id, position) in the table, known once ``done`` is set."""
    final_naive: int = 0
    """The largest position in the table, known once ``done`` is set."""


@dataclass(frozen=True)
class Seen:
    id: uuid.UUID
    stream_id: str
    version: int
    position: Position


async def open_store(schema: str) -> PostgresEventStore:
    store = create_store(PG_DSN, schema=schema)
    assert isinstance(store, PostgresEventStore)
    await store.open()
    return store


async def appender(index: int, store: PostgresEventStore, run: Run) -> None:
    rng = random.Random(SEED + index)
    connection = await asyncpg.connect(PG_DSN)
    try:
        while len(run.committed) < TARGET_EVENTS:
            stream_id = f"stream-{rng.randrange(STREAMS)}"
            events = [
                NewEvent(
                    "Stressed",
                    {"appender": index, "n": n},
                    id=uuid.UUID(int=rng.getrandbits(128), version=4),
                )
                for n in range(rng.randint(1, 5))
            ]
            roll_back = rng.random() < ROLLBACK_RATE
            pause = rng.uniform(0, MAX_SLEEP_IN_TRANSACTION)
            try:
                async with connection.transaction():
                    result = await store.append_on(connection, stream_id, events)
                    await asyncio.sleep(pause)
                    if roll_back:
                        raise _Rollback
            except _Rollback:
                run.rolled_back += 1
                continue
            except TransactionConflictError:
                # A younger transaction appended to this stream first: the store refused to
                # put this later version before it in the global order. Retry, as users do.
                run.conflicts += 1
                continue
            store.events_committed()  # NOTIFY the followers' stores (append_on does not)
            for recorded in result.events:
                run.committed[recorded.id] = recorded.position
                run.committed_streams[recorded.id] = (recorded.stream_id, recorded.version)
    finally:
        await connection.close()


async def follower(store: PostgresEventStore, run: Run, *, notified: bool) -> list[Seen]:
    seen: list[Seen] = []
    checkpoint = START
    while True:
        batch = await store.read_all(checkpoint, limit=PAGE)
        seen += [Seen(e.id, e.stream_id, e.version, e.position) for e in batch.events]
        assert batch.checkpoint >= checkpoint, "a checkpoint moved backwards"
        checkpoint = batch.checkpoint
        if batch.events:
            continue
        if run.done.is_set() and checkpoint >= run.final:
            return seen
        if notified:
            await store.wait_for_events(checkpoint, timeout=0.05)
        else:
            await asyncio.sleep(0.001)


async def naive_follower(schema: str, run: Run) -> set[uuid.UUID]:
    """Pages by ``position > last position``: skips events whose commit came late."""
    seen: set[uuid.UUID] = set()
    checkpoint = 0
    connection = await asyncpg.connect(PG_DSN)
    try:
        while True:
            rows = await connection.fetch(
                f'SELECT position, id FROM "{schema}".events '
                "WHERE position > $1 ORDER BY position LIMIT $2",
                checkpoint,
                PAGE,
            )
            if rows:
                seen.update(row["id"] for row in rows)
                checkpoint = rows[-1]["position"]
                continue
            if run.done.is_set() and checkpoint >= run.final_naive:
                return seen
            await asyncio.sleep(0.001)
    finally:
        await connection.close()


async def append_all(schema: str, store: PostgresEventStore, run: Run) -> None:
    await asyncio.gather(*(appender(i, store, run) for i in range(APPENDERS)))
    connection = await asyncpg.connect(PG_DSN)
    try:
        row = await connection.fetchrow(
            f'SELECT tx_id, position FROM "{schema}".events '
            "ORDER BY tx_id DESC, position DESC LIMIT 1"
        )
        naive = await connection.fetchval(f'SELECT max(position) FROM "{schema}".events')
    finally:
        await connection.close()
    assert row is not None
    run.final = Position(row["tx_id"], row["position"])
    run.final_naive = naive
    run.done.set()


def check_follower(name: str, seen: list[Seen], run: Run) -> None:
    ids = [event.id for event in seen]
    assert len(ids) == len(set(ids)), f"{name} saw {len(ids) - len(set(ids))} events twice"
    missing = run.committed.keys() - set(ids)
    extra = set(ids) - run.committed.keys()
    assert not missing, f"{name} skipped {len(missing)} committed events"
    assert not extra, f"{name} saw {len(extra)} events that never committed"
    for earlier, later in itertools.pairwise(seen):
        assert earlier.position < later.position, (
            f"{name}: position {later.position} came after {earlier.position}"
        )
    for event in seen:
        assert event.position == run.committed[event.id], f"{name}: {event.id} moved"
        assert (event.stream_id, event.version) == run.committed_streams[event.id]
    # Each stream comes in version order, without holes from rolled-back appends.
    versions: dict[str, list[int]] = defaultdict(list)
    for event in seen:
        versions[event.stream_id].append(event.version)
    for stream_id, numbers in versions.items():
        assert numbers == list(range(1, len(numbers) + 1)), f"{name}: {stream_id} out of order"


async def test_no_event_is_skipped_or_repeated_under_concurrent_out_of_order_commits(
    pg_schema: str,
) -> None:
    writer = await open_store(pg_schema)
    first = await open_store(pg_schema)
    second = await open_store(pg_schema)
    try:
        await writer.apply_schema()
        run = Run()
        async with asyncio.timeout(DEADLINE):
            _, seen_first, seen_second, seen_naive = await asyncio.gather(
                append_all(pg_schema, writer, run),
                follower(first, run, notified=False),
                follower(second, run, notified=True),
                naive_follower(pg_schema, run),
            )
    finally:
        for store in (writer, first, second):
            await store.close()

    assert len(run.committed) >= TARGET_EVENTS
    assert run.rolled_back > 0
    check_follower("first follower", seen_first, run)
    check_follower("second follower", seen_second, run)
    assert [e.id for e in seen_first] == [e.id for e in seen_second]
    assert not seen_naive - run.committed.keys()
    missed = run.committed.keys() - seen_naive
    assert missed, "the naive follower missed nothing: commits were never out of order"
