"""The Redis read-model store: a client, a key prefix, checkpoints read outside batches."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...errors import ConfigurationError, StoreUnavailableError
from ...readmodel import Checkpoint, ReadModelStore, ReadModelTransaction
from ...store import OpenClose
from ...urls import redact_url
from .errors import START_HINT, checkpoint_from_hash, translate_error
from .transaction import RedisTransaction

T = TypeVar("T")

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_UNLINK_CHUNK = 1000
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,100}")  # no glob characters: SCAN MATCH stays exact


def _require_seconds(name: str, seconds: object) -> None:
    """A finite, positive number of seconds (an infinite lock would never expire)."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise ConfigurationError(
            f"{name} must be a finite, positive number of seconds, not {seconds!r}"
        )


class RedisReadModelStore(OpenClose, ReadModelStore):
    """Read models and their checkpoints in one Redis database, under a key prefix.

    ``async with`` it (or let the ``Application`` of a projection that uses it open it).
    Opening is counted: each ``open()`` needs its ``close()``, the last one disconnects, so
    several applications in one process can share the store.
    """

    dialect = "redis"

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = "projectionist",
        lock_ttl: float = 10.0,
        socket_timeout: float = 30.0,
    ) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(
                f"a Redis URL starts with redis://, rediss:// or unix://, got {redact_url(url)!r}"
            )
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"invalid Redis key prefix {prefix!r}: 1 to 100 letters, digits or _ . : -"
            )
        for name, seconds in (("lock_ttl", lock_ttl), ("socket_timeout", socket_timeout)):
            _require_seconds(name, seconds)
        self.url = url
        self.prefix = prefix
        self.lock_ttl = lock_ttl
        self.socket_timeout = socket_timeout
        self._client: aioredis.Redis | None = None
        self._opened = 0

    def __repr__(self) -> str:
        return f"RedisReadModelStore({redact_url(self.url)!r}, prefix={self.prefix!r})"

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is None:
            client = aioredis.Redis.from_url(
                self.url,
                decode_responses=True,
                socket_connect_timeout=5.0,
                socket_timeout=self.socket_timeout,
                client_name=f"projectionist:{self.prefix}",  # CLIENT LIST shows whose it is
                # No silent retries inside the client: a command that may have run must not
                # run again. The runner retries whole batches from the checkpoint instead.
                retry=Retry(NoBackoff(), 0),
            )
            try:
                await client.ping()
            except RedisError as exc:
                await client.aclose()
                raise StoreUnavailableError(
                    f"cannot connect to Redis at {redact_url(self.url)} ({exc}): {START_HINT}"
                ) from exc
            self._client = client
        self._opened += 1

    async def close(self) -> None:
        self._opened = max(self._opened - 1, 0)
        if self._opened == 0 and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def forget_all(self) -> int:
        """Delete every read model and checkpoint under this prefix (``P:*`` and ``P#*``);
        returns how many keys there were. For starting afresh (the demo), not for rebuilds."""
        deleted = 0
        for pattern in (f"{self.prefix}:*", f"{self.prefix}#*"):
            keys = [key async for key in self.client.scan_iter(match=pattern, count=1000)]
            for start in range(0, len(keys), _UNLINK_CHUNK):
                deleted += await self.client.unlink(*keys[start : start + _UNLINK_CHUNK])
        return deleted

    @property
    def client(self) -> aioredis.Redis:
        """The connection pool (decoded responses: strings)."""
        if self._client is None:
            raise ConfigurationError(f"{self!r} is not open: use 'async with store:'")
        return self._client

    # -- key names --------------------------------------------------------------------------

    def key(self, table: str, *parts: object) -> str:
        """``PREFIX:TABLE:PART:...``: a read-model key a rebuild of TABLE's owner deletes."""
        return ":".join([self.prefix, table, *(str(part) for part in parts)])

    def checkpoint_key(self, name: str) -> str:
        return f"{self.prefix}#checkpoint:{name}"

    def lock_key(self, name: str) -> str:
        return f"{self.prefix}#lock:{name}"

    @property
    def index_key(self) -> str:
        return f"{self.prefix}#checkpoints"

    # -- the contract -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[ReadModelTransaction]:
        """WATCH and read checkpoints, queue writes (MULTI), EXEC when the block ends.

        An exception in the block discards everything queued. EXEC failing because a watched
        checkpoint moved raises ``CheckpointConflictError``; a lost connection raises
        ``StoreUnavailableError`` (the runner retries both from the stored checkpoint).
        """
        tx = RedisTransaction(self, self.client)
        try:
            yield tx
            await tx.commit()
        except Exception as exc:
            translated = translate_error(exc)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            await tx.close()

    async def apply_schema(self) -> None:
        """Nothing to create on Redis; checks that the server answers."""
        await self._read(lambda client: client.ping())

    async def checkpoints(self) -> dict[str, Checkpoint]:
        names = await self._read(lambda client: client.smembers(self.index_key))
        found = {str(name): await self.checkpoint(str(name)) for name in sorted(names)}
        return {name: checkpoint for name, checkpoint in found.items() if checkpoint is not None}

    async def checkpoint(self, name: str) -> Checkpoint | None:
        key = self.checkpoint_key(name)
        return checkpoint_from_hash(name, await self._read(lambda client: client.hgetall(key)))

    async def _read(self, command: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run a read-only command; once more if the pooled connection had been lost (a read
        is safe to repeat, and an idle connection killed by the server shows only on use)."""
        for attempt in (1, 2):
            try:
                return await command(self.client)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if attempt == 2:
                    raise translate_error(exc) from exc
            except RedisError as exc:
                raise translate_error(exc) from exc
        raise AssertionError("unreachable")
