"""Error policies on every backend: a poison event is isolated from its batch, retried, then
dead-lettered (``on_error="skip"``) or recorded as a fault that stops only its projection
(``on_error="stop"``); dead letters are retried or discarded; a transient failure is never
mistaken for a poison event."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from projectionist import Application, NewEvent, Projection, ReadModelTransaction, RecordedEvent
from projectionist.errors import (
    ConfigurationError,
    HandlerError,
    InvalidInputError,
    StoreUnavailableError,
)
from projectionist.events import Position
from projectionist.partitions import partition_of
from projectionist.transient import is_transient
from tests.conftest import PG_DSN, settle
from tests.engine.projections import ledger, money
from tests.faults.test_transient_failures import _kill


@dataclass
class Flaky:
    """What the handler does: events whose number is ``broken`` fail (``failures`` more
    times, or always when None); ``calls`` counts every call per event number."""

    broken: set[int] = field(default_factory=set)
    failures: int | None = None
    calls: Counter[int] = field(default_factory=Counter)
    pause_on: int | None = None
    """Sleep in the first call for this event (the transaction open) and set ``paused``."""
    paused: asyncio.Event = field(default_factory=asyncio.Event)

    def fix(self) -> None:
        self.broken.clear()


def book(
    flaky: Flaky,
    *,
    name: str = "book",
    on_error: str = "skip",
    retries: int = 0,
    partitions: int = 1,
) -> Projection:
    """Numbered ``Posted`` events: one row per event (a PRIMARY KEY on the number makes a
    double delivery fail) and a per-stream counter (not idempotent: shows one too)."""
    projection = Projection(
        name,
        tables=[f"{name}_seen", f"{name}_totals"],
        on_error=on_error,
        retries=retries,
        partitions=partitions,
    )

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {name}_seen (n BIGINT PRIMARY KEY, "
            "stream_id TEXT NOT NULL, version BIGINT NOT NULL)"
        )
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {name}_totals (stream_id TEXT PRIMARY KEY, "
            "events BIGINT NOT NULL)"
        )

    @projection.on("Posted")
    async def posted(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        n = event.data["n"]
        flaky.calls[n] += 1
        if n == flaky.pause_on and flaky.calls[n] == 1:
            flaky.paused.set()
            await asyncio.sleep(1.0)
        if n in flaky.broken and (flaky.failures is None or flaky.failures > 0):
            if flaky.failures is not None:
                flaky.failures -= 1
            raise ValueError(f"poison event {n}")
        await tx.execute(
            f"INSERT INTO {name}_seen VALUES ($1, $2, $3)", n, event.stream_id, event.version
        )
        await tx.execute(
            f"INSERT INTO {name}_totals VALUES ($1, 1) ON CONFLICT (stream_id) DO UPDATE "
            f"SET events = {name}_totals.events + 1",
            event.stream_id,
        )

    return projection


def posted(numbers: Iterable[int]) -> list[NewEvent]:
    return [NewEvent("Posted", {"n": n}) for n in numbers]


async def book_rows(app: Application, name: str = "book") -> tuple[list[int], list[Any]]:
    async with app.read_models.transaction() as tx:
        seen = await tx.fetch(f"SELECT n FROM {name}_seen ORDER BY n")
        totals = await tx.fetch(f"SELECT stream_id, events FROM {name}_totals ORDER BY stream_id")
    return [int(row[0]) for row in seen], [(row[0], int(row[1])) for row in totals]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def checkpoint_of(app: Application, name: str) -> tuple[Position, int]:
    checkpoint = await app.read_models.checkpoint(name)
    assert checkpoint is not None
    return checkpoint.position, checkpoint.events_processed


# -- skip ---------------------------------------------------------------------------------


async def test_skip_dead_letters_the_poison_event_and_applies_the_rest_once(
    app_url: str,
) -> None:
    flaky = Flaky(broken={4})
    async with Application(app_url, [book(flaky)]) as app:
        await app.setup()
        appended = await app.store.append("acct-1", posted(range(10)))
        await app.run_until_caught_up()

        assert await book_rows(app) == ([0, 1, 2, 3, 5, 6, 7, 8, 9], [("acct-1", 9)])
        # The batch failed on 4 (0-3 rolled back), then the stretch went one event at a time.
        assert flaky.calls == Counter({0: 2, 1: 2, 2: 2, 3: 2, 4: 2, 5: 1, 6: 1, 7: 1, 8: 1, 9: 1})
        assert await checkpoint_of(app, "book") == (await app.store.head(), 10)

        [letter] = await app.dead_letters("book")
        poison = appended.events[4]
        assert letter.event == poison
        assert (letter.event.stream_id, letter.event.version, letter.event.type) == (
            "acct-1",
            5,
            "Posted",
        )
        assert (letter.projection, letter.unit, letter.version) == ("book", "book", 1)
        assert letter.error == "ValueError: poison event 4"
        assert "ValueError: poison event 4" in letter.traceback
        assert "in posted" in letter.traceback  # the handler's own frame
        assert letter.attempts == 1
        assert await app.dead_letters() == [letter]

        [status] = await app.status()
        assert (status.dead_letters, status.fault, status.lag) == (1, None, 0)
        assert status.events_processed == 10 and status.state == "stopped"

        # Past the stretch, batches are whole again: each new event is called once.
        await app.store.append("acct-2", posted(range(10, 15)))
        await app.run_until_caught_up()
        assert all(flaky.calls[n] == 1 for n in range(10, 15))
        seen, totals = await book_rows(app)
        assert seen == [0, 1, 2, 3, *range(5, 15)] and totals == [("acct-1", 9), ("acct-2", 5)]
        assert await checkpoint_of(app, "book") == (await app.store.head(), 15)


async def test_retries_let_a_flaky_event_through(app_url: str) -> None:
    flaky = Flaky(broken={3}, failures=2)
    async with Application(app_url, [book(flaky, retries=2)]) as app:
        await app.setup()
        await app.store.append("acct-1", posted(range(3)))
        await app.run_until_caught_up()
        await app.store.append("acct-1", posted([3]))  # alone in its batch
        await app.run_until_caught_up()

        assert flaky.calls[3] == 3  # failed twice, then went through
        assert await book_rows(app) == ([0, 1, 2, 3], [("acct-1", 4)])
        assert await app.dead_letters() == []
        assert await checkpoint_of(app, "book") == (await app.store.head(), 4)
        assert app.runner("book").errors == 2


async def test_retries_then_skip(app_url: str) -> None:
    flaky = Flaky(broken={3, 7})
    async with Application(app_url, [book(flaky, retries=2)]) as app:
        await app.setup()
        await app.store.append("acct-1", posted(range(3)))
        await app.run_until_caught_up()
        await app.store.append("acct-1", posted([3]))  # alone: 1 try + 2 retries
        await app.run_until_caught_up()
        assert flaky.calls[3] == 3
        await app.store.append("acct-2", posted(range(4, 10)))  # 7 in a batch: +1 try
        await app.run_until_caught_up()
        assert flaky.calls[7] == 4

        assert await book_rows(app) == ([0, 1, 2, 4, 5, 6, 8, 9], [("acct-1", 3), ("acct-2", 5)])
        letters = await app.dead_letters("book")
        assert [(d.event.data["n"], d.attempts, d.error) for d in letters] == [
            (3, 3, "ValueError: poison event 3"),
            (7, 3, "ValueError: poison event 7"),
        ]
        assert await checkpoint_of(app, "book") == (await app.store.head(), 10)
        [status] = await app.status()
        assert status.dead_letters == 2


# -- stop ---------------------------------------------------------------------------------


async def test_stop_faults_only_its_projection_and_restart_resumes_it(app_url: str) -> None:
    flaky = Flaky(broken={3})
    projections = [book(flaky, on_error="stop"), ledger("healthy")]
    async with Application(app_url, projections, poll_interval=0.1) as app:
        await app.setup()
        appended = await app.store.append("acct-1", posted(range(6)))
        await app.store.append("h-1", money(0, 5))
        running = asyncio.create_task(app.run(lease_seconds=1.0, heartbeat_seconds=0.2))
        try:

            async def book_faulted() -> bool:
                status = {s.name: s for s in await app.status()}["book"]
                return status.state == "faulted" and status.owner is not None

            await eventually(book_faulted)
            statuses = {s.name: s for s in await app.status()}
            fault = statuses["book"].fault
            assert fault is not None
            poison = appended.events[3]
            assert (fault.unit, fault.projection, fault.version) == ("book", "book", 1)
            assert (fault.position, fault.stream_id, fault.stream_version) == (
                poison.position,
                "acct-1",
                4,
            )
            assert (fault.event_type, fault.attempts) == ("Posted", 1)
            assert fault.error == "ValueError: poison event 3"
            assert "ValueError: poison event 3" in fault.traceback
            assert await book_rows(app) == ([0, 1, 2], [("acct-1", 3)])
            assert (await checkpoint_of(app, "book"))[0] == appended.events[2].position
            assert await app.dead_letters() == []  # stop never dead-letters

            # The healthy projection goes on, with appends made after the fault.
            await app.store.append("acct-1", posted(range(6, 8)))
            later = await app.store.append("h-2", money(1, 5))
            await settle(app.store)
            await app.wait_for("healthy", later.position, timeout=10)
            async with app.read_models.transaction() as tx:
                seen = await tx.fetch("SELECT event_id FROM healthy_seen")
                totals = await tx.fetch("SELECT stream_id, events FROM healthy_totals ORDER BY 1")
            assert len(seen) == 8 and totals == [("h-1", 3), ("h-2", 3)]
            calls = flaky.calls[3]
            await asyncio.sleep(0.6)  # heartbeats pass: a faulted unit is not retried
            assert flaky.calls[3] == calls
            assert {s.name: s.state for s in await app.status()}["book"] == "faulted"

            # Fixed, restarted: the worker resumes it at the event that stopped it.
            flaky.fix()
            assert await app.restart("book") == 1
            await app.wait_for("book", await app.store.head(), timeout=10)
            assert await book_rows(app) == (list(range(8)), [("acct-1", 8)])

            async def book_resumed() -> bool:
                # The state is what its owner reported at its last heartbeat (0.2 s).
                status = {s.name: s for s in await app.status()}["book"]
                return status.state in ("live", "catching up")

            await eventually(book_resumed, timeout=5)
            statuses = {s.name: s for s in await app.status()}
            assert statuses["book"].fault is None
            assert statuses["book"].lag == 0 and statuses["book"].events_processed == 8
            assert await app.restart("book") == 0
            with pytest.raises(ConfigurationError, match="no projection named 'nope'"):
                await app.restart("nope")
        finally:
            app.stop()
            await asyncio.wait_for(running, 10)


async def test_stop_without_a_worker_raises_and_records_the_fault(app_url: str) -> None:
    flaky = Flaky(broken={2})
    async with Application(app_url, [book(flaky, on_error="stop", retries=1)]) as app:
        await app.setup()
        appended = await app.store.append("acct-1", posted(range(5)))
        with pytest.raises(HandlerError, match="poison event 2"):
            await app.run_until_caught_up()
        assert flaky.calls[2] == 3  # in the batch, then alone: 1 try + 1 retry
        [status] = await app.status()
        assert status.state == "faulted" and status.fault is not None
        assert status.fault.position == appended.events[2].position
        assert status.fault.attempts == 2
        assert await book_rows(app) == ([0, 1], [("acct-1", 2)])

        # Committing past the event clears the fault (here: a fixed handler, run again).
        flaky.fix()
        await app.run_until_caught_up()
        [status] = await app.status()
        assert status.fault is None and status.state == "stopped" and status.lag == 0
        assert await book_rows(app) == ([0, 1, 2, 3, 4], [("acct-1", 5)])


# -- dead letters -------------------------------------------------------------------------


async def test_retry_and_discard_dead_letters(app_url: str) -> None:
    flaky = Flaky(broken={2, 5, 7})
    async with Application(app_url, [book(flaky)]) as app:
        await app.setup()
        await app.store.append("acct-1", posted(range(10)))
        await app.run_until_caught_up()
        letters = await app.dead_letters("book")
        ids = {letter.event.data["n"]: letter.id for letter in letters}
        assert sorted(ids) == [2, 5, 7]

        flaky.broken.discard(2)  # a fix for event 2 only
        assert await app.retry_dead_letters([ids[2], ids[5]]) == [
            (ids[2], None),
            (ids[5], "ValueError: poison event 5"),
        ]
        assert await book_rows(app) == ([0, 1, 2, 3, 4, 6, 8, 9], [("acct-1", 8)])
        remaining = await app.dead_letters()
        assert [letter.id for letter in remaining] == [ids[5], ids[7]]
        assert remaining[0] == letters[1]  # the failed retry leaves the letter as it was
        with pytest.raises(InvalidInputError, match=f"no dead letter {ids[2]}"):
            await app.retry_dead_letters([ids[2]])  # gone: it cannot be applied twice
        assert await book_rows(app) == ([0, 1, 2, 3, 4, 6, 8, 9], [("acct-1", 8)])

        assert await app.discard_dead_letters([ids[7]]) == 1
        assert [letter.id for letter in await app.dead_letters()] == [ids[5]]
        with pytest.raises(InvalidInputError, match="no dead letter 999999"):
            await app.discard_dead_letters([ids[5], 999999])
        assert [letter.id for letter in await app.dead_letters()] == [ids[5]]  # all or nothing
        with pytest.raises(ConfigurationError, match="no projection named 'nope'"):
            await app.dead_letters("nope")
        [status] = await app.status()
        assert status.dead_letters == 1
        assert await book_rows(app) == ([0, 1, 2, 3, 4, 6, 8, 9], [("acct-1", 8)])


# -- transient failures -------------------------------------------------------------------


async def test_killed_connection_mid_batch_is_retried_not_dead_lettered(
    pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="projectionist")
    victim = f"victim_{pg_schema}"
    flaky = Flaky(pause_on=5)
    url = f"{PG_DSN}?schema={pg_schema}"
    # The kill takes every connection of the worker's pool, idle ones too: the test reads
    # and writes through an application of its own.
    async with (
        Application(url, [book(flaky)]) as app,
        Application(f"{url}&application_name={victim}", [book(flaky)], poll_interval=0.1) as worker,
    ):
        await app.setup()
        await app.store.append("acct-1", posted(range(10)))
        running = asyncio.create_task(worker.run(lease_seconds=2.0, heartbeat_seconds=0.5))
        try:
            await asyncio.wait_for(flaky.paused.wait(), 10)
            assert await _kill(victim) >= 1  # the batch's connection among them
            await app.wait_for("book", await app.store.head(), timeout=20)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 10)

        assert await book_rows(app) == (list(range(10)), [("acct-1", 10)])
        assert await app.dead_letters() == []
        assert await checkpoint_of(app, "book") == (await app.store.head(), 10)
        assert flaky.calls[5] == 2  # the killed batch, then the whole batch again
        actions = [getattr(record, "action", None) for record in caplog.records]
        assert "transient_retry" in actions
        assert "dead_lettered" not in actions and "handler_error_isolating" not in actions


async def test_a_faulted_projection_stays_stopped_on_another_worker(app_url: str) -> None:
    """The fault is in the database, not in the worker that met it: a worker that takes the
    projection over (a restarted process, a rebalance) leaves it stopped until a restart."""
    flaky = Flaky(broken={2})
    async with Application(app_url, [book(flaky, on_error="stop")], poll_interval=0.1) as app:
        await app.setup()
        await app.store.append("acct-1", posted(range(5)))

        async def faulted_and_owned() -> bool:
            [status] = await app.status()
            return status.state == "faulted" and status.owner is not None

        for worker_id in ("first", "second"):
            running = asyncio.create_task(
                app.run(worker_id=worker_id, lease_seconds=1.0, heartbeat_seconds=0.2)
            )
            try:
                await eventually(faulted_and_owned)
                [status] = await app.status()
                assert status.owner == worker_id
                await asyncio.sleep(0.6)  # a few heartbeats
            finally:
                app.stop()
                await asyncio.wait_for(running, 10)
        assert flaky.calls[2] == 2  # the batch, then alone; never again on "second"
        assert await book_rows(app) == ([0, 1], [("acct-1", 2)])
        [status] = await app.status()
        assert status.fault is not None and status.fault.attempts == 1


async def test_policies_per_partition(app_url: str) -> None:
    """A poison event stops (or dead-letters in) only its own partition."""
    streams = [f"acct-{i}" for i in range(6)]
    sick = streams[0]
    sick_part = partition_of(sick, 2)
    assert {partition_of(s, 2) for s in streams} == {0, 1}  # both partitions get events
    # Event 1 is the second event of the sick stream.
    skipping, stopping = Flaky(broken={1}), Flaky(broken={1})
    projections = [
        book(skipping, name="lenient", partitions=2),
        book(stopping, name="strict", on_error="stop", partitions=2),
    ]
    async with Application(app_url, projections, poll_interval=0.1) as app:
        await app.setup()
        for index, stream in enumerate(streams):
            await app.store.append(stream, posted(range(index * 10, index * 10 + 3)))
        running = asyncio.create_task(app.run(lease_seconds=1.0, heartbeat_seconds=0.2))
        try:
            await app.wait_for("lenient", await app.store.head(), timeout=10)

            async def strict_faulted() -> bool:
                states = {(s.name, s.partition): s.state for s in await app.status()}
                return states[("strict", f"{sick_part}/2")] == "faulted" and (
                    states[("strict", f"{1 - sick_part}/2")] == "live"
                )

            await eventually(strict_faulted)
            statuses = {(s.name, s.partition): s for s in await app.status()}
            [letter] = await app.dead_letters("lenient")
            assert letter.unit == f"lenient#{sick_part}/2" and letter.projection == "lenient"
            assert letter.event.stream_id == sick and letter.event.data["n"] == 1
            assert statuses[("lenient", f"{sick_part}/2")].dead_letters == 1
            assert statuses[("lenient", f"{1 - sick_part}/2")].dead_letters == 0
            fault = statuses[("strict", f"{sick_part}/2")].fault
            assert fault is not None and fault.unit == f"strict#{sick_part}/2"
            assert fault.projection == "strict" and fault.stream_id == sick
            assert statuses[("strict", f"{1 - sick_part}/2")].fault is None
            everything = [n for i in range(6) for n in range(i * 10, i * 10 + 3)]
            assert (await book_rows(app, "lenient"))[0] == [n for n in everything if n != 1]
            assert (await book_rows(app, "strict"))[0] == [
                n for n in everything if partition_of(streams[n // 10], 2) != sick_part or n < 1
            ]

            stopping.fix()
            assert await app.restart("strict") == 1
            await app.wait_for("strict", await app.store.head(), timeout=10)
            assert (await book_rows(app, "strict"))[0] == everything
            assert all(s.fault is None for s in await app.status())
        finally:
            app.stop()
            await asyncio.wait_for(running, 10)


# -- dead letters and rebuilds, verify ----------------------------------------------------------


async def test_verify_and_rebuild_leave_no_stale_dead_letters(app_url: str) -> None:
    flaky = Flaky(broken={2})
    async with Application(app_url, [book(flaky)]) as app:
        await app.setup()
        await app.store.append("acct-1", posted(range(5)))
        await app.run_until_caught_up()
        assert [letter.event.data["n"] for letter in await app.dead_letters("book")] == [2]
        # Verifying replays the poison event in scratch space: no second letter, no fault.
        result = await app.verify("book")
        assert result.ok, result.differences
        assert len(await app.dead_letters("book")) == 1
        [status] = await app.status()
        assert status.fault is None and status.dead_letters == 1
        # After a fix, a rebuild replays the event: its letter is moot and goes, so a retry
        # can never apply it a second time.
        flaky.fix()
        await app.rebuild("book")
        assert await app.dead_letters("book") == []
        assert await book_rows(app) == ([0, 1, 2, 3, 4], [("acct-1", 5)])


# -- a handler's own OSError is a handler failure, not a transient one ------------------------


def raising(name: str, on_error: str, error: type[OSError]) -> Projection:
    """A projection whose handler fails on event 2 with ``error`` (a handler calling a
    service that is down), every time."""
    projection = Projection(name, tables=[f"{name}_seen"], on_error=on_error, retries=1)

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(f"CREATE TABLE IF NOT EXISTS {name}_seen (n BIGINT PRIMARY KEY)")

    @projection.on("Posted")
    async def posted(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        if event.data["n"] == 2:
            raise error("the pricing service is down")
        await tx.execute(f"INSERT INTO {name}_seen VALUES ($1)", event.data["n"])

    return projection


@pytest.mark.parametrize("error", [ConnectionError, ConnectionRefusedError, OSError, TimeoutError])
async def test_a_handler_raising_an_os_error_is_dead_lettered_or_faulted(
    app_url: str, error: type[OSError]
) -> None:
    """Transient means the store's or the target's connection failed; an OSError the handler
    raised itself is its failure: retried ``retries`` times, then skipped or stopped on."""
    projections = [raising("lenient", "skip", error), raising("strict", "stop", error)]
    async with Application(app_url, projections, poll_interval=0.1) as app:
        await app.setup()
        appended = await app.store.append("acct-1", posted(range(5)))
        running = asyncio.create_task(app.run(lease_seconds=1.0, heartbeat_seconds=0.2))
        try:

            async def settled() -> bool:
                states = {s.name: s for s in await app.status()}
                return states["strict"].state == "faulted" and states["lenient"].lag == 0

            await eventually(settled)
        finally:
            app.stop()
            await asyncio.wait_for(running, 10)
        expected = f"{error.__name__}: the pricing service is down"
        [letter] = await app.dead_letters("lenient")
        assert (letter.event, letter.error, letter.attempts) == (appended.events[2], expected, 2)
        [strict] = [s for s in await app.status() if s.name == "strict"]
        assert strict.fault is not None and strict.fault.error == expected
        assert strict.fault.position == appended.events[2].position
        async with app.read_models.transaction() as tx:
            seen = {
                name: [int(r[0]) for r in await tx.fetch(f"SELECT n FROM {name}_seen ORDER BY n")]
                for name in ("lenient", "strict")
            }
        assert seen == {"lenient": [0, 1, 3, 4], "strict": [0, 1]}


def test_what_is_transient_under_a_handler_error() -> None:
    """Under a HandlerError only the backends' own errors count (a lost read-model
    connection, a serialization failure); a built-in OSError the handler raised does not.
    Outside a handler a raw ConnectionError or TimeoutError still does."""
    for own in (ConnectionError("down"), TimeoutError("slow"), OSError("no route")):
        wrapped = HandlerError("p", None, "failed")
        wrapped.__cause__ = own
        assert not is_transient(wrapped), own
    lost = HandlerError("p", None, "failed")
    lost.__cause__ = StoreUnavailableError("lost the read model's connection")
    lost.__cause__.__cause__ = ConnectionResetError("reset")
    assert is_transient(lost)
    conflict = HandlerError("p", None, "failed")
    conflict.__cause__ = type("Driver", (Exception,), {"sqlstate": "40001"})()
    assert is_transient(conflict)
    assert is_transient(ConnectionError("the store's socket"))
    assert is_transient(TimeoutError("the store's pool"))
    rollback_failed = StoreUnavailableError("rollback failed")
    rollback_failed.__context__ = wrapped
    assert is_transient(rollback_failed)


async def test_dead_letters_are_those_of_the_applications_own_projections(app_url: str) -> None:
    """Two applications with different projections on one database: each sees, retries and
    discards only its own projections' dead letters."""
    flaky = Flaky(broken={1})
    async with Application(app_url, [book(flaky, name="mine")]) as mine:
        await mine.setup()
        async with Application(mine.store, [book(flaky, name="theirs")]) as theirs:
            await theirs.setup()
            await mine.store.append("acct-1", posted(range(3)))
            await mine.run_until_caught_up()
            await theirs.run_until_caught_up()
            [own] = await mine.dead_letters()
            [other] = await theirs.dead_letters()
            assert (own.projection, other.projection) == ("mine", "theirs")
            assert await mine.dead_letters("mine") == [own]
            for verb in (mine.retry_dead_letters, mine.discard_dead_letters):
                with pytest.raises(InvalidInputError, match=f"no dead letter {other.id} of"):
                    await verb([other.id])
            assert await theirs.dead_letters() == [other]  # untouched
            assert await mine.discard_dead_letters([own.id]) == 1
            assert (await mine.dead_letters(), await theirs.dead_letters()) == ([], [other])


# -- faults: shown, and skipped past --------------------------------------------------------


async def test_skip_fault_moves_the_event_to_the_dead_letters_and_the_worker_resumes(
    app_url: str,
) -> None:
    """Under on_error="stop", a poison event that cannot be fixed is skipped on purpose:
    it becomes a dead letter, the checkpoint moves past it, the owning worker resumes."""
    flaky = Flaky(broken={3})
    projections = [book(flaky, on_error="stop", partitions=2), ledger("healthy")]
    async with Application(app_url, projections, poll_interval=0.1) as app:
        await app.setup()
        appended = await app.store.append("acct-1", posted(range(6)))
        running = asyncio.create_task(app.run(lease_seconds=1.0, heartbeat_seconds=0.2))
        try:

            async def book_faulted() -> bool:
                return any(s.state == "faulted" and s.owner for s in await app.status())

            await eventually(book_faulted)
            [fault] = await app.faults()
            assert await app.faults("book") == [fault] and await app.faults("healthy") == []
            assert fault.unit == f"book#{partition_of('acct-1', 2)}/2"
            assert (fault.position, fault.error) == (
                appended.events[3].position,
                "ValueError: poison event 3",
            )
            assert "in posted" in fault.traceback
            with pytest.raises(InvalidInputError, match="'healthy' is not faulted"):
                await app.skip_fault("healthy")

            assert await app.skip_fault("book") == [fault]
            await app.wait_for("book", appended.position, timeout=10)
            assert (await book_rows(app))[0] == [0, 1, 2, 4, 5]
            [letter] = await app.dead_letters("book")
            assert (letter.event, letter.unit, letter.error) == (
                appended.events[3],
                fault.unit,
                fault.error,
            )
            assert letter.traceback == fault.traceback and letter.attempts == fault.attempts
            assert await app.faults() == []

            async def book_resumed() -> bool:
                return all(s.state == "live" for s in await app.status() if s.name == "book")

            await eventually(book_resumed)
            more = await app.store.append("acct-1", posted([6]))
            await app.wait_for("book", more.position, timeout=10)
            assert (await book_rows(app))[0] == [0, 1, 2, 4, 5, 6]
        finally:
            app.stop()
            await asyncio.wait_for(running, 10)
        with pytest.raises(ConfigurationError, match="no projection named 'nope'"):
            await app.skip_fault("nope")


async def test_a_stale_fault_is_not_skipped(app_url: str) -> None:
    """A fault whose unit has moved on (run again past it, without the worker) is refused,
    not skipped blindly: skipping moves a checkpoint by exactly the faulted event."""
    flaky = Flaky(broken={2})
    async with Application(app_url, [book(flaky, on_error="stop")]) as app:
        await app.setup()
        await app.store.append("acct-1", posted(range(4)))
        with pytest.raises(HandlerError):
            await app.run_until_caught_up()
        [fault] = await app.faults()
        async with app.read_models.transaction() as tx:  # someone moved it by hand
            stored = await tx.load_checkpoint("book", lock=True)
            assert stored is not None
            await tx.save_checkpoint("book", 1, stored.position, fault.position, 1)
        with pytest.raises(InvalidInputError, match="moved on"):
            await app.skip_fault("book")
        assert await app.faults() == [fault] and await app.dead_letters() == []


async def test_a_rebuild_takes_the_units_from_the_worker_that_owns_them(
    app_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The fault that a rebuild clears would let the owning worker resume the unit under
    the replay: the rebuild holds the units' leases instead (the worker's batches are fenced
    out), then hands them back; no checkpoint conflicts on either side."""
    caplog.set_level(logging.INFO, logger="projectionist")
    # The replay pauses at 300 (which the worker never reached) for a second: the worker
    # has time to see the fault cleared and, were it not fenced out, to resume under it.
    flaky = Flaky(broken={3}, pause_on=300)
    projection = book(flaky, on_error="stop")
    async with Application(app_url, [projection], poll_interval=0.1) as app:
        await app.setup()
        await app.store.append("acct-1", posted(range(600)))
        # 2 s: the worker's idle-transaction limit (on PostgreSQL) is above the pause.
        running = asyncio.create_task(app.run(lease_seconds=2.0, heartbeat_seconds=0.2))
        try:

            async def faulted() -> bool:
                return any(s.state == "faulted" for s in await app.status())

            await eventually(faulted)
            flaky.fix()
            async with Application(app.store, [projection]) as operator:
                assert await operator.rebuild("book") == 600
            await app.wait_for("book", await app.store.head(), timeout=10)

            async def owned_again() -> bool:
                return all(s.owner and s.state == "live" for s in await app.status())

            await eventually(owned_again)
        finally:
            app.stop()
            await asyncio.wait_for(running, 10)
        assert (await book_rows(app))[0] == list(range(600))
        actions = [getattr(record, "action", None) for record in caplog.records]
        assert "checkpoint_conflict" not in actions
