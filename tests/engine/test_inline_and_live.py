"""Inline projections (in the append's transaction), live projections, folding a stream."""

from __future__ import annotations

import asyncio

import pytest

from projectionist import (
    Application,
    ConfigurationError,
    Evolver,
    HandlerError,
    LiveProjection,
    NewEvent,
    Projection,
    ReadModelTransaction,
    RecordedEvent,
    create_store,
    fold_stream,
)
from tests.conftest import settle
from tests.engine.projections import ledger, ledger_rows, money


def failing_inline() -> Projection:
    projection = ledger("strict", kind="inline")

    @projection.on("Refused")
    async def refuse(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        raise PermissionError("refused by the read model")

    return projection


async def test_inline_rows_commit_with_the_append(app_url: str) -> None:
    async with Application(app_url, [failing_inline()]) as app:
        await app.setup()
        result = await app.store.append("account-1", money(1, 5))
        await app.wait_for("strict", result.position, timeout=0)  # nothing to wait for
        async with app.read_models.transaction() as tx:
            seen, totals = await ledger_rows(tx, "strict")
        assert len(seen) == 4 and len(totals) == 1  # type: ignore[arg-type]


async def test_failing_inline_projection_rolls_back_the_append(app_url: str) -> None:
    async with Application(app_url, [failing_inline()]) as app:
        await app.setup()
        await app.store.append("account-1", money(1, 3))
        head = await app.store.last_committed()
        async with app.read_models.transaction() as tx:
            before = await ledger_rows(tx, "strict")
        with pytest.raises(HandlerError) as caught:
            await app.store.append(
                "account-1", [NewEvent("Deposited", {"amount": 5}), NewEvent("Refused", {})]
            )
        assert isinstance(caught.value.__cause__, PermissionError)
        assert await app.store.last_committed() == head
        assert len(await app.store.read_stream("account-1")) == 3
        async with app.read_models.transaction() as tx:
            assert await ledger_rows(tx, "strict") == before
        assert (await app.store.append("account-1", money(2, 1), expected_version=3)).version == 4


async def test_inline_projection_added_later_is_built_from_history(app_url: str) -> None:
    store = create_store(app_url)
    await store.open()
    async with Application(store, []) as app:
        await app.setup()
        for stream in range(4):
            await app.store.append(f"account-{stream}", money(stream, 6))
    async with Application(store, [ledger("late", kind="inline")]) as late:
        await late.setup()
        await late.store.append("account-9", money(9, 2))
        async with late.read_models.transaction() as tx:
            seen, _ = await ledger_rows(tx, "late")
        expected = [e for s in range(4) for e in money(s, 6)] + money(9, 2)
        assert len(seen) == sum(1 for e in expected if e.type != "Ignored")  # type: ignore[arg-type]
        reports: list[tuple[int, int]] = []
        await late.rebuild("late", lambda done, total: reports.append((done, total)))
        async with late.read_models.transaction() as tx:
            assert (await ledger_rows(tx, "late"))[0] == seen
        assert reports, "a rebuild reports progress"
    await store.close()


async def test_live_projection_follows_new_events_only(app_url: str) -> None:
    def nothing() -> dict[str, int]:
        return {}

    counts: LiveProjection[dict[str, int]] = LiveProjection("counts", nothing)

    @counts.on("Deposited", "Withdrawn")
    def count(state: dict[str, int], event: RecordedEvent) -> dict[str, int]:
        return {**state, event.type: state.get(event.type, 0) + 1}

    async with Application(app_url, [], live=[counts], poll_interval=0.05) as app:
        await app.setup()
        await app.store.append("before", money(0, 10))  # history: not counted
        await settle(app.store)
        running = asyncio.create_task(app.run())
        await asyncio.sleep(0.2)
        await app.store.append("after", [NewEvent("Deposited", {"amount": 1}) for _ in range(3)])
        await app.store.append("after", [NewEvent("Withdrawn", {"amount": 1})])
        for _ in range(100):
            if counts.state == {"Deposited": 3, "Withdrawn": 1}:
                break
            await asyncio.sleep(0.02)
        app.stop()
        await asyncio.wait_for(running, 5)
        assert counts.state == {"Deposited": 3, "Withdrawn": 1}


async def test_fold_stream_now(app_url: str) -> None:
    balance: Evolver[int] = Evolver()

    @balance.on("Deposited")
    def deposited(state: int, event: RecordedEvent) -> int:
        return state + int(event.data["amount"])

    @balance.on("Withdrawn")
    def withdrawn(state: int, event: RecordedEvent) -> int:
        return state - int(event.data["amount"])

    async with Application(app_url, []) as app:
        await app.setup()
        await app.store.append("account", money(0, 2500))  # more than one page
        expected = sum(
            e.data["amount"] * (1 if e.type == "Deposited" else -1)
            for e in money(0, 2500)
            if e.type in ("Deposited", "Withdrawn")
        )
        assert await fold_stream(app.store, "account", 0, balance) == expected
        assert await fold_stream(app.store, "missing", 0, balance.functions) == 0


def test_projection_definitions_are_checked() -> None:
    with pytest.raises(Exception, match="invalid projection name"):
        Projection("Order Summaries")
    with pytest.raises(ConfigurationError, match="version must be an integer"):
        Projection("p", version=0)
    with pytest.raises(ConfigurationError, match="kind must be one of"):
        Projection("p", kind="eventually")
    with pytest.raises(Exception, match="invalid table name"):
        Projection("p", tables=["orders; DROP TABLE x"])
    projection = Projection("p")

    @projection.on("A")
    async def a(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        pass

    with pytest.raises(ConfigurationError, match="already has a handler for 'A'"):
        projection.on("A")(a)
    with pytest.raises(ConfigurationError, match="unique"):
        Application("memory://", [projection, Projection("p")])
    with pytest.raises(ConfigurationError, match="no projection named 'q'"):
        Application("memory://", [projection]).projection("q")
