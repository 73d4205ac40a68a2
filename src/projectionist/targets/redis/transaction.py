"""One Redis transaction of a batch: WATCH and read checkpoints, MULTI the writes, EXEC."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, WatchError

from ...errors import BackendError, ConfigurationError
from ...events import Position
from ...readmodel import Checkpoint, CheckpointConflictError, ReadModelTransaction
from ...transient import doubling_delay
from .errors import checkpoint_from_hash

if TYPE_CHECKING:
    from .store import RedisReadModelStore

logger = logging.getLogger("projectionist.redis")

_UNLINK_CHUNK = 1000
_LOCK_POLL_FIRST = 0.005
_LOCK_POLL_MAX = 0.1
# Compare-and-delete / compare-and-extend: only the holder's token releases or extends a lock.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class RedisTransaction(ReadModelTransaction):
    """One Redis transaction of a projection: reads first, then queued writes, then EXEC.

    ``pipeline`` is where handlers queue their writes (it enters MULTI on first use);
    ``client`` reads the committed state (not this batch's queued writes). ``key()`` builds
    read-model key names. SQL methods are refused: this is not a SQL database.
    """

    dialect = "redis"

    def __init__(self, store: RedisReadModelStore, client: aioredis.Redis) -> None:
        self.store = store
        self.client = client
        self.connection = client
        self._pipe: Pipeline = client.pipeline(transaction=True)
        self._multi = False
        self._loaded: dict[str, Checkpoint | None] = {}
        """Checkpoints WATCHed and read in this transaction, as changed by queued writes."""
        self._locks: dict[str, str] = {}
        """Projection name -> the token of the lock this transaction holds."""

    @property
    def pipeline(self) -> Pipeline:
        """The transaction's pipeline in MULTI: queue writes here (they run at EXEC)."""
        if not self._multi:
            self._pipe.multi()  # type: ignore[no-untyped-call]
            self._multi = True
        return self._pipe

    def key(self, table: str, *parts: object) -> str:
        """``PREFIX:TABLE:PART:...`` (see ``RedisReadModelStore.key``)."""
        return self.store.key(table, *parts)

    # -- no SQL here ------------------------------------------------------------------------

    def _no_sql(self) -> ConfigurationError:
        return ConfigurationError(
            "this projection's read model is on Redis: queue commands on tx.pipeline "
            "(as_redis(tx).pipeline.hset(...)) instead of SQL"
        )

    async def execute(self, sql: str, *args: object) -> int:
        raise self._no_sql()

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        raise self._no_sql()

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        raise self._no_sql()

    # -- used by the engine -----------------------------------------------------------------

    async def load_checkpoint(self, name: str, *, lock: bool = False) -> Checkpoint | None:
        """Read the checkpoint of ``name`` and WATCH it, so EXEC fails if anyone moves it.

        With ``lock`` it first waits while a set-up or reset holds the projection's lock (and
        watches that lock too, so a reset starting now makes this transaction's EXEC fail).
        """
        if name in self._loaded:
            return self._loaded[name]
        key = self.store.checkpoint_key(name)
        if self._multi:
            if lock:
                raise ConfigurationError(
                    f"load the checkpoint of {name!r} before queuing writes: Redis cannot "
                    "WATCH a key once the transaction's MULTI has begun"
                )
            return checkpoint_from_hash(name, await self.client.hgetall(key))
        if lock and name not in self._locks:
            await self._watch_unlocked(name)
        else:
            await self._pipe.watch(key)
        checkpoint = checkpoint_from_hash(name, await self._pipe.hgetall(key))
        self._loaded[name] = checkpoint
        return checkpoint

    async def _watch_unlocked(self, name: str) -> None:
        checkpoint_key, lock_key = self.store.checkpoint_key(name), self.store.lock_key(name)
        for attempt in itertools.count(1):
            await self._pipe.watch(checkpoint_key, lock_key)
            if not await self._pipe.exists(lock_key):
                return
            await self._pipe.reset()  # type: ignore[no-untyped-call]  # UNWATCH; the holder's EXEC will move the checkpoint
            await asyncio.sleep(_lock_poll_delay(attempt))

    async def save_checkpoint(
        self, name: str, version: int, expected: Position | None, new: Position, processed: int
    ) -> None:
        current = await self._current(name)
        at = None if current is None else current.position
        if at != expected:
            raise CheckpointConflictError(
                f"projection {name!r}: another runner moved the checkpoint first "
                f"(expected {expected}, found {at})"
            )
        total = processed if current is None else current.events_processed + processed
        checkpoint = Checkpoint(name, version, new, total, datetime.now(UTC))
        pipeline = self.pipeline
        pipeline.hset(
            self.store.checkpoint_key(name),
            mapping={
                "version": version,
                "tx": new.tx,
                "seq": new.seq,
                "processed": total,
                "updated_at": checkpoint.updated_at.isoformat(),
            },
        )
        pipeline.sadd(self.store.index_key, name)
        self._loaded[name] = checkpoint

    async def lock_projection(self, name: str) -> None:
        """Take the projection's lock (waiting while another holds it) and load its
        checkpoint. Batches of runners wait while it is held; it expires after ``lock_ttl``
        seconds should its holder die, and is released when the transaction ends."""
        if name in self._locks:
            return
        if self._multi:
            raise ConfigurationError(f"lock projection {name!r} before queuing writes")
        token = uuid.uuid4().hex
        ttl = int(self.store.lock_ttl * 1000)
        attempt = 0
        while not await self.client.set(self.store.lock_key(name), token, nx=True, px=ttl):
            attempt += 1
            await asyncio.sleep(_lock_poll_delay(attempt))
        self._locks[name] = token
        await self.load_checkpoint(name)

    async def delete_checkpoint(self, name: str) -> None:
        await self._current(name)
        self.pipeline.delete(self.store.checkpoint_key(name))
        self.pipeline.srem(self.store.index_key, name)
        self._loaded[name] = None

    async def drop_tables(self, tables: Sequence[str]) -> None:
        """Queue the deletion of every key of these tables: ``P:TABLE`` and ``P:TABLE:*``.

        The keys are found with SCAN (never KEYS, which blocks the server) and unlinked at
        EXEC, with the checkpoint's reset: a runner's write in between makes EXEC fail.
        """
        for table in tables:
            chunk = [self.key(table)]
            async for key in self.client.scan_iter(match=self.key(table, "*"), count=1000):
                chunk.append(key)
                if len(chunk) == _UNLINK_CHUNK:
                    self.pipeline.unlink(*chunk)
                    chunk = []
                    await self._extend_locks()  # a big read model takes a while to scan
            if chunk:
                self.pipeline.unlink(*chunk)

    async def checkpoint_versions(self) -> dict[str, int]:
        checkpoints = await self.store.checkpoints()
        return {name: checkpoint.version for name, checkpoint in checkpoints.items()}

    async def _current(self, name: str) -> Checkpoint | None:
        if name not in self._loaded and self._multi:
            raise ConfigurationError(
                f"load the checkpoint of {name!r} before queuing writes that change it"
            )
        return await self.load_checkpoint(name)

    async def _extend_locks(self) -> None:
        ttl = int(self.store.lock_ttl * 1000)
        for name, token in self._locks.items():
            await self.client.eval(_EXTEND, 1, self.store.lock_key(name), token, ttl)

    # -- ending -----------------------------------------------------------------------------

    async def commit(self) -> None:
        """EXEC what was queued (nothing to do for a transaction that only read)."""
        if not self._multi:
            return
        try:
            results = await self._pipe.execute(raise_on_error=False)
        except WatchError:
            raise  # translated by the store: a checkpoint moved
        failed = [result for result in results if isinstance(result, Exception)]
        if failed:
            raise BackendError(
                f"{len(failed)} of {len(results)} Redis commands failed while the transaction "
                f"ran, e.g. {failed[0]}; Redis applied the others and the checkpoint: fix the "
                "projection and rebuild it"
            ) from failed[0]

    async def close(self) -> None:
        """Discard whatever was not executed, UNWATCH, hand the connection back, unlock."""
        with contextlib.suppress(RedisError):  # if the connection is gone, so are its WATCHes
            await asyncio.shield(self._pipe.reset())  # type: ignore[no-untyped-call]
        for name, token in self._locks.items():
            try:
                await self.client.eval(_RELEASE, 1, self.store.lock_key(name), token)
            except RedisError:
                logger.warning(
                    "could not release the lock of %s; it expires by itself",
                    name,
                    extra={"action": "redis_lock_release_failed", "projection": name},
                )
        self._locks.clear()


def _lock_poll_delay(attempt: int) -> float:
    """How long to wait before looking at a held lock again: 5 ms, doubling up to 100 ms."""
    return doubling_delay(attempt, base=_LOCK_POLL_FIRST, cap=_LOCK_POLL_MAX)


def as_redis(tx: ReadModelTransaction) -> RedisTransaction:
    """``tx`` as the Redis transaction it is, for handlers of a projection on Redis:

    ``pipe = as_redis(tx).pipeline`` is typed, so handlers stay mypy-clean.
    """
    if not isinstance(tx, RedisTransaction):
        raise ConfigurationError(
            f"this handler writes to Redis, but its transaction is {tx.dialect}: give the "
            "projection a RedisReadModelStore (RedisProjection(name, store, ...))"
        )
    return tx
