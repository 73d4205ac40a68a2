"""Projections on Redis take every projection option: an error policy whose faults and dead
letters go to the application's SQL store, retries, and partitions."""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

import pytest
import redis.asyncio as aioredis

from projectionist import Application, HandlerError, NewEvent, ReadModelTransaction, RecordedEvent
from projectionist.projection import ProjectionOptionsDict
from projectionist.targets.redis import RedisProjection, RedisReadModelStore, as_redis


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


def counter(
    store: RedisReadModelStore, broken: set[int], **options: Unpack[ProjectionOptionsDict]
) -> RedisProjection:
    """Per stream, how many ``Counted`` events and the sum of their numbers (HINCRBY: an
    event applied twice shows); numbers in ``broken`` make the handler raise."""
    projection = RedisProjection("counter", store, **options)

    @projection.on("Counted")
    async def counted(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        n = int(event.data["n"])
        if n in broken:
            raise ValueError(f"poison event {n}")
        redis_tx = as_redis(tx)
        key = redis_tx.key("counter", event.stream_id)
        redis_tx.pipeline.hincrby(key, "events", 1)
        redis_tx.pipeline.hincrby(key, "sum", n)

    return projection


def counted(numbers: range | list[int]) -> list[NewEvent]:
    return [NewEvent("Counted", {"n": n}) for n in numbers]


async def totals(client: aioredis.Redis, store: RedisReadModelStore, stream: str) -> list[int]:
    stored = await client.hgetall(store.key("counter", stream))
    return [int(stored.get("events", 0)), int(stored.get("sum", 0))]


async def test_skip_dead_letters_a_poison_event_into_the_application_store(
    tmp_path: Path, redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    broken = {4}
    projection = counter(redis_store, broken, on_error="skip", retries=1, batch_size=3)
    async with Application(sqlite_url(tmp_path), [projection]) as app:
        await app.setup()
        appended = await app.store.append("s-1", counted(range(10)))
        await app.run_until_caught_up()

        # Every event but the poison one, each exactly once; the checkpoint is past them all.
        assert await totals(redis_client, redis_store, "s-1") == [9, sum(range(10)) - 4]
        checkpoint = await redis_store.checkpoint("counter")
        assert checkpoint is not None and checkpoint.position == await app.store.head()
        [letter] = await app.dead_letters("counter")
        assert letter.event == appended.events[4]
        assert (letter.unit, letter.attempts, letter.error) == (
            "counter",
            2,
            "ValueError: poison event 4",
        )
        [status] = await app.status()
        assert status.dead_letters == 1 and status.fault is None and status.lag == 0

        broken.clear()  # fixed: the letter applies on Redis and leaves the SQL store
        assert await app.retry_dead_letters([letter.id]) == [(letter.id, None)]
        assert await totals(redis_client, redis_store, "s-1") == [10, sum(range(10))]
        assert await app.dead_letters() == []


async def test_stop_records_the_fault_in_the_application_store_until_it_is_passed(
    tmp_path: Path, redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    broken = {2}
    projection = counter(redis_store, broken, retries=0)
    async with Application(sqlite_url(tmp_path), [projection]) as app:
        await app.setup()
        await app.store.append("s-1", counted(range(5)))
        with pytest.raises(HandlerError, match="poison event 2"):
            await app.run_until_caught_up()
        [status] = await app.status()
        assert status.fault is not None and status.fault.error == "ValueError: poison event 2"
        assert await totals(redis_client, redis_store, "s-1") == [2, 1]  # 0 and 1 committed

        broken.clear()  # the next run gets past the event: the fault is cleared after it
        await app.run_until_caught_up()
        [status] = await app.status()
        assert status.fault is None and status.lag == 0
        assert await totals(redis_client, redis_store, "s-1") == [5, 10]


async def test_a_partitioned_projection_on_redis_applies_every_event_once(
    tmp_path: Path, redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    projection = counter(redis_store, set(), partitions=3, batch_size=4)
    async with Application(sqlite_url(tmp_path), [projection]) as app:
        await app.setup()
        streams = [f"s-{n}" for n in range(12)]
        for number, stream in enumerate(streams):
            await app.store.append(stream, counted([number, number + 100]))
        await app.run_until_caught_up()
        assert set(await redis_store.checkpoints()) == {
            "counter#0/3",
            "counter#1/3",
            "counter#2/3",
        }
        for number, stream in enumerate(streams):
            assert await totals(redis_client, redis_store, stream) == [2, 2 * number + 100]
        checkpoints = await redis_store.checkpoints()
        assert sum(c.events_processed for c in checkpoints.values()) == 2 * len(streams)
        assert await app.rebuild("counter") == 2 * len(streams)
        for number, stream in enumerate(streams):
            assert await totals(redis_client, redis_store, stream) == [2, 2 * number + 100]
