"""A partial replay while a worker runs the projection (``Application.run`` in a task) on
every backend: the replay takes the units' leases, so the worker applies no batch meanwhile
(no checkpoint conflict); afterwards the rows equal a clean rebuild's and the worker takes
the units back and goes on with new events."""

from __future__ import annotations

import asyncio
import logging

import pytest

from projectionist import START, Application, RecordedEvent, leases
from tests.conftest import settle
from tests.replay_app import balance_events, balances, replayed, rows
from tests.worker.conftest import Apps, eventually

ACCOUNTS = 3


async def append_rounds(app: Application, rounds: range) -> None:
    for round_ in rounds:
        for account in range(ACCOUNTS):
            await app.store.append(f"acct-{account}", balance_events(round_, account))


async def handled(app: Application) -> list[RecordedEvent]:
    await settle(app.store)
    events = (await app.store.read_all(START, limit=10_000, types=["BalanceSet"])).events
    return events


async def caught_up_by(app: Application, owner: str, units: list[str]) -> bool:
    head = await app.store.head()
    stored = await app.read_models.checkpoints()
    held = await leases.all_leases(app.read_models)
    return all(stored[u].position == head and u in held and held[u].owner == owner for u in units)


async def test_a_replay_under_a_running_worker(
    apps: Apps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="projectionist")
    projection = balances(partitions=2, batch_size=3)
    app = await apps.open([projection])
    await app.setup()
    await append_rounds(app, range(8))
    running = asyncio.create_task(
        app.run(worker_id="w-1", lease_seconds=1.0, heartbeat_seconds=0.2)
    )
    try:
        await eventually(lambda: caught_up_by(app, "w-1", projection.units), 30, "caught up")
        before = await handled(app)
        point = before[5].position

        appending = asyncio.create_task(append_rounds(app, range(8, 10)))  # meanwhile
        result = await app.replay("balances", point)
        await appending
        assert result.replayed == projection.units
        assert result.events >= len(before) - 6  # at least to where the checkpoints were

        await append_rounds(app, range(10, 12))  # after: the worker's job
        await eventually(lambda: caught_up_by(app, "w-1", projection.units), 30, "resumed")
        everything = await handled(app)
        async with app.read_models.transaction() as tx:
            replayed_rows, again = await rows(tx), await replayed(tx)
        after_point = {str(event.position) for event in everything[6:]}
        assert {str(event.position) for event in before[6:]} <= again <= after_point
        assert not again & {str(event.position) for event in everything[-2 * ACCOUNTS :]}
        last = 11
        assert replayed_rows == [(f"acct-{a}", 100 * last + a, 2 * last + 1) for a in range(3)]

        await app.rebuild("balances")  # a clean rebuild gives the same rows
        await eventually(lambda: caught_up_by(app, "w-1", projection.units), 30, "rebuilt")
        async with app.read_models.transaction() as tx:
            assert await rows(tx) == replayed_rows
    finally:
        app.stop()
        await running
    assert not [r for r in caplog.records if getattr(r, "action", "") == "checkpoint_conflict"]
