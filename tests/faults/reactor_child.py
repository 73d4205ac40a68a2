"""A worker with a Redis reactor, run as a child by test_reactor_crash.py and killed there.

    python -m tests.faults.reactor_child URL REDIS_STREAM [--die-after N]

opens an Application with ``outbox`` (a reactor that XADDs each Registered event, with its
key, to REDIS_STREAM, sending the whole history: ``start=START``), sets it up, runs a worker
until the reactor has reached the store's head, prints ``caught-up`` and exits 0.

With ``--die-after N`` it sends itself SIGKILL right after its N-th XADD returned: the
effect is made, its checkpoint not yet committed, the one window where a reactor sends an
event again after a restart. A kill on progress, never on a clock.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence

import redis.asyncio as aioredis

from projectionist import START, Application, Reactor, RecordedEvent
from tests.targets.conftest import REDIS_URL

NAME = "outbox"
DONE = "caught-up"
WORKER = {"lease_seconds": 1.0, "heartbeat_seconds": 0.1}


def outbox(client: aioredis.Redis, stream: str, die_after: int | None) -> Reactor:
    reactor = Reactor(NAME, start=START)
    sent = 0

    @reactor.on("Registered")
    async def send(event: RecordedEvent, key: str) -> None:
        nonlocal sent
        await client.xadd(stream, {"key": key, "position": str(event.position)})
        sent += 1
        if sent == die_after:
            os.kill(os.getpid(), signal.SIGKILL)

    return reactor


async def run(url: str, stream: str, die_after: int | None) -> None:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        async with Application(url, [outbox(client, stream, die_after)]) as app:
            await app.setup()
            worker = asyncio.ensure_future(app.run(**WORKER))
            await app.wait_for(NAME, await app.store.head(), timeout=60)
            app.stop()
            await worker
        print(DONE, flush=True)
    finally:
        await client.aclose()


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2:
        asyncio.run(run(argv[0], argv[1], None))
    elif len(argv) == 4 and argv[2] == "--die-after" and argv[3].isdigit():
        asyncio.run(run(argv[0], argv[1], int(argv[3])))
    else:
        print(
            "usage: python -m tests.faults.reactor_child URL REDIS_STREAM [--die-after N]",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
