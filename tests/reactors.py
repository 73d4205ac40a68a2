"""Reactors with real effects for the tests: an entry on a Redis stream, a message on a NATS
JetStream subject; and reading back what they sent (by key, duplicates kept)."""

from __future__ import annotations

from collections import Counter

import orjson
import redis.asyncio as aioredis
from nats.js import JetStreamContext

from projectionist import Reactor, RecordedEvent

SENT_TYPE = "Registered"


def redis_reactor(
    client: aioredis.Redis, stream: str, *, name: str = "redis_welcome", **options: object
) -> Reactor:
    """XADD ``stream`` {key, position, name} per Registered event."""
    reactor = Reactor(name, **options)  # type: ignore[arg-type]

    @reactor.on(SENT_TYPE)
    async def send(event: RecordedEvent, key: str) -> None:
        await client.xadd(
            stream, {"key": key, "position": str(event.position), "name": event.data["name"]}
        )

    return reactor


class NatsSender:
    """Publishes each Registered event to ``subject`` with ``Nats-Msg-Id`` = its key, and
    counts its publishes: the server drops a repeated id, so the count shows a resend."""

    def __init__(self, js: JetStreamContext, subject: str) -> None:
        self.js = js
        self.subject = subject
        self.publishes: Counter[str] = Counter()

    def reactor(self, *, name: str = "nats_welcome", **options: object) -> Reactor:
        reactor = Reactor(name, **options)  # type: ignore[arg-type]

        @reactor.on(SENT_TYPE)
        async def publish(event: RecordedEvent, key: str) -> None:
            self.publishes[key] += 1
            payload = orjson.dumps({"name": event.data["name"]})
            await self.js.publish(self.subject, payload, headers={"Nats-Msg-Id": key})

        return reactor


async def redis_keys(client: aioredis.Redis, stream: str) -> list[str]:
    """The key field of every entry of ``stream``, in order."""
    keys = []
    for _, fields in await client.xrange(stream) or []:
        assert fields is not None
        keys.append(str(fields["key"]))
    return keys


async def nats_keys(js: JetStreamContext, stream: str) -> list[str]:
    """The Nats-Msg-Id of every message stored in ``stream``, in order."""
    info = await js.stream_info(stream)
    keys = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(stream, seq)
        assert message.headers is not None
        keys.append(message.headers["Nats-Msg-Id"])
    return keys
