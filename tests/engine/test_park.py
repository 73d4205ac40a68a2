"""``on_error="park"`` on every backend: a poison event parks its stream (its later events
wait in the dead letters behind it, in order) while other streams go on; retrying the stream
applies its letters in order and un-parks it, also while a worker runs and events keep being
appended to it; the read model then equals a clean rebuild's.

The projection (``chain``) appends each event's version to its stream's row, so a row shows
every event applied, in the order applied: "1,2,3" is right, "1,3,2" or "1,2,2" is not. A
second table has one row per event (a PRIMARY KEY: a double application fails). Which events
fail is a table of the read-model database (``poison``), as a fix would be deployed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from projectionist import Application, NewEvent, Projection, ReadModelTransaction, RecordedEvent
from projectionist.errors import ConfigurationError, HandlerError, InvalidInputError
from projectionist.partitions import partition_of
from projectionist.recording import OperationsRecords
from projectionist.runner import ProjectionRunner
from projectionist.status import Severity
from projectionist.targets.redis import RedisProjection, RedisReadModelStore
from tests.doc_examples import doc_example, run_example
from tests.engine.test_error_policies import eventually


def chain(
    name: str = "chain",
    *,
    partitions: int = 1,
    batch_size: int = 100,
    poisoned: set[tuple[str, int]] | None = None,
) -> Projection:
    """``poisoned``: the failing events in this process's memory instead of the ``poison``
    table (verify's scratch copy has a table of its own)."""
    projection = Projection(
        name,
        tables=[f"{name}_streams", f"{name}_events"],
        on_error="park",
        partitions=partitions,
        batch_size=batch_size,
    )

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS poison (stream_id TEXT, version BIGINT, "
            "PRIMARY KEY (stream_id, version))"
        )
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {name}_streams (stream_id TEXT PRIMARY KEY, "
            "versions TEXT NOT NULL)"
        )
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {name}_events (stream_id TEXT, version BIGINT, "
            "PRIMARY KEY (stream_id, version))"
        )

    @projection.on("Noted")
    async def noted(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        if poisoned is not None:
            failing = (event.stream_id, event.version or 0) in poisoned
        else:
            failing = await tx.fetchval(
                "SELECT count(*) FROM poison WHERE stream_id = $1 AND version = $2",
                event.stream_id,
                event.version,
            )
        if failing:
            raise ValueError(f"poison {event.stream_id} v{event.version}")
        await tx.execute(
            f"INSERT INTO {name}_events VALUES ($1, $2)", event.stream_id, event.version
        )
        await tx.execute(
            f"INSERT INTO {name}_streams VALUES ($1, $2) ON CONFLICT (stream_id) DO UPDATE "
            f"SET versions = {name}_streams.versions || ',' || excluded.versions",
            event.stream_id,
            str(event.version),
        )

    return projection


def noted(count: int) -> list[NewEvent]:
    return [NewEvent("Noted", {}) for _ in range(count)]


def upto(last: int, first: int = 1) -> str:
    return ",".join(str(v) for v in range(first, last + 1))


async def poison(app: Application, *events: tuple[str, int]) -> None:
    async with app.read_models.transaction() as tx:
        await tx.executemany("INSERT INTO poison VALUES ($1, $2)", list(events))


async def cure(app: Application, *events: tuple[str, int]) -> None:
    async with app.read_models.transaction() as tx:
        for stream_id, version in events:
            await tx.execute(
                "DELETE FROM poison WHERE stream_id = $1 AND version = $2", stream_id, version
            )


async def rows(app: Application, name: str = "chain") -> tuple[list[Any], list[Any]]:
    async with app.read_models.transaction() as tx:
        streams = await tx.fetch(f"SELECT stream_id, versions FROM {name}_streams ORDER BY 1")
        events = await tx.fetch(f"SELECT stream_id, version FROM {name}_events ORDER BY 1, 2")
    return [tuple(row) for row in streams], [(row[0], int(row[1])) for row in events]


async def rebuilt_rows(app: Application, name: str = "chain") -> tuple[list[Any], list[Any]]:
    """The rows a clean rebuild gives (nothing poisoned any more)."""
    await app.rebuild(name)
    return await rows(app, name)


async def interleaved(app: Application, streams: Iterable[str], count: int) -> None:
    for _ in range(count):
        for stream_id in streams:
            await app.store.append(stream_id, noted(1))


async def parked_letters(app: Application, name: str = "chain") -> list[tuple[str, int, bool]]:
    return [
        (letter.event.stream_id, letter.event.version or 0, letter.parked)
        for letter in await app.dead_letters(name)
    ]


# -- parking and retrying --------------------------------------------------------------------


async def test_a_poison_event_parks_its_stream_and_a_retry_applies_it_in_order(
    app_url: str,
) -> None:
    async with Application(app_url, [chain(batch_size=4)]) as app:
        await app.setup()
        await poison(app, ("B", 3))
        await interleaved(app, ["A", "B", "C"], 5)
        await app.run_until_caught_up()

        streams, _ = await rows(app)
        assert streams == [("A", upto(5)), ("B", upto(2)), ("C", upto(5))]
        assert await parked_letters(app) == [("B", v, True) for v in (3, 4, 5)]
        first, *behind = await app.dead_letters("chain")
        assert first.error == "ValueError: poison B v3" and first.attempts == 1
        assert all(letter.error.startswith("held back: stream 'B'") for letter in behind)
        assert all(letter.attempts == 0 for letter in behind)
        checkpoint = await app.read_models.checkpoint("chain")
        assert checkpoint is not None and checkpoint.position == await app.store.head()
        assert checkpoint.events_processed == 15  # the held-back ones were read, once

        [status] = await app.status()
        assert (status.parked_streams, status.dead_letters, status.fault) == (1, 3, None)
        assert status.severity is Severity.WARN and status.lag == 0
        assert status.as_dict()["parked_streams"] == 1

        # Later events of B wait too, in order; A and C go on.
        await interleaved(app, ["A", "B"], 2)
        await app.run_until_caught_up()
        assert (await rows(app))[0] == [("A", upto(7)), ("B", upto(2)), ("C", upto(5))]
        assert await parked_letters(app) == [("B", v, True) for v in range(3, 8)]

        await cure(app, ("B", 3))
        [retried] = await app.retry_parked_stream("chain", "B")
        assert (retried.unit, retried.stream_id, retried.applied) == ("chain", "B", 5)
        assert retried.unparked and retried.error is None
        assert await app.dead_letters() == []
        [status] = await app.status()
        assert (status.parked_streams, status.dead_letters) == (0, 0)
        assert status.severity is not Severity.WARN

        # Applied normally from now on; a runner that cached the park sees it is gone.
        await app.store.append("B", noted(2))
        await app.run_until_caught_up()
        assert await app.dead_letters() == []
        live = await rows(app)
        assert live[0] == [("A", upto(7)), ("B", upto(9)), ("C", upto(5))]
        assert live == await rebuilt_rows(app)


async def test_a_retry_that_fails_again_keeps_the_rest_parked_behind_it(app_url: str) -> None:
    async with Application(app_url, [chain()]) as app:
        await app.setup()
        await poison(app, ("B", 2), ("B", 4))
        await app.store.append("A", noted(3))
        await app.store.append("B", noted(6))
        await app.run_until_caught_up()
        ids = {letter.event.version or 0: letter.id for letter in await app.dead_letters()}
        assert sorted(ids) == [2, 3, 4, 5, 6]

        await cure(app, ("B", 2))  # a fix for v2 only: v4 fails again
        [retried] = await app.retry_parked_stream("chain", "B")
        assert (retried.applied, retried.failed, retried.unparked) == (2, ids[4], False)
        assert retried.error == "ValueError: poison B v4"
        assert (await rows(app))[0] == [("A", upto(3)), ("B", upto(3))]
        first, *behind = await app.dead_letters()
        assert [first.id, *(letter.id for letter in behind)] == [ids[4], ids[5], ids[6]]
        assert first.error == "ValueError: poison B v4" and first.attempts == 1  # held back: 0+1
        assert "poison B v4" in first.traceback
        assert all(letter.parked for letter in (first, *behind))
        [status] = await app.status()
        assert (status.parked_streams, status.dead_letters) == (1, 3)

        # A later letter alone would go out of order: refused, nothing applied.
        with pytest.raises(InvalidInputError, match=f"waits behind dead letter {ids[4]}"):
            await app.retry_dead_letters([ids[5]])
        with pytest.raises(InvalidInputError, match="out of order"):
            await app.retry_dead_letters([ids[4], ids[6]])
        assert (await rows(app))[0] == [("A", upto(3)), ("B", upto(3))]
        assert [letter.id for letter in await app.dead_letters()] == [ids[4], ids[5], ids[6]]

        # The first letter's id retries its stream; still failing, then fixed.
        assert await app.retry_dead_letters([ids[4]]) == [(ids[4], "ValueError: poison B v4")]
        await cure(app, ("B", 4))
        assert await app.retry_dead_letters([ids[4]]) == [(ids[4], None)]
        assert await app.dead_letters() == []
        live = await rows(app)
        assert live[0] == [("A", upto(3)), ("B", upto(6))]
        assert live == await rebuilt_rows(app)


async def test_bad_input_to_a_stream_retry(app_url: str) -> None:
    async with Application(app_url, [chain()]) as app:
        await app.setup()
        await poison(app, ("B", 1))
        await app.store.append("B", noted(2))
        await app.store.append("A", noted(1))
        await app.run_until_caught_up()
        with pytest.raises(ConfigurationError, match="no projection named 'nope'"):
            await app.retry_parked_stream("nope", "B")
        with pytest.raises(InvalidInputError, match="stream 'A' is not parked by projection"):
            await app.retry_parked_stream("chain", "A")
        with pytest.raises(InvalidInputError, match="stream 'ghost' is not parked"):
            await app.retry_parked_stream("chain", "ghost")
        for wrong in ("", None, 7):
            with pytest.raises(InvalidInputError, match="non-empty string"):
                await app.retry_parked_stream("chain", wrong)  # type: ignore[arg-type]
        assert len(await app.dead_letters()) == 2  # nothing moved
        [status] = await app.status()
        assert status.parked_streams == 1

    with pytest.raises(ConfigurationError, match=r"park.*async projections"):
        Projection("inline_park", kind="inline", on_error="park")
    with pytest.raises(ConfigurationError, match="on_error must be one of"):
        Projection("typo", on_error="parked")


async def test_discarding_the_first_letter_leaves_the_rest_parked(app_url: str) -> None:
    async with Application(app_url, [chain()]) as app:
        await app.setup()
        await poison(app, ("B", 2))
        await app.store.append("B", noted(4))
        await app.run_until_caught_up()
        first, second, third = await app.dead_letters()

        assert await app.discard_dead_letters([first.id]) == 1  # the event is forgotten
        assert [letter.id for letter in await app.dead_letters()] == [second.id, third.id]
        await app.store.append("B", noted(1))
        await app.run_until_caught_up()  # still parked: v5 waits too
        assert [(v, parked) for _, v, parked in await parked_letters(app)] == [
            (3, True),
            (4, True),
            (5, True),
        ]
        [retried] = await app.retry_parked_stream("chain", "B")
        assert (retried.applied, retried.unparked) == (3, True)
        assert (await rows(app))[0] == [("B", "1,3,4,5")]  # v2 discarded, the rest in order

        # Discarding every letter of a parked stream un-parks it.
        await poison(app, ("B", 6))
        await app.store.append("B", noted(2))
        await app.run_until_caught_up()
        assert await app.discard_dead_letters([d.id for d in await app.dead_letters()]) == 2
        [status] = await app.status()
        assert (status.parked_streams, status.dead_letters) == (0, 0)
        await app.store.append("B", noted(1))
        await app.run_until_caught_up()
        assert (await rows(app))[0] == [("B", "1,3,4,5,8")]


async def test_partitions_park_per_unit(app_url: str) -> None:
    projection = chain(partitions=2)
    names = [f"s{i}" for i in range(12)]
    by_partition: dict[int, list[str]] = {}
    for stream_id in names:
        by_partition.setdefault(partition_of(stream_id, 2), []).append(stream_id)
    sick, other = by_partition[0][0], by_partition[1][0]
    async with Application(app_url, [projection]) as app:
        await app.setup()
        await poison(app, (sick, 2))
        await interleaved(app, names, 3)
        await app.run_until_caught_up()

        statuses = {status.partition: status for status in await app.status()}
        assert (statuses["0/2"].parked_streams, statuses["1/2"].parked_streams) == (1, 0)
        assert statuses["0/2"].severity is Severity.WARN
        letters = await app.dead_letters()
        assert {letter.unit for letter in letters} == {"chain#0/2"}
        assert [(d.event.stream_id, d.event.version) for d in letters] == [(sick, 2), (sick, 3)]
        streams = dict((await rows(app))[0])
        assert streams[sick] == "1" and streams[other] == upto(3)

        with pytest.raises(InvalidInputError, match=f"stream {other!r} is not parked"):
            await app.retry_parked_stream("chain", other)
        await cure(app, (sick, 2))
        [retried] = await app.retry_parked_stream("chain", sick)
        assert (retried.unit, retried.applied, retried.unparked) == ("chain#0/2", 2, True)
        live = await rows(app)
        assert all(versions == upto(3) for _, versions in live[0]) and len(live[0]) == 12
        assert live == await rebuilt_rows(app)


# -- concurrency ------------------------------------------------------------------------------


async def test_retry_while_a_worker_runs_and_the_stream_keeps_growing(app_url: str) -> None:
    """A worker applies batches and parks B's new events while the retry applies B's letters:
    the retry and the batches take turns on the checkpoint lock, so nothing is applied twice
    or out of order, and once the last letter is gone the worker applies B itself."""
    async with Application(app_url, [chain(batch_size=5)], poll_interval=0.05) as app:
        await app.setup()
        await poison(app, ("B", 2))
        await interleaved(app, ["A", "B"], 30)
        running = asyncio.create_task(app.run(lease_seconds=2.0, heartbeat_seconds=0.2))
        try:

            async def all_read() -> bool:
                checkpoint = await app.read_models.checkpoint("chain")
                return checkpoint is not None and checkpoint.position == await app.store.head()

            await eventually(all_read)
            assert len(await app.dead_letters()) == 29
            await cure(app, ("B", 2))

            appended = asyncio.Event()

            async def keep_appending() -> None:
                for round_ in range(40):
                    await app.store.append("B", noted(1))
                    await app.store.append("A", noted(1))
                    if round_ == 3:
                        appended.set()
                    await asyncio.sleep(0)  # let the worker and the retry in

            appender = asyncio.create_task(keep_appending())
            await appended.wait()  # the retry starts while B keeps growing
            [retried] = await app.retry_parked_stream("chain", "B")
            assert retried.unparked and retried.applied >= 29
            await appender
            head = await app.store.head()
            await app.wait_for("chain", head, timeout=30)
        finally:
            app.stop()
            await asyncio.wait_for(running, 10)

        assert await app.dead_letters() == []
        live = await rows(app)
        assert live[0] == [("A", upto(70)), ("B", upto(70))]
        assert live == await rebuilt_rows(app)


# -- where parking cannot be kept with the batch ---------------------------------------------


def test_park_is_refused_for_a_projection_with_a_store_of_its_own() -> None:
    cached = RedisProjection("cached", RedisReadModelStore(), on_error="park")
    with pytest.raises(ConfigurationError, match=r"on_error='park'.*Redis"):
        Application("memory://", [cached])


async def test_verify_holds_a_parked_stream_back_as_the_live_one_is(app_url: str) -> None:
    poisoned = {("B", 2)}
    async with Application(app_url, [chain(poisoned=poisoned)]) as app:
        await app.setup()
        await interleaved(app, ["A", "B"], 3)
        await app.run_until_caught_up()
        assert (await rows(app))[0] == [("A", upto(3)), ("B", "1")]
        result = await app.verify("chain")  # B is parked in the scratch copy too
        assert result.ok, result.differences
        poisoned.clear()
        await app.retry_parked_stream("chain", "B")
        assert (await rows(app))[0] == [("A", upto(3)), ("B", upto(3))]
        result = await app.verify("chain")
        assert result.ok, result.differences


def test_the_docs_example_runs(tmp_path: Path) -> None:
    run_example(doc_example("operations.md", "### Ordered dead letters"), tmp_path)


async def test_records_that_cannot_park_fault_instead(app_url: str) -> None:
    """A blue/green build's records (memory only, ``parks`` False): parking there would lose
    the stream's letters at the swap, so its runner faults on the event, as under "stop"."""
    async with Application(app_url, [chain()]) as app:
        await app.setup()
        await poison(app, ("B", 2))
        appended = await app.store.append("B", noted(3))
        runner = ProjectionRunner(
            app.source, app.read_models, app.projection("chain"),
            records=OperationsRecords.in_memory(), replaying=True,
        )  # fmt: skip
        with pytest.raises(HandlerError, match="poison B v2"):
            await runner.run_until_caught_up()
        assert runner.checkpoint == appended.events[0].position  # stopped at the event
        assert (await rows(app))[0] == [("B", "1")]
        assert await app.dead_letters() == []  # nothing recorded, nothing held back
