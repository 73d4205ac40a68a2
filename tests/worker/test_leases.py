"""Leases fence writers: a runner whose lease was taken over cannot commit, and a takeover
waits for the batch in flight of the previous owner (which did check a valid lease)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from projectionist import Application, Projection, ReadModelTransaction, RecordedEvent, leases
from projectionist.errors import LeaseLostError, StoreUnavailableError
from projectionist.leases import Lease, UnitReport
from projectionist.runner import ProjectionRunner
from projectionist.worker import Worker
from tests.conftest import settle
from tests.engine.projections import ledger, ledger_rows, money
from tests.worker.conftest import Apps, eventually

REPORT = UnitReport("live", None, None, 0, None)


async def expire(app: Application, unit: str) -> None:
    async with app.read_models.transaction() as tx:
        await tx.execute("UPDATE projection_leases SET expires_at = 0 WHERE unit = $1", unit)


async def rows_and_checkpoint(app: Application, unit: str = "ledger") -> tuple[object, ...]:
    async with app.read_models.transaction() as tx:
        rows = await ledger_rows(tx)
    checkpoint = await app.read_models.checkpoint(unit)
    assert checkpoint is not None
    return rows, checkpoint.position, checkpoint.events_processed


def fenced_runner(app: Application, projection: Projection, lease: Lease) -> ProjectionRunner:
    async def fence(tx: ReadModelTransaction) -> None:
        await leases.check(tx, lease)

    return ProjectionRunner(app.store, app.read_models, projection, fence=fence)


async def test_a_runner_whose_lease_was_taken_over_cannot_commit(sql_apps: Apps) -> None:
    projection = ledger()
    app = await sql_apps.open([projection])
    await app.setup()
    await leases.register_units(app.read_models, {"ledger": "ledger"})
    first = await app.store.append("acct-1", money(1, 5))
    await settle(app.store)

    lease_a = await leases.acquire(app.read_models, "ledger", "A", 30.0)
    assert lease_a == Lease("ledger", "A", 1)
    assert await leases.acquire(app.read_models, "ledger", "B", 30.0) is None  # A holds it
    runner = fenced_runner(app, projection, lease_a)
    assert await runner.step() is True  # a valid lease: the batch commits
    before = await rows_and_checkpoint(app)
    assert before[1:] == (first.position, 4)  # 4 of the 5 events are handled by ledger

    await app.store.append("acct-2", money(2, 5))
    await settle(app.store)
    await expire(app, "ledger")
    lease_b = await leases.acquire(app.read_models, "ledger", "B", 30.0)
    assert lease_b == Lease("ledger", "B", 2)

    with pytest.raises(LeaseLostError, match=r"A lost its lease .* held by B \(token 2\)"):
        await runner.step()
    assert await rows_and_checkpoint(app) == before  # nothing written
    assert runner.checkpoint == first.position
    assert await leases.renew(app.read_models, lease_a, 30.0, REPORT) is False
    assert await leases.renew(app.read_models, lease_b, 30.0, REPORT) is True
    assert (await leases.all_leases(app.read_models))["ledger"].owner == "B"

    # B's own runner, fenced by B's lease, goes on from A's last commit: nothing lost.
    runner_b = fenced_runner(app, projection, lease_b)
    assert await runner_b.step() is True
    rows, _, processed = await rows_and_checkpoint(app)
    assert processed == 8
    assert rows == (await _rebuilt_rows(app, projection))


async def test_an_expired_lease_stops_commits_even_before_a_takeover(sql_apps: Apps) -> None:
    projection = ledger()
    app = await sql_apps.open([projection])
    await app.setup()
    await leases.register_units(app.read_models, {"ledger": "ledger"})
    await app.store.append("acct-1", money(1, 5))
    await settle(app.store)
    lease_a = await leases.acquire(app.read_models, "ledger", "A", 30.0)
    assert lease_a is not None
    await expire(app, "ledger")
    runner = fenced_runner(app, projection, lease_a)
    with pytest.raises(LeaseLostError, match=r"held by A \(token 1\)"):
        await runner.step()
    assert (await rows_and_checkpoint(app))[1:] == (projection.start, 0)
    assert await leases.renew(app.read_models, lease_a, 30.0, REPORT) is False


async def _rebuilt_rows(app: Application, projection: Projection) -> object:
    """The rows of a clean fold of the whole history."""
    await app.rebuild(projection.name)
    async with app.read_models.transaction() as tx:
        return await ledger_rows(tx)


def gated_ledger() -> tuple[Projection, asyncio.Event, asyncio.Event]:
    """A projection whose first batch stops inside its transaction (after the fence check)
    until ``release`` is set; ``entered`` tells that it got there."""
    projection = Projection("gated", tables=["gated_seen"])
    entered, release = asyncio.Event(), asyncio.Event()

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS gated_seen (event_id TEXT PRIMARY KEY)")

    @projection.on_batch("Deposited", "Withdrawn")
    async def record(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        await tx.executemany(
            "INSERT INTO gated_seen VALUES ($1)", [(str(event.id),) for event in events]
        )
        if not entered.is_set():
            entered.set()
            await release.wait()

    return projection, entered, release


async def test_a_takeover_skips_a_unit_under_a_batch_in_flight(pg_apps: Apps) -> None:
    """A taker neither takes a unit over under the previous owner's open batch nor waits
    for it (that owner may be paused): it skips the unit until that batch has ended."""
    projection, entered, release = gated_ledger()
    app = await pg_apps.open([projection])
    await app.setup()
    await leases.register_units(app.read_models, {"gated": "gated"})
    first = await app.store.append("acct-1", money(1, 5))  # 2 deposits, 1 withdrawal
    await settle(app.store)
    lease_a = await leases.acquire(app.read_models, "gated", "A", 30.0)
    assert lease_a is not None
    runner = fenced_runner(app, projection, lease_a)

    batch = asyncio.create_task(runner.step())
    try:
        await asyncio.wait_for(entered.wait(), 10)  # A checked its lease; its batch is open
        await expire(app, "gated")  # a long pause of A: its lease runs out meanwhile
        started = time.monotonic()
        assert await leases.acquire(app.read_models, "gated", "B", 30.0) is None
        assert time.monotonic() - started < 2, "the taker waited for the batch in flight"
        assert not batch.done()
    finally:
        release.set()  # even on failure: a batch left hanging would hang the teardown
        await asyncio.wait({batch}, timeout=10)
    assert batch.result() is True  # A's batch commits: it held a valid lease
    assert await leases.acquire(app.read_models, "gated", "B", 30.0) == Lease("gated", "B", 2)
    checkpoint = await app.read_models.checkpoint("gated")
    assert checkpoint is not None
    assert (checkpoint.position, checkpoint.events_processed) == (first.position, 3)
    async with app.read_models.transaction() as tx:
        assert len(await tx.fetch("SELECT * FROM gated_seen")) == 3

    # A's next batch finds B's lease: LeaseLostError, nothing written.
    await app.store.append("acct-2", money(1, 5))
    await settle(app.store)
    with pytest.raises(LeaseLostError, match=r"held by B \(token 2\)"):
        await runner.step()
    checkpoint = await app.read_models.checkpoint("gated")
    assert checkpoint is not None
    assert (checkpoint.position, checkpoint.events_processed) == (first.position, 3)
    async with app.read_models.transaction() as tx:
        assert len(await tx.fetch("SELECT * FROM gated_seen")) == 3


async def test_a_taker_ends_a_stuck_batch_that_no_idle_limit_ends(pg_apps: Apps) -> None:
    """A worker stopped in the middle of a statement is not idle: no idle limit ends its
    batch, which keeps the lease row locked. A taker that finds the unit's lease expired and
    its row still locked ends that owner's old transactions, and takes the unit next time."""
    projection, entered, release = gated_ledger()
    stuck = await pg_apps.open([projection])
    await stuck.setup()
    stuck.read_models.guard_transactions("A", idle_seconds=60)  # no idle limit in time
    await leases.register_units(stuck.read_models, {"gated": "gated"})
    await stuck.store.append("acct-1", money(1, 5))
    await settle(stuck.store)
    lease_a = await leases.acquire(stuck.read_models, "gated", "A", 30.0)
    assert lease_a is not None
    batch = asyncio.create_task(fenced_runner(stuck, projection, lease_a).step())
    taker = await pg_apps.open([projection])
    worker = Worker(taker, worker_id="B", lease_seconds=1.0)
    running = None
    try:
        await asyncio.wait_for(entered.wait(), 10)  # A's batch holds the lease row
        await expire(stuck, "gated")  # A stopped renewing
        running = asyncio.create_task(worker.run())

        async def taken() -> bool:
            return "gated" in worker.owned

        waited = await eventually(taken, what="B to take the stuck unit")
        assert waited < 5
        release.set()  # A resumes: its next statement finds its session ended
        done, _ = await asyncio.wait({batch}, timeout=10)
        assert done == {batch}
        with pytest.raises(StoreUnavailableError):  # its session was ended under it
            batch.result()
    finally:
        release.set()
        worker.stop()
        if running is not None:
            await running
        await asyncio.wait({batch}, timeout=10)
    async with taker.read_models.transaction() as tx:
        owner = await tx.fetch("SELECT owner, token FROM projection_leases WHERE unit = 'gated'")
    assert owner[0][1] == 2  # B took it with token 2
