"""The kit's check of a replay-safe claim (``testing.assert_replay_safe``): it passes on a
projection of absolute values and fails, naming the point and the rows, on a running
counter; the engine's own partial replay is what it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from examples.shop.history import generate_orders
from examples.shop.projections import order_summaries

from projectionist import (
    START,
    ConfigurationError,
    Projection,
    ReadModelTransaction,
    RecordedEvent,
    State,
    StateProjection,
    create_store,
)
from projectionist.testing import assert_replay_safe, project
from tests.replay_app import balance_events, balances, counter, replayed, rows

HISTORY = [(f"acct-{a}", balance_events(r, a)) for r in range(5) for a in range(3)]
BALANCES = "SELECT account, balance, version FROM balances ORDER BY account"


@pytest.mark.parametrize("partitions", [1, 2])
async def test_a_projection_of_absolute_values_passes(partitions: int) -> None:
    result = await assert_replay_safe(balances(partitions=partitions), HISTORY, BALANCES)
    assert result == [(f"acct-{a}", 400 + a, 9) for a in range(3)]
    assert result == await project(balances(), HISTORY, BALANCES)


async def test_it_runs_the_engine_replay_and_a_query_function(tmp_path: Path) -> None:
    """On a SQLite file, with a query function: the replayed positions show that each of the
    three points replayed (tx.replaying set): the first replays everything."""
    seen: list[set[str]] = []

    async def query(tx: ReadModelTransaction) -> object:
        seen.append(await replayed(tx))
        return await rows(tx)

    url = f"sqlite:///{tmp_path / 'kit.db'}"
    await assert_replay_safe(balances(), HISTORY, query, url=url)
    async with create_store(url) as store:
        handled = [e for e in (await store.read_all(START)).events if e.type == "BalanceSet"]
    everything = {str(event.position) for event in handled}
    assert seen == [set(), everything, everything, everything]  # clean run, then 3 replays


async def test_a_running_counter_fails_naming_the_point() -> None:
    with pytest.raises(AssertionError) as failed:
        await assert_replay_safe(counter(claims=True), HISTORY, "SELECT * FROM counter")
    message = str(failed.value)
    assert message.startswith(
        "projection 'counter' is not replay-safe: replayed from handled event 1 of 15 "
        f"(after position {START}) the read model is"
    )
    assert "rows only after the replay: [('acct-0', 10), ('acct-1', 10), ('acct-2', 10)]" in (
        message
    )
    assert "rows only in the clean run: [('acct-0', 5), ('acct-1', 5), ('acct-2', 5)]" in message


async def test_a_running_total_state_projection_fails_at_the_last_event() -> None:
    """A state projection folds the events again over the current row: not replay-safe by
    construction. This one is caught even by the smallest replay, of the last event alone
    (the first point already double-counts; the message names the first failing point)."""
    totals = StateProjection(
        "totals", table="totals", initial=lambda: {"total": 0}, columns={"total": "BIGINT"}
    )

    @totals.evolve("BalanceSet")
    def added(state: State, event: RecordedEvent) -> State:
        return {"total": state["total"] + event.data["balance"]}

    with pytest.raises(AssertionError, match="replayed from handled event 1 of 15"):
        await assert_replay_safe(totals, HISTORY, "SELECT * FROM totals ORDER BY key")


async def test_a_shop_state_projection_of_absolute_values_passes() -> None:
    history = [(append.stream_id, append.events) for append in generate_orders(20)]
    query = "SELECT * FROM order_summary ORDER BY order_id"
    assert await assert_replay_safe(order_summaries, history, query)


async def test_the_kit_refuses_what_cannot_be_replayed_at_all() -> None:
    class Reactor(Projection):
        replayable = False

    reactor = Reactor("mailer")
    inline = Projection("inline_view", kind="inline")
    for projection, message in [(reactor, "cannot be replayed"), (inline, "is inline")]:

        @projection.on("BalanceSet")
        async def nothing(event: RecordedEvent, tx: ReadModelTransaction) -> None:
            pass

        with pytest.raises(ConfigurationError, match=message):
            await assert_replay_safe(projection, HISTORY, "SELECT 1")
