"""A partial replay SIGKILLed at every step (on progress: after its n-th read-model commit)
on SQLite and PostgreSQL: the checkpoint it reset stays behind (and the rows as of it), and
once its leases have expired a worker takes the unit back and applies those events again;
the rows always end as a clean run's, the checkpoint at the head."""

from __future__ import annotations

import asyncio

from projectionist import Application, Position
from tests.conftest import settle
from tests.faults.replay_child import BATCH_SIZE
from tests.faults.stepping import finish_child, kill_after_batches, spawn_child
from tests.replay_app import balance_events, balances, rows
from tests.worker.conftest import eventually

ACCOUNTS = 4
ROUNDS = 6
EXPECTED = [(f"acct-{a}", 100 * (ROUNDS - 1) + a, 2 * ROUNDS - 1) for a in range(ACCOUNTS)]


async def _unit(app: Application) -> tuple[list[tuple[object, ...]], Position]:
    async with app.read_models.transaction() as tx:
        found = await rows(tx)
    checkpoint = await app.read_models.checkpoint("balances")
    assert checkpoint is not None
    return found, checkpoint.position


async def _worker_takes_it_back(app: Application, head: Position) -> None:
    async with app.read_models.transaction() as tx:  # the dead replay's leases run out
        await tx.execute("UPDATE projection_leases SET expires_at = 0")
    running = asyncio.create_task(app.run(worker_id="w", lease_seconds=1.0))
    try:

        async def caught_up() -> bool:
            return (await _unit(app))[1] == head

        await eventually(caught_up, 30, "the worker caught up")
    finally:
        app.stop()
        await running


async def test_a_killed_replay_is_finished_by_the_workers(crash_url: str) -> None:
    url = crash_url
    projection = balances(batch_size=BATCH_SIZE)
    async with Application(url, [projection]) as app:
        await app.setup()
        for round_ in range(ROUNDS):
            for account in range(ACCOUNTS):
                await app.store.append(f"acct-{account}", balance_events(round_, account))
        await settle(app.store)
        await app.run_until_caught_up()
        head = await app.store.head()
        point = (await app.store.read_all(limit=5)).events[-1].position
        assert await _unit(app) == (EXPECTED, head)

        behind = []
        for commits in range(1, 12):
            child = await spawn_child("tests.faults.replay_child", url, str(point))
            await kill_after_batches(child, commits, go_on=False, timeout=60)
            await finish_child(child, f"the replay killed after {commits} commits")
            # Rows may be older meanwhile: a replay sets them back as it re-applies.
            _, checkpoint = await _unit(app)
            assert point <= checkpoint <= head
            behind.append(checkpoint < head)
            await _worker_takes_it_back(app, head)
            assert await _unit(app) == (EXPECTED, head)
        assert any(behind) and not all(behind)  # killed before the reset, and mid-replay
