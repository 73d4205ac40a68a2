"""Proof that PostgreSQL's global order never skips or repeats an event under concurrency,
and that readers wait only for this store's appenders, not for other write transactions.

Eight appenders commit transactions out of order (each sleeps inside its open transaction, and
about one in ten rolls back) while two followers page through ``read_all``. Both followers must
see exactly the committed events, each once, in one identical, strictly increasing order. A
naive follower that pages by ``position > last position`` runs alongside and must miss events:
that shows the run really produced commits out of position order.

For the whole run two write transactions that never append stay open, both begun before the
first append: one in another database of the cluster, one in this database (it inserted into
a scratch table of the test's schema). Both hold the cluster-wide oldest transaction
(pg_snapshot_xmin) below every event's order key, so a reader bounded by it, as readers used
to be, would have seen nothing until they ended. The followers' progress is sampled while the
appends run: it must advance many times over, and most events must reach them before the
appends finish. The samples also check that the cluster's xmin really was held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg

from projectionist import START, NewEvent, Position, TransactionConflictError, create_store
from projectionist.backends.postgres import PostgresEventStore
from tests.conftest import PG_DSN, connect_other_database

APPENDERS = 8
TARGET_EVENTS = 20_000
STREAMS = 64
ROLLBACK_RATE = 0.1
MAX_SLEEP_IN_TRANSACTION = 0.003  # seconds
PAGE = 50
SEED = 20_240_601
DEADLINE = 90.0
"""Seconds; only a guard against a hang. The run takes 6-10 s on an idle machine and up to
about 30 s on a busy one: the blockers make it slower than without them (they also keep
the cluster's xmin back for pruning, so dead row versions of the streams table pile up)."""
SAMPLE_EVERY = 0.1  # seconds between samples of the followers' progress during the appends
MIN_ADVANCES = 5
"""Sample intervals, at the least, in which each follower's checkpoint moved during the
appends (a run takes seconds: dozens of intervals, nearly all of them with progress)."""
MIN_SEEN_DURING_RUN = 0.5
"""The share of all committed events each follower must have seen before the appends end."""


class _Rollback(Exception):
    """Raised inside a transaction block to roll it back on purpose."""


@dataclass
class Run:
    """What the appenders committed, and when they are done."""

    # Our own store gives every event an id and a version; a source may leave them None.
    committed: dict[uuid.UUID | None, Position] = field(default_factory=dict)
    committed_streams: dict[uuid.UUID | None, tuple[str, int | None]] = field(default_factory=dict)
    rolled_back: int = 0
    conflicts: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    final: Position = START
    """The largest (tx_id, position) in the table, known once ``done`` is set."""
    final_naive: int = 0
    """The largest position in the table, known once ``done`` is set."""


@dataclass(frozen=True)
class Seen:
    id: uuid.UUID | None
    stream_id: str
    version: int | None
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


@dataclass
class Follower:
    """A follower's progress, readable while it runs."""

    name: str
    seen: list[Seen] = field(default_factory=list)
    checkpoint: Position = START


@dataclass(frozen=True)
class Sample:
    """The followers' progress at one moment while the appends ran."""

    committed: int
    seen: tuple[int, int]
    checkpoints: tuple[Position, Position]
    cluster_xmin: int
    """pg_snapshot_xmin of a fresh snapshot: the bound readers used to wait for."""


@dataclass
class Blockers:
    """Write transactions that never append, open for the whole run."""

    other_database: asyncpg.Connection
    same_database: asyncpg.Connection
    xids: tuple[int, int] = (0, 0)

    async def begin(self, schema: str) -> None:
        await self.other_database.execute("BEGIN")
        foreign = await self.other_database.fetchval("SELECT pg_current_xact_id()::text::bigint")
        await self.same_database.execute("BEGIN")
        await self.same_database.execute(f'INSERT INTO "{schema}".scratch VALUES (1)')
        local = await self.same_database.fetchval("SELECT pg_current_xact_id()::text::bigint")
        self.xids = (foreign, local)

    async def still_open(self) -> bool:
        """Both are still in the transaction they began (the same transaction id)."""
        xids = []
        for connection in (self.other_database, self.same_database):
            if not connection.is_in_transaction():
                return False
            xids.append(
                await connection.fetchval("SELECT pg_current_xact_id_if_assigned()::text::bigint")
            )
        return tuple(xids) == self.xids

    async def close(self) -> None:
        for connection in (self.other_database, self.same_database):
            await connection.close()  # rolls back


async def follower(
    store: PostgresEventStore, run: Run, progress: Follower, *, notified: bool
) -> list[Seen]:
    seen = progress.seen
    checkpoint = START
    while True:
        batch = await store.read_all(checkpoint, limit=PAGE)
        seen += [Seen(e.id, e.stream_id, e.version, e.position) for e in batch.events]
        assert batch.checkpoint >= checkpoint, "a checkpoint moved backwards"
        checkpoint = progress.checkpoint = batch.checkpoint
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


async def sample_progress(
    run: Run, followers: tuple[Follower, Follower], samples: list[Sample]
) -> None:
    """Until the appends end, note every SAMPLE_EVERY seconds how far the followers got."""
    connection = await asyncpg.connect(PG_DSN)
    try:
        while not run.done.is_set():
            xmin = await connection.fetchval(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
            )
            if run.done.is_set():
                break
            first, second = followers
            samples.append(
                Sample(
                    len(run.committed),
                    (len(first.seen), len(second.seen)),
                    (first.checkpoint, second.checkpoint),
                    xmin,
                )
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.done.wait(), SAMPLE_EVERY)
    finally:
        await connection.close()


def advances_of(samples: list[Sample], index: int) -> int:
    """In how many sample intervals follower ``index``'s checkpoint moved."""
    return sum(
        later.checkpoints[index] > earlier.checkpoints[index]
        for earlier, later in itertools.pairwise(samples)
    )


def check_progress_during_run(
    samples: list[Sample], blocker_xids: tuple[int, int], total: int
) -> None:
    assert len(samples) > MIN_ADVANCES, f"only {len(samples)} samples during the appends"
    oldest_blocker = min(blocker_xids)
    for sample in samples:
        # The old horizon was at most this: every event's order key is above it.
        assert sample.cluster_xmin <= oldest_blocker, (
            f"the cluster's xmin {sample.cluster_xmin} passed the blockers {blocker_xids}"
        )
    for index, name in enumerate(("first follower", "second follower")):
        advances = advances_of(samples, index)
        assert advances >= MIN_ADVANCES, (
            f"{name}: its checkpoint moved in only {advances} of {len(samples) - 1} sample "
            "intervals while the blockers were open"
        )
        seen = samples[-1].seen[index]
        assert seen >= MIN_SEEN_DURING_RUN * total, (
            f"{name} had seen only {seen} of {total} events when the appends ended"
        )
        assert samples[-1].checkpoints[index].tx > max(blocker_xids), (
            f"{name} never passed the blockers' transaction ids during the run"
        )


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
    versions: dict[str, list[int | None]] = defaultdict(list)
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
    blockers = Blockers(await connect_other_database(), await asyncpg.connect(PG_DSN))
    followers = (Follower("first follower"), Follower("second follower"))
    samples: list[Sample] = []
    try:
        await writer.apply_schema()
        await blockers.same_database.execute(f'CREATE TABLE "{pg_schema}".scratch (n int)')
        await blockers.begin(pg_schema)
        run = Run()
        started = time.monotonic()
        async with asyncio.timeout(DEADLINE):
            _, seen_first, seen_second, seen_naive, _ = await asyncio.gather(
                append_all(pg_schema, writer, run),
                follower(first, run, followers[0], notified=False),
                follower(second, run, followers[1], notified=True),
                naive_follower(pg_schema, run),
                sample_progress(run, followers, samples),
            )
        blockers_held = await blockers.still_open()
    finally:
        await blockers.close()
        for store in (writer, first, second):
            await store.close()

    assert blockers_held, "a blocking transaction ended before the run did"
    total = len(run.committed)
    seen_at_end = [sample.seen for sample in samples[-1:]]
    print(
        f"\n{total} events in {time.monotonic() - started:.1f}s with blockers "
        f"(xids {blockers.xids}) open; checkpoints moved in "
        f"{[advances_of(samples, i) for i in (0, 1)]} of {len(samples) - 1} sample intervals; "
        f"followers had seen {seen_at_end} when the appends ended"
    )
    check_progress_during_run(samples, blockers.xids, total)
    assert len(run.committed) >= TARGET_EVENTS
    assert run.rolled_back > 0
    check_follower("first follower", seen_first, run)
    check_follower("second follower", seen_second, run)
    assert [e.id for e in seen_first] == [e.id for e in seen_second]
    assert not seen_naive - run.committed.keys()
    missed = run.committed.keys() - seen_naive
    assert missed, "the naive follower missed nothing: commits were never out of order"
