"""Workers share each unit only with the workers that can run it (issue 12, items 1 and 12).

Two applications with different projections on one store, and a rolling deploy (old code
beside new code with one projection more): every unit ends held by a worker that can run
it, a stopped worker's units go to the others of its application, a unit that no live
worker can run shows as such in status, and ``live_workers`` (``health``) reports only this
application's workers. Every wait counts the workers' heartbeats, never the clock: a
property not reached after that many heartbeats fails, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from projectionist import Application, Projection, leases
from projectionist.status import Severity, UnitState
from projectionist.worker import Worker
from tests.engine.projections import ledger
from tests.worker.conftest import Apps

HEARTBEAT = 0.1
LEASE = 2.0
"""Long beside the heartbeat: a takeover within a few heartbeats cannot be an expiry."""
OPTIONS = {"lease_seconds": LEASE, "heartbeat_seconds": HEARTBEAT}
SAFETY_NET = 120.0
"""Only against a hang: the waits are counted in heartbeats."""
_RUNNING: dict[Worker, asyncio.Task[None]] = {}


def start(worker: Worker) -> asyncio.Task[None]:
    """Run ``worker`` in a task the waits below watch: one that died fails them at once."""
    task = _RUNNING[worker] = asyncio.create_task(worker.run())
    return task


def _assert_alive(workers: Sequence[Worker]) -> None:
    for worker in workers:
        task = _RUNNING[worker]
        if task.done():
            raise AssertionError(f"worker {worker.worker_id} ended") from task.exception()


def first_app() -> list[Projection]:
    return [ledger("ledger", partitions=2), ledger("other")]  # 3 units


def second_app() -> list[Projection]:
    return [ledger("billing", partitions=2)]  # 2 units


async def owners(app: Application) -> dict[str, str | None]:
    """unit -> the worker holding it (None: nobody), for every unit on the store."""
    return {unit: row.owner for unit, row in (await leases.all_leases(app.read_models)).items()}


async def within_heartbeats(
    workers: Sequence[Worker], beats: int, check: Callable[[], Awaitable[bool]], what: str
) -> None:
    """Return once ``check()`` holds; fail if it does not after every one of ``workers``
    has made ``beats`` more heartbeats."""
    targets = [worker.heartbeats + beats for worker in workers]
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await check():
        behind = [w for w, target in zip(workers, targets, strict=True) if w.heartbeats < target]
        assert behind, f"{what}: not reached within {beats} heartbeats"
        assert loop.time() - started < SAFETY_NET, f"{what}: the workers stopped beating"
        _assert_alive(workers)
        await asyncio.sleep(0.02)


async def heartbeats(workers: Sequence[Worker], beats: int) -> None:
    """Return once every one of ``workers`` has made ``beats`` more heartbeats."""
    targets = [worker.heartbeats + beats for worker in workers]
    loop = asyncio.get_running_loop()
    started = loop.time()
    while any(w.heartbeats < target for w, target in zip(workers, targets, strict=True)):
        assert loop.time() - started < SAFETY_NET, "the workers stopped beating"
        _assert_alive(workers)
        await asyncio.sleep(0.02)


def holding(app: Application, wanted: dict[str, str]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await owners(app) == wanted

    return check


async def test_a_stopped_worker_s_units_go_to_its_application_s_other_worker(apps: Apps) -> None:
    one_a = await apps.open(first_app())
    await one_a.setup()
    one_b = await apps.open(first_app())
    two = await apps.open(second_app())
    await two.setup()
    w1, w2 = one_a.worker(worker_id="w1", **OPTIONS), one_b.worker(worker_id="w2", **OPTIONS)
    w3 = two.worker(worker_id="w3", **OPTIONS)
    tasks = {w: start(w) for w in (w1, w2, w3)}
    try:

        async def shared() -> bool:
            held = await owners(one_a)
            first = sorted(str(held.get(u)) for p in first_app() for u in p.units)
            second = [held.get(u) for p in second_app() for u in p.units]
            return first in (["w1", "w1", "w2"], ["w1", "w2", "w2"]) and second == ["w3", "w3"]

        await within_heartbeats([w1, w2, w3], 12, shared, "every unit held by its application")
        assert set(w3.owned) == {"billing#0/2", "billing#1/2"}

        w2.stop()
        await asyncio.wait_for(tasks[w2], 15)
        everything = {"ledger#0/2": "w1", "ledger#1/2": "w1", "other": "w1"}
        everything |= {"billing#0/2": "w3", "billing#1/2": "w3"}
        await within_heartbeats(
            [w1, w3], 4, holding(one_a, everything), "w1 taking every unit of its application"
        )
        assert len(w1.owned) == 3

        # Item 12: each application's live workers are its own.
        assert [w for w, _ in await one_a.live_workers(30)] == ["w1"]
        assert [w for w, _ in await two.live_workers(30)] == ["w3"]
    finally:
        for worker in tasks:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks.values()), 15)


async def test_a_rolling_deploy_hands_every_unit_over(apps: Apps) -> None:
    old_code = [ledger("ledger", partitions=2)]
    new_code = [ledger("ledger", partitions=2), ledger("fresh", partitions=3)]
    old = await apps.open(old_code)
    await old.setup()
    new = await apps.open(new_code)
    await new.setup()
    w_old = old.worker(worker_id="old", **OPTIONS)
    w_new = new.worker(worker_id="new", **OPTIONS)
    running_old = start(w_old)
    running_new: asyncio.Task[None] | None = None
    try:
        await within_heartbeats(
            [w_old],
            6,
            holding(old, {"ledger#0/2": "old", "ledger#1/2": "old"}),
            "the old worker taking every unit",
        )
        running_new = start(w_new)

        async def shared() -> bool:
            held = await owners(old)
            return sorted(map(str, held.values())) == ["new"] * 4 + ["old"] and all(
                held.get(u) == "new" for u in new_code[1].units
            )

        await within_heartbeats([w_old, w_new], 12, shared, "old and new code sharing 'ledger'")

        w_old.stop()
        await asyncio.wait_for(running_old, 15)
        await within_heartbeats(
            [w_new],
            4,
            holding(new, {u: "new" for p in new_code for u in p.units}),
            "the new worker taking every unit",
        )
    finally:
        w_old.stop()
        w_new.stop()
        await asyncio.wait_for(asyncio.gather(running_old, *filter(None, [running_new])), 15)


async def test_a_unit_no_live_worker_can_run_is_shown_as_such(apps: Apps) -> None:
    app = await apps.open(first_app())
    await app.setup()
    other_app = await apps.open(second_app())
    await other_app.setup()
    foreign = other_app.worker(worker_id="foreign", **OPTIONS)
    running_foreign = start(foreign)
    worker = app.worker(worker_id="ledger-only", projections=["ledger"], **OPTIONS)
    running: asyncio.Task[None] | None = None
    try:
        await heartbeats([foreign], 3)
        # Only another application's worker is alive: this one's units are stopped.
        before = {s.name: s.state for s in await app.status()}
        assert before == {"ledger": UnitState.STOPPED, "other": UnitState.STOPPED}
        assert await app.live_workers(30) == []

        running = start(worker)
        held = {"ledger#0/2": "ledger-only", "ledger#1/2": "ledger-only"}
        held |= {"billing#0/2": "foreign", "billing#1/2": "foreign"}
        await within_heartbeats([worker], 6, holding(app, held), "the ledger worker taking ledger")
        status = {s.name: s for s in await app.status() if s.name == "other"}["other"]
        assert status.state is UnitState.NO_WORKER
        assert status.severity is Severity.BAD
        assert status.as_dict()["state"] == "no worker"
        assert status.detail == "no live worker can run it; live: ledger-only"
        assert [w for w, _ in await app.live_workers(30)] == ["ledger-only"]
    finally:
        foreign.stop()
        worker.stop()
        await asyncio.wait_for(asyncio.gather(running_foreign, *filter(None, [running])), 15)
