"""Reactors publishing to a real Redis stream and a real NATS JetStream subject (PostgreSQL).

Through a history they skip, live events, a rebuild of another projection of the same app, a
blue/green swap of that projection (two workers), and a raised version of the Redis
reactor (which starts no build), every event appended after the set-up is on the Redis
stream and on the NATS stream exactly once, with its key, and nothing of the replays.
The NATS publishes are counted too: the server would drop a repeated Nats-Msg-Id, hiding it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from nats.js.api import StreamConfig

from projectionist import (
    Application,
    ConfigurationError,
    NewEvent,
    Projection,
    ReadModelTransaction,
    RecordedEvent,
)
from projectionist.status import UnitState
from tests.conftest import PG_DSN
from tests.reactors import SENT_TYPE, NatsSender, nats_keys, redis_keys, redis_reactor
from tests.sources.jetstream_support import connect_nats, new_stream_name
from tests.targets.conftest import REDIS_URL, delete_prefix, require_redis
from tests.worker.conftest import eventually

WORKER = {"lease_seconds": 2.0, "heartbeat_seconds": 0.2, "retire_after_seconds": 1.0}


def ledger(version: int) -> Projection:
    """A projection of the same events with a read model, to rebuild and to swap."""
    projection = Projection("ledger", version=version, tables=["ledger"], batch_size=20)
    extra = ", v2 BIGINT" if version > 1 else ""

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(f"CREATE TABLE IF NOT EXISTS ledger (id TEXT PRIMARY KEY{extra})")

    @projection.on(SENT_TYPE)
    async def registered(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        await tx.execute(
            "INSERT INTO ledger (id) VALUES ($1) ON CONFLICT DO NOTHING", str(event.id)
        )

    return projection


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    await require_redis()
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


class Customers:
    """Appends Registered events and remembers the keys each reactor must send."""

    def __init__(self, app: Application) -> None:
        self.app = app
        self.expected: list[str] = []  # event ids sent by both reactors

    async def register(self, count: int, *, expected: bool = True) -> None:
        for _ in range(count):
            event = NewEvent(SENT_TYPE, {"name": uuid.uuid4().hex[:8]})
            await self.app.store.append(f"customer-{event.id}", [event])
            if expected:
                self.expected.append(str(event.id))


async def caught_up(app: Application, *names: str) -> None:
    head = await app.store.head()
    for name in names:
        await app.wait_for(name, head, timeout=30)


async def test_reactors_send_each_event_once_through_rebuild_swap_and_version_raise(
    pg_schema: str, redis_client: aioredis.Redis
) -> None:
    url = f"{PG_DSN}?schema={pg_schema}"
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    redis_stream = f"{prefix}:welcome"
    nats = await connect_nats()
    js = nats.jetstream()
    nats_stream = new_stream_name()
    await js.add_stream(StreamConfig(name=nats_stream, subjects=[f"{nats_stream}.>"]))
    sender = NatsSender(js, f"{nats_stream}.welcome")
    names = ("redis_welcome", "nats_welcome")
    workers: list[asyncio.Future[Any]] = []
    try:
        old = Application(
            url, [ledger(1), redis_reactor(redis_client, redis_stream), sender.reactor()]
        )
        async with old:
            await old.prepare_schema()
            customers = Customers(old)
            await customers.register(15, expected=False)  # history: not sent
            await old.setup()
            workers.append(asyncio.ensure_future(old.run(**WORKER)))
            await customers.register(10)
            await caught_up(old, *names)

            # A rebuild of the ledger while events arrive: the reactors send only those.
            rebuilding = asyncio.ensure_future(old.rebuild("ledger"))
            await customers.register(5)
            await rebuilding
            for name in names:
                with pytest.raises(ConfigurationError, match="is a reactor"):
                    await old.rebuild(name)
                with pytest.raises(ConfigurationError, match="is a reactor"):
                    await old.verify(name)
            await caught_up(old, "ledger", *names)

            # A blue/green swap of the ledger by a second worker, events arriving meanwhile.
            new = Application(
                url, [ledger(2), redis_reactor(redis_client, redis_stream), sender.reactor()]
            )
            async with new:
                await new.setup()  # the ledger is left to the workers' build
                workers.append(asyncio.ensure_future(new.run(**WORKER)))
                await customers.register(5)

                async def swapped() -> bool:
                    checkpoint = await new.read_models.checkpoint("ledger")
                    return checkpoint is not None and checkpoint.version == 2

                await eventually(swapped, timeout=60, what="the blue/green swap")
                await customers.register(5)
                await caught_up(new, "ledger", *names)
                old.stop()
                new.stop()
                await asyncio.gather(*workers)
                workers.clear()

            # A raised version of the Redis reactor: no build, nothing sent again.
            raised = redis_reactor(redis_client, redis_stream, version=2)
            third = Application(url, [ledger(2), raised, sender.reactor()])
            async with third:
                await third.setup()
                workers.append(asyncio.ensure_future(third.run(**WORKER)))
                await customers.register(5)
                await caught_up(third, "ledger", *names)
                statuses = {status.name: status for status in await third.status()}
                assert set(statuses) == {"ledger", *names}  # no build unit beside them
                assert statuses["redis_welcome"].version == 2
                assert statuses["redis_welcome"].state is not UnitState.NEEDS_REBUILD
                third.stop()
                await asyncio.gather(*workers)
                workers.clear()

        want = {f"{name}:{event_id}" for name in names for event_id in customers.expected}
        sent_to_redis = await redis_keys(redis_client, redis_stream)
        sent_to_nats = await nats_keys(js, nats_stream)
        assert len(customers.expected) == 30
        assert Counter(sent_to_redis) == Counter({k: 1 for k in want if k.startswith("redis")})
        assert Counter(sent_to_nats) == Counter({k: 1 for k in want if k.startswith("nats")})
        assert set(sender.publishes.values()) == {1}  # not even a resend NATS dropped
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await js.delete_stream(nats_stream)
        await nats.close()
        await delete_prefix(prefix)
