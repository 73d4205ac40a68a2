"""Redis for the target tests: the real server, a key prefix of its own per test.

Redis comes from PROJECTIONIST_TEST_REDIS_URL (default redis://127.0.0.1:6379/0). When it
cannot be reached, the tests fail with a message saying how to start it; they never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from projectionist.targets.redis import RedisReadModelStore

REDIS_URL = os.environ.get("PROJECTIONIST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_START_HINT = (
    "Redis is not reachable at {url} ({error}). Start it with 'redis-server --daemonize yes "
    "--bind 127.0.0.1 --port 6379 --save \"\" --appendonly no' (or 'make services'), or point "
    "PROJECTIONIST_TEST_REDIS_URL at a server."
)


async def require_redis() -> None:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        pytest.fail(REDIS_START_HINT.format(url=REDIS_URL, error=exc), pytrace=False)
    finally:
        await client.aclose()


async def delete_prefix(prefix: str) -> int:
    """Delete every key of a test's prefix (SCAN + UNLINK); returns how many there were."""
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.unlink(*keys[start : start + 1000])
        return len(keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A fresh key prefix; its keys are deleted after the test."""
    await require_redis()
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    await delete_prefix(prefix)


@pytest.fixture
async def redis_store(redis_prefix: str) -> AsyncIterator[RedisReadModelStore]:
    """An open RedisReadModelStore on the test's prefix."""
    async with RedisReadModelStore(REDIS_URL, prefix=redis_prefix) as store:
        yield store


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    """A plain client (decoded strings) to look at what the projections wrote."""
    await require_redis()
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


async def sorted_set(client: aioredis.Redis, key: str) -> dict[str, float]:
    """A sorted set as {member: score}."""
    entries: list[Any] = await client.zrange(key, 0, -1, withscores=True)
    return {str(member): float(score) for member, score in entries}
