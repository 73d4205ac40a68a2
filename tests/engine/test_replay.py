"""Partial replay (``Application.replay``) on memory, SQLite and PostgreSQL: checkpoints moved
back to a point and the events after it applied again, with ``tx.replaying`` set, over the
current rows of a replay-safe projection; refusals before anything is written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from projectionist import (
    START,
    Application,
    ConfigurationError,
    EventStore,
    HandlerError,
    InvalidInputError,
    Position,
    Projection,
    ProjectionVersionError,
    ReadModelTransaction,
    RecordedEvent,
    create_store,
)
from projectionist.importing import ImportedEvent
from projectionist.replay import Replay, UnitReplay, parse_point
from projectionist.search import SearchProjection
from projectionist.state import StateProjection
from projectionist.targets.redis import RedisProjection, RedisReadModelStore
from tests.conftest import settle
from tests.replay_app import balance_events, balances, counter, replayed, rows

ACCOUNTS = 4
ROUNDS = 6


async def appended(app: Application, rounds: range = range(ROUNDS)) -> list[RecordedEvent]:
    """Rounds of one append per account; the ``BalanceSet`` events, in order."""
    for round_ in rounds:
        for account in range(ACCOUNTS):
            await app.store.append(f"acct-{account}", balance_events(round_, account))
    await settle(app.store)
    return [e for e in await read_all(app) if e.type == "BalanceSet"]


async def read_all(app: Application) -> list[RecordedEvent]:
    return (await app.store.read_all(START, limit=10_000)).events


def expected_rows(rounds: int = ROUNDS) -> list[tuple[object, ...]]:
    last = rounds - 1
    return [(f"acct-{a}", 100 * last + a, 2 * last + 1) for a in range(ACCOUNTS)]


async def state(app: Application, name: str = "balances") -> tuple[object, ...]:
    async with app.read_models.transaction() as tx:
        return await rows(tx, name), await replayed(tx, name)


async def checkpoints(app: Application, projection: Projection) -> dict[str, Position | None]:
    stored = await app.read_models.checkpoints()
    return {u: stored[u].position if u in stored else None for u in projection.units}


async def leases_of(app: Application) -> list[tuple[object, ...]]:
    async with app.read_models.transaction() as tx:
        return await tx.fetch("SELECT unit, owner, token FROM projection_leases ORDER BY unit")


@pytest.mark.parametrize("partitions", [1, 2])
async def test_a_replay_from_a_position_applies_again_and_changes_no_row(
    app_url: str, partitions: int
) -> None:
    projection = balances(partitions=partitions)
    async with Application(app_url, [projection]) as app:
        await app.setup()
        events = await appended(app)
        await app.run_until_caught_up()
        before = await checkpoints(app, projection)
        assert await state(app) == (expected_rows(), set())

        point = events[9].position
        result = await app.replay("balances", point)

        again = {str(e.position) for e in events[10:]}
        assert await state(app) == (expected_rows(), again)  # the same rows; replaying seen
        assert await checkpoints(app, projection) == before  # back where it was: the head
        assert (result.projection, result.point, result.events) == ("balances", point, 14)
        assert result.replayed == projection.units
        assert [(u.unit, u.was, u.now, u.left_alone) for u in result.units] == [
            (unit, before[unit], before[unit], None) for unit in projection.units
        ]
        if partitions == 2:  # each unit reset and replayed: its share of the 14 events
            assert all(unit.events > 0 for unit in result.units)
        assert await leases_of(app) == [(unit, None, 1) for unit in projection.units]


async def test_a_unit_at_or_before_the_point_is_left_alone(app_url: str) -> None:
    projection = balances(partitions=2)
    async with Application(app_url, [projection]) as app:
        await app.setup()
        events = await appended(app)
        first, second = app.runners("balances")
        await first.run_until_caught_up()  # the second partition stays at the start
        head = await app.store.head()
        result = await app.replay("balances", events[12].position)
        unit_0, unit_1 = projection.units
        assert result.units[0] == UnitReplay(unit_0, head, head, result.units[0].events)
        assert result.units[0].events > 0
        assert result.units[1] == UnitReplay(
            unit_1, START, START, 0, f"its checkpoint {START} is at or before {events[12].position}"
        )
        assert await checkpoints(app, projection) == {unit_0: head, unit_1: START}

        # Every unit at or before the point: nothing to do, nothing written (no lease taken).
        await second.run_until_caught_up()
        untouched = await leases_of(app)
        nothing = await app.replay("balances", head)
        assert nothing.events == 0 and nothing.replayed == []
        assert [u.left_alone for u in nothing.units] == [
            f"its checkpoint {head} is at or before {head}"
        ] * 2
        assert await leases_of(app) == untouched


async def test_a_replay_from_a_timestamp_starts_at_the_first_event_recorded_at_or_after_it(
    app_url: str,
) -> None:
    """Imported events keep their own times, which need not grow with the position: the
    replay starts just before the first event in the order recorded at or after the time."""
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    seconds = [0, 10, 20, 50, 30, 60, 40, 70]  # 50 comes before 30 and 40 in the order
    imported = [
        ImportedEvent(
            f"acct-{n % 2}", n // 2 + 1, "BalanceSet", {"balance": n},
            recorded_at=t0 + timedelta(seconds=s),
        )
        for n, s in enumerate(seconds)
    ]  # fmt: skip
    projection = balances()
    async with Application(app_url, [projection]) as app:
        await app.setup()
        await app.store.import_events(imported)
        await settle(app.store)
        events = await read_all(app)
        await app.run_until_caught_up()
        head = await app.store.head()

        result = await app.replay("balances", t0 + timedelta(seconds=45))
        assert result.point == events[2].position  # 50 s is the first at or after 45 s
        assert (await state(app))[1] == {str(e.position) for e in events[3:]}  # 30 s and 40 s too
        assert result.units[0].now == head and result.events == 5

        # An exact hit starts at that event, given in any zone.
        moment = (t0 + timedelta(seconds=20)).astimezone(timezone(timedelta(hours=2)))
        assert (await app.replay("balances", moment)).point == events[1].position
        early = await app.replay("balances", t0 - timedelta(days=1))
        assert (early.point, early.events) == (START, 8)
        late = await app.replay("balances", t0 + timedelta(days=1))
        assert (late.point, late.events, late.replayed) == (head, 0, [])
        rows_now = await state(app)
        assert rows_now[0] == [("acct-0", 6, 4), ("acct-1", 7, 4)]


async def test_refusals_come_before_anything_is_written(app_url: str) -> None:
    class Reactor(Projection):
        replayable = False

    unsafe = counter()
    reactor = Reactor("mailer", replay_safe=True)
    reactor.on("BalanceSet")(_nothing)
    inline_projection = Projection("inline_view", kind="inline", replay_safe=True)
    inline_projection.on("BalanceSet")(_nothing)
    projections = [balances(), unsafe, reactor, inline_projection]
    async with Application(app_url, projections) as app:
        await app.setup()
        events = await appended(app, range(2))
        await app.run_until_caught_up()
        before = (await app.read_models.checkpoints(), await state(app), await leases_of(app))
        point = events[3].position
        refusals: list[tuple[str, object, type[Exception], str]] = [
            ("counter", point, ConfigurationError, "'counter' is not declared replay-safe: a "
             "partial replay applies events again over its current rows, which double-counts"),
            ("mailer", point, ConfigurationError, "'mailer' cannot be replayed: its handlers "
             "have effects outside the read model"),
            ("inline_view", point, ConfigurationError, "'inline_view' is inline: it is rebuilt, "
             "not replayed"),
            ("nope", point, ConfigurationError, "no projection named 'nope'"),
            ("balances", "0/3", InvalidInputError, "not str '0/3' \\(use parse_point"),
            ("balances", 3, InvalidInputError, "from a Position or an aware datetime, not int"),
            ("balances", Position(-1, 3), InvalidInputError, "must have integer parts from 0"),
            ("balances", Position(0, 2**63), InvalidInputError, "must have integer parts"),
            ("balances", datetime(2024, 5, 1), InvalidInputError, "has no timezone"),
        ]  # fmt: skip
        for name, where, error, message in refusals:
            with pytest.raises(error, match=message):
                await app.replay(name, where)  # type: ignore[arg-type]
        after = (await app.read_models.checkpoints(), await state(app), await leases_of(app))
        assert after == before


async def _nothing(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    pass


def test_a_replay_point_is_parsed_from_the_command_line_forms() -> None:
    assert parse_point("0/42") == Position(0, 42)
    assert parse_point(" 42 ") == Position(0, 42)
    assert parse_point("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_point("2024-05-01T14:00:00+02:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    for bad, message in [
        ("2024-05-01T12:00:00", "has no timezone"),
        ("2024-05-01", "has no timezone"),
        ("yesterday", "give a position .* or an ISO 8601 timestamp with a timezone"),
        ("-1/2", "give a position"),
        ("1/99999999999999999999", "parts must be below 2\\*\\*63"),
        ("", "give a position"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            parse_point(bad)


def test_every_kind_takes_replay_safe_and_it_is_off_by_default() -> None:
    kinds: list[Projection] = [
        Projection("p", replay_safe=True),
        StateProjection("p", table="t", initial=dict, replay_safe=True),
        SearchProjection("p", table="t", text={"a": "A"}, replay_safe=True),
        RedisProjection("p", RedisReadModelStore(), replay_safe=True),
    ]
    assert all(projection.replay_safe for projection in kinds)
    assert not Projection("p").replay_safe  # a claim the user makes, never assumed
    assert not StateProjection("p", table="t", initial=dict).replay_safe  # it folds again
    with pytest.raises(ConfigurationError, match="'p': replay_safe must be True or False"):
        Projection("p", replay_safe="yes")  # type: ignore[arg-type]


async def test_a_read_model_of_another_version_or_a_faulted_unit_is_refused(
    app_url: str,
) -> None:
    async with create_store(app_url) as store:  # shared: memory:// opens a new one each time
        await _refused_when_built_otherwise_or_faulted(store)


async def _refused_when_built_otherwise_or_faulted(store: EventStore) -> None:
    async with Application(store, [balances()]) as app:
        await app.setup()
        events = await appended(app, range(2))
        await app.run_until_caught_up()
    newer = balances()
    newer.version = 2
    async with Application(store, [newer]) as app:
        with pytest.raises(ProjectionVersionError, match="run 'projectionist rebuild balances'"):
            await app.replay("balances", events[2].position)
    repartitioned = balances(partitions=2)
    async with Application(store, [repartitioned]) as app:
        with pytest.raises(ProjectionVersionError, match="another version or partitioning"):
            await app.replay("balances", events[2].position)

    async with Application(store, [failing_balances()]) as app:
        await app.setup()
        async with app.read_models.transaction() as tx:
            await tx.execute("INSERT INTO broken VALUES ($1)", 301)
        await app.store.append("acct-1", balance_events(3, 1))
        await settle(app.store)
        with pytest.raises(HandlerError, match="balance 301 is broken"):
            await app.runner("failing").run_until_caught_up()
        with pytest.raises(InvalidInputError, match=r"'failing' is faulted at .* before a replay"):
            await app.replay("failing", events[2].position)


def failing_balances(name: str = "failing", on_error: str = "stop") -> Projection:
    """Balances, but a balance listed in the table ``broken`` fails its handler."""
    projection = Projection(name, tables=[name], replay_safe=True, on_error=on_error)

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS broken (n BIGINT PRIMARY KEY)")
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {name} (account TEXT PRIMARY KEY, balance BIGINT)"
        )

    @projection.on("BalanceSet")
    async def balance_set(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        if await tx.fetchval("SELECT count(*) FROM broken WHERE n = $1", event.data["balance"]):
            raise ValueError(f"balance {event.data['balance']} is broken")
        await tx.execute(
            f"INSERT INTO {name} VALUES ($1, $2) ON CONFLICT (account) DO UPDATE "
            "SET balance = excluded.balance",
            event.stream_id, event.data["balance"],
        )  # fmt: skip

    return projection


async def test_dead_letters_in_the_range_stay(app_url: str) -> None:
    """A dead letter is not touched by a replay: its event, applied again (fixed meanwhile),
    lands in the rows, and the letter stays for the operator to discard or retry."""
    projection = failing_balances("lenient", on_error="skip")
    async with Application(app_url, [projection]) as app:
        await app.setup()
        async with app.read_models.transaction() as tx:
            await tx.execute("INSERT INTO broken VALUES ($1)", 101)
        events = await appended(app, range(2))
        await app.run_until_caught_up()
        [letter] = await app.dead_letters("lenient")
        assert letter.event.position == events[5].position
        async with app.read_models.transaction() as tx:
            await tx.execute("DELETE FROM broken")
        result = await app.replay("lenient", START)
        assert result.events == 8
        assert [x.id for x in await app.dead_letters("lenient")] == [letter.id]
        async with app.read_models.transaction() as tx:
            assert await tx.fetchval("SELECT balance FROM lenient WHERE account = 'acct-1'") == 101


async def test_a_failure_during_the_replay_faults_the_unit_as_a_run_does(app_url: str) -> None:
    async with Application(app_url, [failing_balances()]) as app:
        await app.setup()
        events = await appended(app, range(3))
        await app.run_until_caught_up()
        head = await app.store.head()
        async with app.read_models.transaction() as tx:
            await tx.execute("INSERT INTO broken VALUES ($1)", 101)  # a bug met only again
        with pytest.raises(HandlerError, match="balance 101 is broken"):
            await app.replay("failing", events[2].position)
        [fault] = await app.faults("failing")
        assert fault.position == events[5].position
        checkpoint = await app.read_models.checkpoint("failing")
        assert checkpoint is not None and checkpoint.position == events[4].position
        assert await leases_of(app) == [("failing", None, 1)]  # handed back all the same
        async with app.read_models.transaction() as tx:
            await tx.execute("DELETE FROM broken")
        assert await app.restart("failing") == 1
        await app.run_until_caught_up()
        assert (await app.read_models.checkpoint("failing")).position == head  # type: ignore[union-attr]


def test_a_replay_result_says_what_it_did() -> None:
    result = Replay(
        "p",
        Position(0, 3),
        [
            UnitReplay("p#0/2", Position(0, 9), Position(0, 9), 4),
            UnitReplay("p#1/2", None, None, 0, "it has no checkpoint yet (never run)"),
        ],
    )
    assert result.as_dict() == {
        "projection": "p",
        "point": "0/3",
        "events": 4,
        "units": [
            {"unit": "p#0/2", "was": "0/9", "now": "0/9", "events": 4, "left_alone": None},
            {
                "unit": "p#1/2",
                "was": None,
                "now": None,
                "events": 0,
                "left_alone": "it has no checkpoint yet (never run)",
            },
        ],
    }
    assert result.replayed == ["p#0/2"]
