"""Proof that a Redis projector survives SIGKILL at any moment: nothing lost or applied twice.

The event store is PostgreSQL. The parent appends 20,000 events, then runs the projector of
redis_projector_child.py in a child process and kills it with SIGKILL again and again: most
children from outside once they have committed a random number of batches (mid catch-up:
kills trigger on progress, never on a clock, so a fast or a loaded machine gives the same
story), some by themselves right after their N-th EXEC (the commit boundary). A last child
runs to the head. The ledger only increments (HINCRBY, ZINCRBY), so the values equal
every event applied exactly once only if each batch's writes and its checkpoint were applied
together; they must also equal a clean rebuild, key for key.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

import pytest
import redis.asyncio as aioredis

from projectionist import Application
from projectionist.targets.redis import RedisReadModelStore
from tests.conftest import PG_DSN
from tests.faults.projector_child import DONE, READY
from tests.faults.stepping import finish_child, kill_after_batches, spawn_child
from tests.targets.conftest import REDIS_URL
from tests.targets.redis_ledger import expected_of, history, make_ledger, read_ledger
from tests.targets.redis_projector_child import BATCH_SIZE

SEED = 20_261_127
OUTSIDE_KILLS = 12  # kills from outside that land mid catch-up
COMMIT_KILLS = 4  # children that kill themselves right after a commit
MAX_CHILDREN = 60
TIMEOUT = 60.0


async def spawn(url: str, prefix: str, *options: str) -> asyncio.subprocess.Process:
    return await spawn_child("tests.targets.redis_projector_child", url, prefix, *options)


finish = finish_child


async def test_sigkilled_redis_projector_equals_clean_rebuild(
    pg_schema: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    url = f"{PG_DSN}?schema={pg_schema}"
    rng = random.Random(SEED)
    appends = history(seed=SEED, streams=200, appends_per_stream=4, append_size=25)
    expected = expected_of(appends)
    store = RedisReadModelStore(REDIS_URL, prefix=redis_prefix)
    ledger = make_ledger(store)
    async with Application(url, [ledger]) as app:
        await app.store.apply_schema()
        for stream_id, events in appends:
            await app.store.append(stream_id, events)
        head = await app.store.last_committed()
        assert await app.store.wait_until_visible(head, timeout=30)
        assert expected.events == 20_000

        outside = commit_kills = progressed = 0
        children: list[int] = []  # events the checkpoint moved in each life
        while outside < OUTSIDE_KILLS or commit_kills < COMMIT_KILLS:
            assert len(children) < MAX_CHILDREN, f"kills kept missing: {children}"
            before = await store.checkpoint(ledger.name)
            at_commit = commit_kills < COMMIT_KILLS and len(children) % 4 == 3
            if at_commit:
                commits = str(rng.randint(1, 6))
                process = await spawn(url, redis_prefix, "--kill-after-commit", commits)
                await finish(process, "a child killing itself at a commit")
            else:
                process = await spawn(url, redis_prefix, "--step")
                assert process.stdout is not None
                line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
                assert line.decode().strip() == READY, line
                # A random share of the batches left (at least as many batches as handled
                # events left / batch size), leaving enough for every kill still to come.
                done = 0 if before is None else before.events_processed
                batches_left = (expected.handled - done) // BATCH_SIZE
                kills_to_go = OUTSIDE_KILLS - outside + COMMIT_KILLS - commit_kills
                most = max(1, batches_left // (kills_to_go + 2))
                await kill_after_batches(
                    process, rng.randint(1, most), go_on=rng.random() < 0.7, timeout=TIMEOUT
                )
                await finish(process, "a child killed from outside")
            after = await store.checkpoint(ledger.name)
            assert after is not None
            assert before is None or after.position >= before.position, "the checkpoint went back"
            if after.position >= head:
                pytest.fail(f"catch-up finished after {len(children) + 1} children: kill sooner")
            assert process.returncode == -signal.SIGKILL
            moved = after.events_processed - (0 if before is None else before.events_processed)
            children.append(moved)
            commit_kills += at_commit
            outside += not at_commit
            progressed += not at_commit and moved > 0

        clock = time.monotonic()
        last = await spawn(url, redis_prefix)
        out = await finish(last, "the last child")
        assert last.returncode == 0 and out.split() == [READY, DONE, str(head)], out
        caught_up = time.monotonic() - clock

        checkpoint = await store.checkpoint(ledger.name)
        assert checkpoint is not None and checkpoint.position == head
        assert progressed >= OUTSIDE_KILLS // 2, f"most kills hit no catch-up: {children}"
        assert checkpoint.events_processed == expected.handled, "events counted twice or lost"
        crashed = await read_ledger(redis_client, store)
        assert crashed == expected.snapshot(), "the Redis values are not every event applied once"

        assert await app.rebuild(ledger.name) == expected.events
        assert await read_ledger(redis_client, store) == crashed, "differs from a clean rebuild"
        rebuilt = await store.checkpoint(ledger.name)
        assert rebuilt is not None
        assert (rebuilt.position, rebuilt.events_processed) == (head, expected.handled)
    print(
        f"\nredis crash: {expected.events} events, {len(children)} children killed: {outside} "
        f"from outside mid catch-up ({progressed} after committing batches), {commit_kills} "
        f"at a commit; events per life {children}; the last child caught up in {caught_up:.1f}s"
    )
