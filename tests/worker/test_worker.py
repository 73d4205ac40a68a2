"""Workers in one process: sharing and rebalancing units, handing them back on a graceful
stop, status while they run, a refused repartitioning, and stopping an embedded worker."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Sequence

import asyncpg
import pytest

from projectionist import Application, Projection, ReadModelTransaction, RecordedEvent, leases
from projectionist.backends.postgres import PostgresEventStore
from projectionist.errors import ProjectionVersionError
from projectionist.partitions import partition_of
from projectionist.worker import Worker
from tests.conftest import PG_DSN, settle
from tests.engine.projections import ledger, ledger_rows, money
from tests.worker.conftest import Apps, eventually

HEARTBEAT = 0.2
LEASE = 2.0
"""Long beside the heartbeat: a takeover within a few heartbeats cannot be an expiry."""
HANDLED = {"Deposited", "Withdrawn", "Audited"}


def expected_ledger(events: Iterable[RecordedEvent]) -> list[list[tuple[object, ...]]]:
    """The rows ``ledger`` must hold after applying ``events`` exactly once."""
    seen: list[tuple[object, ...]] = []
    totals: dict[str, tuple[int, int]] = {}
    for event in events:
        if event.type == "Audited":
            seen.append((str(event.id), event.stream_id, event.version, 0))
        elif event.type in ("Deposited", "Withdrawn"):
            amount = event.data["amount"] * (1 if event.type == "Deposited" else -1)
            seen.append((str(event.id), event.stream_id, event.version, amount))
            count, total = totals.get(event.stream_id, (0, 0))
            totals[event.stream_id] = (count + 1, total + amount)
    return [sorted(seen), sorted((stream, n, a) for stream, (n, a) in totals.items())]


async def rows_of(app: Application, name: str) -> list[list[tuple[object, ...]]]:
    async with app.read_models.transaction() as tx:
        seen, totals = await ledger_rows(tx, name)
    return [sorted(tuple(row) for row in seen), sorted(tuple(row) for row in totals)]  # type: ignore[attr-defined]


async def holders(app: Application) -> Counter[str | None]:
    """How many units each worker holds (None: nobody)."""
    rows = await leases_of(app)
    return Counter(rows.values())


async def leases_of(app: Application) -> dict[str, str | None]:
    return {unit: row.owner for unit, row in (await leases.all_leases(app.read_models)).items()}


def shared_projections() -> list[Projection]:
    return [ledger("ledger", partitions=4), ledger("other")]  # 5 units


# -- rebalancing ----------------------------------------------------------------------------


async def test_two_workers_share_rebalance_and_hand_back(apps: Apps) -> None:
    first_app = await apps.open(shared_projections())
    await first_app.setup()
    second_app = await apps.open(shared_projections())
    recorded: list[RecordedEvent] = []
    stop_appending = asyncio.Event()

    async def append_forever() -> None:
        n = 0
        while not stop_appending.is_set():
            n += 1
            result = await first_app.store.append(f"acct-{n % 12}", money(n, 3))
            recorded.extend(result.events)
            await asyncio.sleep(0.02)

    options = {"lease_seconds": LEASE, "heartbeat_seconds": HEARTBEAT}
    first = first_app.worker(worker_id="w1", **options)
    second = second_app.worker(worker_id="w2", **options)
    appender = asyncio.create_task(append_forever())
    running_first = asyncio.create_task(first.run())
    running_second: asyncio.Task[None] | None = None
    try:
        await eventually(
            lambda: _holds(first_app, {"w1": 5}), what="the first worker to take all 5 units"
        )
        assert len(first.owned) == 5

        running_second = asyncio.create_task(second.run())
        await eventually(
            lambda: _holds(first_app, {"w1": 3, "w2": 2}), what="the second worker to get a share"
        )
        for _ in range(10):  # ~5 heartbeats: stable, never above the fair share
            held = await holders(first_app)
            assert held == {"w1": 3, "w2": 2}, held
            assert len(first.owned) == 3 and len(second.owned) == 2
            await asyncio.sleep(HEARTBEAT / 2)

        handed = {u for u, owner in (await leases_of(first_app)).items() if owner == "w2"}
        second.stop()
        await asyncio.wait_for(running_second, 10)
        after = await leases_of(first_app)
        assert all(after[unit] in (None, "w1") for unit in handed), after  # handed back
        took = await eventually(lambda: _holds(first_app, {"w1": 5}), timeout=LEASE * 3)
        # Well below the lease: the units were handed back, not left to expire.
        assert took < LEASE / 2, f"took {took:.2f}s"
        assert len(first.owned) == 5

        stop_appending.set()
        await appender
        head = await first_app.store.last_committed()
        await settle(first_app.store)
        for name in ("ledger", "other"):
            await first_app.wait_for(name, head, timeout=20)
    finally:
        stop_appending.set()
        first.stop()
        second.stop()
        await asyncio.wait_for(
            asyncio.gather(appender, running_first, *filter(None, [running_second])), 15
        )
    assert await holders(first_app) == {None: 5}  # the first handed everything back too
    assert len(recorded) > 100
    expected = expected_ledger(recorded)
    assert await rows_of(first_app, "ledger") == expected
    assert await rows_of(first_app, "other") == expected


async def _holds(app: Application, wanted: dict[str, int]) -> bool:
    return await holders(app) == Counter(wanted)


# -- status ---------------------------------------------------------------------------------


async def test_status_while_a_worker_runs(apps: Apps) -> None:
    app = await apps.open([*shared_projections(), ledger("paused")])
    await app.setup()
    streams = [f"acct-{i}" for i in range(12)]
    assert {partition_of(s, 4) for s in streams} == {0, 1, 2, 3}  # every partition has work
    recorded: list[RecordedEvent] = []
    for index, stream in enumerate(streams):
        recorded += (await app.store.append(stream, money(index, 5))).events
    appended_at = time.monotonic()
    handled = sum(1 for event in recorded if event.type in HANDLED)

    worker = app.worker(
        worker_id="status-worker",
        lease_seconds=LEASE,
        heartbeat_seconds=HEARTBEAT,
        projections=["ledger", "other"],  # "paused" stays behind
    )
    running = asyncio.create_task(worker.run())
    try:
        head = await app.store.last_committed()
        for name in ("ledger", "other"):
            await app.wait_for(name, head, timeout=20)

        async def reported() -> bool:
            return all(
                s.owner == "status-worker" and s.events_per_second
                for s in await app.status()
                if s.name != "paused"
            )

        await eventually(reported, what="the worker to report its figures")
        statuses = await app.status()
        running_units = [s for s in statuses if s.name != "paused"]
        assert [(s.name, s.partition) for s in running_units] == [
            ("ledger", "0/4"),
            ("ledger", "1/4"),
            ("ledger", "2/4"),
            ("ledger", "3/4"),
            ("other", None),
        ]
        for status in running_units:
            assert status.owner == "status-worker"
            assert status.state in {"live", "catching up"}
            assert status.events_per_second is not None and status.events_per_second > 0
            assert status.last_batch_seconds is not None and status.last_batch_seconds > 0
            assert (status.lag, status.lag_seconds) == (0, 0.0)
            assert status.errors == 0 and status.last_error is None
        assert sum(s.events_processed for s in running_units if s.name == "ledger") == handled
        assert [s.events_processed for s in running_units if s.name == "other"] == [handled]

        await asyncio.sleep(max(0.0, appended_at + 0.5 - time.monotonic()))
        [paused] = [s for s in await app.status() if s.name == "paused"]
        # A worker of this application is live, but none can run it (issue 12, item 1).
        assert (paused.owner, paused.state, paused.partition) == (None, "no worker", None)
        assert paused.detail == "no live worker can run it; live: status-worker"
        assert paused.lag == len(recorded)
        waited = time.monotonic() - appended_at
        assert paused.lag_seconds is not None
        # Its oldest unprocessed event was appended more than 0.5 s before the status.
        assert 0.45 <= paused.lag_seconds < waited + 5, (paused.lag_seconds, waited)
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)

    # With no worker, each partition's lag counts only its own streams' new events.
    later: list[RecordedEvent] = []
    for index, stream in enumerate(streams[:5]):
        later += (await app.store.append(stream, money(index, 3))).events
    await settle(app.store)
    lags = {s.partition: s.lag for s in await app.status() if s.name == "ledger"}
    assert lags == {
        f"{p}/4": len([e for e in later if partition_of(e.stream_id, 4) == p]) for p in range(4)
    }
    assert sum(lags.values()) == len(later)
    after = await app.status()
    assert {(s.owner, s.state) for s in after} == {(None, "stopped")}


async def test_status_names_the_transaction_holding_readers_back(pg_apps: Apps) -> None:
    app = await pg_apps.open([ledger()])
    await app.setup()
    await app.store.append("acct-1", money(1, 3))
    await settle(app.store)

    async def nobody_holds_back() -> bool:
        return all(s.held_back_by is None for s in await app.status())

    await eventually(nobody_holds_back, what="no old transaction")  # (other tests' ones end)
    blocker = await asyncpg.connect(PG_DSN)
    try:
        pid = await blocker.fetchval("SELECT pg_backend_pid()")
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.fetchval("SELECT txid_current()")  # a writer, but not of events
        try:
            await app.store.append("acct-2", money(2, 3))  # visible at once: not held back
            await settle(app.store)
            assert await nobody_holds_back()
            assert isinstance(app.store, PostgresEventStore)
            await app.store.append_on(blocker, "acct-3", money(3, 1))  # an appender, open
            await app.store.append("acct-4", money(4, 3))  # commits, but is held back

            async def named() -> bool:
                return all(
                    f"transaction of pid {pid} (idle in transaction" in (s.held_back_by or "")
                    and s.held_back_seconds > 0
                    and s.lag >= 3  # committed and waiting: counted although not visible
                    for s in await app.status()
                )

            await eventually(named, what=f"status to name pid {pid}")
        finally:
            await transaction.rollback()
        await eventually(nobody_holds_back, what="the hold-up to clear")
    finally:
        await blocker.close()


# -- partitioning ---------------------------------------------------------------------------


async def test_a_new_partitioning_needs_a_new_version_or_a_rebuild(apps: Apps) -> None:
    two = await apps.open([ledger(partitions=2)])
    await two.setup()
    recorded: list[RecordedEvent] = []
    for index in range(8):
        recorded += (await two.store.append(f"acct-{index}", money(index, 4))).events
    await two.run_until_caught_up()
    built = await rows_of(two, "ledger")
    assert built == expected_ledger(recorded)
    stored = await two.read_models.checkpoints()

    three = await apps.open([ledger(partitions=3)])
    with pytest.raises(
        ProjectionVersionError,
        match=r"3 partition\(s\) in code but its read model was built with checkpoints "
        r"ledger#0/2, ledger#1/2: raise its version",
    ):
        await three.setup()
    with pytest.raises(ProjectionVersionError, match="ledger#0/2, ledger#1/2"):
        await three.run_until_caught_up()  # a runner refuses it as well
    assert await two.read_models.checkpoints() == stored  # nothing changed
    assert await rows_of(two, "ledger") == built

    newer = ledger(partitions=3)
    newer.version = 2
    rebuilt = await apps.open([newer])
    applied = await rebuilt.rebuild("ledger")
    assert applied == len(recorded)
    await rebuilt.setup()  # now accepted
    checkpoints = await rebuilt.read_models.checkpoints()
    assert {unit: c.version for unit, c in checkpoints.items()} == {
        "ledger#0/3": 2,
        "ledger#1/3": 2,
        "ledger#2/3": 2,
    }
    assert await rows_of(rebuilt, "ledger") == built
    recorded += (await rebuilt.store.append("acct-9", money(9, 5))).events
    await rebuilt.run_until_caught_up()
    assert await rows_of(rebuilt, "ledger") == expected_ledger(recorded)


# -- stopping an embedded worker ------------------------------------------------------------


def sleepy(name: str, seconds: float, entered: asyncio.Event) -> Projection:
    """Every batch sleeps ``seconds`` inside its transaction (after writing its rows)."""
    projection = Projection(name, tables=[f"{name}_seen"])

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(f"CREATE TABLE IF NOT EXISTS {name}_seen (event_id TEXT PRIMARY KEY)")

    @projection.on_batch("Deposited", "Withdrawn")
    async def record(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        await tx.executemany(
            f"INSERT INTO {name}_seen VALUES ($1)", [(str(event.id),) for event in events]
        )
        entered.set()
        await asyncio.sleep(seconds)

    return projection


async def _stop_while_in_a_batch(
    worker: Worker, entered: asyncio.Event, linger: float = 0.0
) -> float:
    """Start ``worker``, stop it from this task ``linger`` seconds after a batch entered its
    handler; return how long ``run()`` took to return after ``stop()``."""
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(entered.wait(), 10)
    except BaseException:
        worker.stop()
        await asyncio.wait_for(running, 20)
        raise
    await asyncio.sleep(linger)
    stopped_at = time.monotonic()
    worker.stop()
    await asyncio.wait_for(running, 20)
    return time.monotonic() - stopped_at


async def test_stop_lets_a_slow_batch_commit(apps: Apps) -> None:
    entered = asyncio.Event()
    app = await apps.open([sleepy("sleepy", 0.5, entered)])
    await app.setup()
    appended = await app.store.append("acct-1", money(1, 5))  # 3 deposits and withdrawals
    worker = app.worker(
        worker_id="embedded", lease_seconds=LEASE, heartbeat_seconds=HEARTBEAT, shutdown_seconds=5
    )
    took = await _stop_while_in_a_batch(worker, entered)
    assert took < 2.0, f"run() returned {took:.2f}s after stop()"
    checkpoint = await app.read_models.checkpoint("sleepy")
    assert checkpoint is not None
    assert (checkpoint.position, checkpoint.events_processed) == (appended.position, 3)
    async with app.read_models.transaction() as tx:
        assert len(await tx.fetch("SELECT * FROM sleepy_seen")) == 3
    assert await holders(app) == {None: 1}  # handed back


async def test_stop_rolls_back_a_batch_slower_than_shutdown_seconds(apps: Apps) -> None:
    entered = asyncio.Event()
    app = await apps.open([sleepy("sleepy", 5.0, entered)])
    await app.setup()
    await app.store.append("acct-1", money(1, 5))
    worker = app.worker(
        worker_id="embedded",
        lease_seconds=LEASE,
        heartbeat_seconds=HEARTBEAT,
        shutdown_seconds=0.2,
    )
    # Heartbeats pass meanwhile: on SQLite (one connection) they queue behind the batch,
    # and stop() must not wait for them either.
    took = await _stop_while_in_a_batch(worker, entered, linger=HEARTBEAT * 3)
    assert took < 2.0, f"run() returned {took:.2f}s after stop()"
    checkpoint = await app.read_models.checkpoint("sleepy")
    assert checkpoint is not None
    assert (checkpoint.position, checkpoint.events_processed) == (
        app.projection("sleepy").start,
        0,
    )
    async with app.read_models.transaction() as tx:
        assert await tx.fetch("SELECT * FROM sleepy_seen") == []  # rolled back
    assert await holders(app) == {None: 1}
