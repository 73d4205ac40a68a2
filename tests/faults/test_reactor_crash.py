"""A reactor's worker SIGKILLed right after an effect, before its checkpoint commits.

The child (reactor_child.py) XADDs each event to a real Redis stream and kills itself right
after its N-th XADD; a second child restarts and runs to the head. Every event must be on
the stream at least once, each entry with the event's key; deduplicated by key the stream
holds exactly the events; and only the in-flight event (one: a reactor's batch is one event)
is there twice. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import signal
import uuid
from collections import Counter

import redis.asyncio as aioredis

from projectionist import START, Application, NewEvent
from tests.faults.reactor_child import DONE, NAME
from tests.faults.stepping import finish_child, spawn_child
from tests.targets.conftest import REDIS_URL, require_redis

EVENTS = 20
DIE_AFTER = 7


async def test_a_kill_between_effect_and_checkpoint_resends_that_event_only(
    crash_url: str,
) -> None:
    await require_redis()
    stream = f"test-{uuid.uuid4().hex[:12]}:outbox"
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        async with Application(crash_url) as app:
            await app.prepare_schema()
            for number in range(EVENTS):
                event = NewEvent("Registered", {"n": number})
                await app.store.append(f"customer-{number}", [event])
            events = (await app.store.read_all(START)).events
        expected = [f"{NAME}:{event.id}" for event in events]

        dying = await spawn_child("tests.faults.reactor_child", crash_url, stream,
                                  "--die-after", str(DIE_AFTER))  # fmt: skip
        await finish_child(dying, "the dying reactor")
        assert dying.returncode == -signal.SIGKILL
        assert await client.xlen(stream) == DIE_AFTER

        again = await spawn_child("tests.faults.reactor_child", crash_url, stream)
        assert DONE in await finish_child(again, "the restarted reactor")
        assert again.returncode == 0

        entries = await client.xrange(stream) or []
        sent = [str(fields["key"]) for _, fields in entries if fields is not None]
        by_key = Counter(sent)
        assert set(by_key) == set(expected)  # every event at least once, nothing else
        assert {key for key, times in by_key.items() if times > 1} == {expected[DIE_AFTER - 1]}
        assert len(sent) == EVENTS + 1  # only the in-flight one again
        positions = {fields["key"]: fields["position"] for _, fields in entries if fields}
        assert positions == {expected[n]: str(e.position) for n, e in enumerate(events)}
    finally:
        await client.delete(stream)
        await client.aclose()
