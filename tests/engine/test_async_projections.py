"""Async projections: catch-up, checkpoints with the rows, failures, catch-up-to-live."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from projectionist import (
    Application,
    ConfigurationError,
    EventStore,
    HandlerError,
    NewEvent,
    ProjectionTimeoutError,
    ProjectionVersionError,
    ReadModelTransaction,
    RecordedEvent,
    Severity,
    UnitState,
    create_store,
)
from projectionist.projection import Projection
from tests.conftest import settle
from tests.engine.projections import ledger, ledger_rows, money


async def test_catch_up_writes_rows_and_checkpoint_together(app_url: str) -> None:
    async with Application(app_url, [ledger(batch_size=7)]) as app:
        await app.setup()
        for stream in range(5):
            await app.store.append(f"account-{stream}", money(stream, 10))
        await app.run_until_caught_up()
        checkpoint = await app.read_models.checkpoint("ledger")
        assert checkpoint is not None and checkpoint.position == await app.store.head()
        handled = [e for s in range(5) for e in money(s, 10) if e.type != "Ignored"]
        assert checkpoint.events_processed == len(handled)
        async with app.read_models.transaction() as tx:
            seen, totals = await ledger_rows(tx)
        assert len(seen) == len(handled)  # type: ignore[arg-type]
        expected = {
            f"account-{s}": sum(
                e.data["amount"] * (1 if e.type == "Deposited" else -1)
                for e in money(s, 10)
                if e.type in ("Deposited", "Withdrawn")
            )
            for s in range(5)
        }
        assert {row[0]: row[2] for row in totals} == expected  # type: ignore[attr-defined]


async def test_unhandled_types_never_reach_handlers_but_move_the_checkpoint(app_url: str) -> None:
    delivered: list[str] = []
    projection = Projection("picky")

    @projection.on("Wanted")
    async def wanted(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        delivered.append(event.type)

    async with Application(app_url, [projection]) as app:
        await app.setup()
        await app.store.append("s", [NewEvent("Other", {})] * 0 + [NewEvent("Other", {})])
        await app.store.append("s", [NewEvent("Wanted", {}), NewEvent("Other", {})])
        await app.store.append("t", [NewEvent("Other", {}) for _ in range(3)])
        await app.run_until_caught_up()
        checkpoint = await app.read_models.checkpoint("picky")
        assert checkpoint is not None and checkpoint.position == await app.store.head()
        assert delivered == ["Wanted"]


async def test_failing_handler_rolls_back_the_batch_and_keeps_the_checkpoint(app_url: str) -> None:
    projection = ledger()
    poison = {"on": True}
    original = projection._handlers["Withdrawn"]

    async def flaky(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        await original[1](event, tx)  # type: ignore[arg-type]
        if poison["on"] and event.data["amount"] == 3:
            raise ValueError("poison event")

    projection._handlers["Withdrawn"] = (False, flaky)
    async with Application(app_url, [projection]) as app:
        await app.setup()
        await app.store.append("account-0", money(0, 10))
        with pytest.raises(HandlerError) as caught:
            await app.run_until_caught_up()
        assert isinstance(caught.value.__cause__, ValueError)
        assert "poison event" in str(caught.value) and "stream 'account-0' version 3" in str(
            caught.value
        )
        assert isinstance(caught.value.event, RecordedEvent) and caught.value.event.version == 3
        # The batch was narrowed down to the poison event: the two before it committed.
        checkpoint = await app.read_models.checkpoint("ledger")
        assert checkpoint is not None and checkpoint.events_processed == 2
        assert checkpoint.position < caught.value.event.position
        async with app.read_models.transaction() as tx:
            seen, _ = await ledger_rows(tx)
        assert len(seen) == 2  # type: ignore[arg-type]
        [status] = await app.status()
        assert status.state == "faulted" and status.fault is not None
        assert status.fault.stream_version == 3 and "poison event" in status.fault.error
        assert "ValueError" in status.fault.traceback
        poison["on"] = False
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            seen, _ = await ledger_rows(tx)
        assert len(seen) == 8  # type: ignore[arg-type]


async def test_catch_up_then_live_misses_and_doubles_nothing(app_url: str) -> None:
    async with Application(app_url, [ledger(batch_size=13)], poll_interval=0.05) as app:
        await app.setup()
        for stream in range(10):  # history, before the projection runs
            await app.store.append(f"old-{stream}", money(stream, 20))
        running = asyncio.create_task(app.run())
        rng = random.Random(4)
        appended: list[RecordedEvent] = []

        async def appender(index: int) -> None:
            for n in range(15):
                result = await app.store.append(f"new-{index}-{n % 3}", money(n, rng.randint(1, 4)))
                appended.extend(result.events)
                await asyncio.sleep(rng.uniform(0, 0.005))

        await asyncio.gather(*(appender(i) for i in range(4)))
        last = max(event.position for event in appended)
        await app.wait_for("ledger", last, timeout=30)
        app.stop()
        await asyncio.wait_for(running, 10)
        async with app.read_models.transaction() as tx:
            seen, totals = await ledger_rows(tx)
        old = [e for s in range(10) for e in money(s, 20)]
        handled = [e for e in old + appended if e.type != "Ignored"]
        assert len(seen) == len(handled)  # type: ignore[arg-type]
        assert sum(row[1] for row in totals) == sum(  # type: ignore[attr-defined]
            1 for e in handled if e.type != "Audited"
        )


async def test_wait_for_times_out_naming_the_lag(app_url: str) -> None:
    async with Application(app_url, [ledger()]) as app:
        await app.setup()
        result = await app.store.append("account-1", money(1, 6))
        await settle(app.store)
        with pytest.raises(ProjectionTimeoutError) as caught:
            await app.wait_for("ledger", result.position, timeout=0.2)
        message = str(caught.value)
        assert "did not reach position" in message and "6 events behind" in message
        await app.run_until_caught_up()
        await app.wait_for("ledger", result.position, timeout=0.2)


async def test_rebuild_restores_a_damaged_read_model(app_url: str) -> None:
    async with Application(app_url, [ledger()]) as app:
        await app.setup()
        for stream in range(3):
            await app.store.append(f"account-{stream}", money(stream, 12))
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            before = await ledger_rows(tx)
            await tx.execute("UPDATE ledger_totals SET amount = amount + 1000")
        reports: list[tuple[int, int]] = []
        total = await app.rebuild("ledger", lambda done, all_: reports.append((done, all_)))
        assert total == 36 and reports[-1] == (36, 36)
        async with app.read_models.transaction() as tx:
            assert await ledger_rows(tx) == before
        checkpoint = await app.read_models.checkpoint("ledger")
        assert checkpoint is not None and checkpoint.position == await app.store.head()


async def test_new_version_in_code_asks_for_a_rebuild(app_url: str) -> None:
    async with Application(app_url, [ledger()]) as app:
        await app.setup()
        await app.store.append("account-1", money(1, 4))
        await app.run_until_caught_up()
    newer = ledger()
    newer.version = 2
    async with Application(app_url, [newer]) as app:
        if app_url == "memory://":
            return  # nothing survives a memory store
        if app_url.startswith("postgresql"):
            await app.setup()  # accepted: workers build the new version beside (blue/green)
            [status] = await app.status()
            assert (status.state, status.detail) == (
                UnitState.NEEDS_REBUILD,
                "read model is version 1",
            )
            assert status.state_text == "needs rebuild (read model is version 1)"
            assert status.severity is Severity.BAD
            with pytest.raises(ProjectionVersionError, match="projectionist rebuild ledger"):
                await app.run_until_caught_up()  # a runner, not a worker, says so
        else:
            with pytest.raises(ProjectionVersionError, match="projectionist rebuild ledger"):
                await app.setup()
        await app.rebuild("ledger")
        await app.setup()
        statuses = {s.name: s for s in await app.status()}
        assert statuses["ledger"].version == 2 and statuses["ledger"].lag == 0


async def test_two_runners_on_one_projection_never_double_apply(app_url: str) -> None:
    async with Application(app_url, [ledger(batch_size=5)]) as first:
        await first.setup()
        for stream in range(6):
            await first.store.append(f"account-{stream}", money(stream, 10))
        # A memory store is shared by passing the object; the others by their URL.
        shared = first.store if app_url == "memory://" else app_url
        async with Application(shared, [ledger(batch_size=5)]) as second:
            await asyncio.gather(first.run_until_caught_up(), second.run_until_caught_up())
        async with first.read_models.transaction() as tx:
            seen, _ = await ledger_rows(tx)
        assert len(seen) == sum(1 for s in range(6) for e in money(s, 10) if e.type != "Ignored")  # type: ignore[arg-type]


async def test_status_reports_each_projection(app_url: str) -> None:
    async with Application(app_url, [ledger(), ledger("inline_ledger", kind="inline")]) as app:
        await app.setup()
        await app.store.append("account-1", money(1, 5))
        await settle(app.store)
        statuses = {s.name: s for s in await app.status()}
        assert statuses["ledger"].lag == 5 and statuses["ledger"].state == "stopped"
        assert statuses["inline_ledger"].lag == 0 and statuses["inline_ledger"].kind == "inline"
        await app.run_until_caught_up()
        statuses = {s.name: s for s in await app.status()}
        assert statuses["ledger"].state == "stopped"
        assert statuses["ledger"].position == statuses["ledger"].head == await app.store.head()
        assert statuses["ledger"].as_dict()["position"] == str(await app.store.head())


async def test_read_model_in_another_database(app_url: str, tmp_path: Path) -> None:
    read_model_url = f"sqlite:///{tmp_path / 'read_models.db'}"
    async with Application(app_url, [ledger()], read_model_url=read_model_url) as app:
        await app.setup()
        await app.store.append("account-1", money(1, 8))
        await app.run_until_caught_up()
        checkpoint = await app.read_models.checkpoint("ledger")
        assert checkpoint is not None and checkpoint.position == await app.store.head()
    with sqlite3.connect(tmp_path / "read_models.db") as connection:
        rows = connection.execute("SELECT count(*) FROM ledger_seen").fetchone()
        stored = connection.execute("SELECT name FROM projection_checkpoints").fetchall()
    assert rows == (7,) and stored == [("ledger",)]
    if app_url.startswith("sqlite"):
        with sqlite3.connect(app_url.removeprefix("sqlite:///")) as connection:
            tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
        assert "ledger_seen" not in tables, "the read model must not be in the event store"


def test_inline_projections_need_the_event_store_database() -> None:
    with pytest.raises(ConfigurationError, match="must live in the event store's database"):
        Application("memory://", [ledger(kind="inline")], read_model_url="sqlite:///x.db")


async def test_projection_started_from_a_chosen_position(app_url: str) -> None:
    async with Application(app_url, []) as setup_app:
        await setup_app.setup()
        start = (await setup_app.store.append("old", money(0, 10))).position
        if app_url == "memory://":
            store = setup_app.store
    shared = store if app_url == "memory://" else app_url
    try:
        async with Application(shared, [ledger(batch_size=3)]) as app:
            app.projection("ledger").start = start
            await app.setup()
            await app.store.append("new", money(1, 10))
            await app.run_until_caught_up()
            async with app.read_models.transaction() as tx:
                seen, totals = await ledger_rows(tx)
            assert {row[1] for row in seen} == {"new"}  # type: ignore[attr-defined]
            assert len(seen) == 8  # type: ignore[arg-type]
            assert await app.rebuild("ledger") == 10  # a rebuild replays from the same start
            async with app.read_models.transaction() as tx:
                assert await ledger_rows(tx) == [seen, totals]
    finally:
        if app_url == "memory://":  # a shared store is its owner's to close: this test's
            await store.close()


async def test_a_runner_of_an_old_version_stops_after_a_rebuild(app_url: str) -> None:
    store = create_store(app_url)
    await store.open()
    try:
        async with Application(store, [ledger()]) as old:
            await old.setup()
            await old.store.append("account-1", money(1, 4))
            await old.run_until_caught_up()
            newer = ledger()
            newer.version = 2
            async with Application(store, [newer]) as new:
                await new.rebuild("ledger")  # ends where the old runner stands
            await old.store.append("account-1", money(1, 2))
            with pytest.raises(ProjectionVersionError, match="version 2 has taken over"):
                await old.run_until_caught_up()
    finally:
        await store.close()


async def test_runners_starting_a_new_projection_together(app_url: str) -> None:
    shared: str | EventStore = app_url
    async with Application(app_url, [ledger()]) as first:
        if app_url == "memory://":
            shared = first.store
        await first.store.apply_schema()
        await first.store.append("account-1", money(1, 6))
        async with Application(shared, [ledger()]) as second:
            await asyncio.gather(
                first.runner("ledger").prepare(), second.runner("ledger").prepare()
            )
            await asyncio.gather(first.run_until_caught_up(), second.run_until_caught_up())
        async with first.read_models.transaction() as tx:
            seen, _ = await ledger_rows(tx)
        assert len(seen) == 5  # type: ignore[arg-type]


async def test_catch_up_reads_the_next_batch_while_applying() -> None:
    async with Application("memory://", [ledger(batch_size=5)]) as app:
        await app.setup()
        for stream in range(6):
            await app.store.append(f"account-{stream}", money(stream, 10))
        timeline: list[str] = []
        store = app.store
        read_all = store.read_all

        async def reading(*args: Any, **kwargs: Any) -> Any:
            timeline.append("read")
            await asyncio.sleep(0)
            return await read_all(*args, **kwargs)

        store.read_all = reading  # type: ignore[method-assign]
        runner = app.runner("ledger")
        step = runner.step

        async def stepping() -> bool:
            timeline.append("step")
            return await step()

        runner.step = stepping  # type: ignore[method-assign]
        await app.run_until_caught_up()
        # Without prefetching every step would do exactly one read: "step", "read", ...
        first_reads = [i for i, entry in enumerate(timeline) if entry == "read"]
        steps = timeline.count("step")
        assert len(first_reads) >= steps - 1
        assert "step" in timeline[1:] and timeline[:3] == ["step", "read", "read"], timeline[:6]


async def test_queued_per_event_writes_give_the_rows_of_executed_ones_and_name_a_poison_event(
    app_url: str,
) -> None:
    """``tx.queue``: per-event SQL sent in runs of one executemany; a handler reads its own
    queued writes; a queued statement that fails is narrowed down to its event."""
    projection = Projection("queued", tables=["queued_rows"], on_error="skip")

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS queued_rows (n BIGINT PRIMARY KEY, seen BIGINT)"
        )

    @projection.on("Numbered")
    async def numbered(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        tx.queue("INSERT INTO queued_rows VALUES ($1, 0)", event.data["n"])
        if event.data["n"] % 10 == 0:  # reads its own queued writes
            seen = await tx.fetchval("SELECT count(*) FROM queued_rows")
            tx.queue("UPDATE queued_rows SET seen = $2 WHERE n = $1", event.data["n"], seen)

    numbers = [*range(1, 31), 7, *range(31, 41)]  # 7 twice: its second insert fails
    async with Application(app_url, [projection]) as app:
        await app.setup()
        await app.store.append("s", [NewEvent("Numbered", {"n": n}) for n in numbers])
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            rows = await tx.fetch("SELECT n, seen FROM queued_rows ORDER BY n")
        letters = await app.dead_letters()
    assert rows == [(n, n if n % 10 == 0 else 0) for n in range(1, 41)]
    assert [(letter.event.data["n"], letter.event.position.seq) for letter in letters] == [(7, 31)]
