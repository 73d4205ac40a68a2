"""Read models on Redis: hashes, sorted sets and counters, with exactly-once batches.

A ``RedisReadModelStore`` implements the read-model contract on Redis, so the engine's
runner, rebuilds, status and ``wait_for`` work on it unchanged. Each batch is one Redis
transaction: the runner's ``load_checkpoint(lock=True)`` WATCHes the projection's checkpoint
key and reads it, the handlers queue their writes on ``tx.pipeline`` (MULTI), the engine
queues the checkpoint write after them, and EXEC applies all of it at once. If another runner
(or a rebuild) moved the checkpoint in between, EXEC applies nothing and the runner reloads
and continues (``CheckpointConflictError``); a crash before EXEC leaves nothing behind. So
increments (HINCRBY, ZINCRBY) are applied exactly once per event, as in the SQL targets.

Keys, for a store with prefix ``P``::

    P:TABLE and P:TABLE:...    a projection's read model; TABLE is one of its ``tables``
                               (``tx.key(TABLE, part, ...)`` builds these names)
    P#checkpoint:NAME          the checkpoint of projection NAME (a hash)
    P#checkpoints              the names of all checkpoints (a set)
    P#lock:NAME                held while NAME is set up or reset (with an expiry)

A rebuild deletes ``P:TABLE`` and ``P:TABLE:*`` for each declared table (SCAN, then UNLINK in
the transaction that resets the checkpoint), so counters start from zero again.

Redis does not roll back a transaction whose commands fail while running (say HINCRBY on a
key holding a string): the other commands and the checkpoint are applied, and the batch
surfaces as a ``BackendError`` that says so; rebuild the projection after fixing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, Unpack

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import BackendError, ConfigurationError, StoreUnavailableError
from ..events import Position
from ..projection import Kind, Projection, ProjectionOptions, ProjectionOptionsDict
from ..readmodel import Checkpoint, CheckpointConflictError, ReadModelStore, ReadModelTransaction
from ..store import OpenClose
from ..transient import doubling_delay, in_cause_chain
from ..urls import redact_url

logger = logging.getLogger("projectionist.redis")
T = TypeVar("T")

DEFAULT_URL = "redis://127.0.0.1:6379/0"
_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,100}")  # no glob characters: SCAN MATCH stays exact
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
START_HINT = "no Redis server answers at that address, or it refused the connection"


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
        if lock_ttl <= 0 or socket_timeout <= 0:
            raise ConfigurationError("lock_ttl and socket_timeout must be positive seconds")
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


class RedisProjection(Projection):
    """A projection whose read model and checkpoint live in a ``RedisReadModelStore``.

    ``tables`` name its key namespaces (default: the projection's name); a rebuild deletes
    every key under them. It takes every projection option (``ProjectionOptions``); its kind
    is always async: an inline projection writes in the append's SQL transaction, which
    Redis cannot join. Faults and dead letters go to the application's SQL store.
    """

    def __init__(
        self,
        name: str,
        store: RedisReadModelStore,
        *,
        tables: Iterable[str] | None = None,
        options: ProjectionOptions | None = None,
        **settings: Unpack[ProjectionOptionsDict],
    ) -> None:
        if not isinstance(store, RedisReadModelStore):
            raise ConfigurationError(
                f"projection {name!r}: store must be a RedisReadModelStore, not "
                f"{type(store).__name__}"
            )
        tables = (name,) if tables is None else tables
        super().__init__(name, tables=tables, options=options, **settings)
        if self.kind is not Kind.ASYNC:
            raise ConfigurationError(
                f"projection {name!r}: a projection on Redis is async (an inline one would "
                "write in the append's SQL transaction, which Redis cannot join)"
            )
        self.read_models = store

    def __repr__(self) -> str:
        return f"RedisProjection({self.name!r}, {self.read_models!r}, version={self.version})"


def checkpoint_from_hash(name: str, fields: Mapping[Any, Any]) -> Checkpoint | None:
    if not fields:
        return None
    return Checkpoint(
        name=name,
        version=int(fields["version"]),
        position=Position(int(fields["tx"]), int(fields["seq"])),
        events_processed=int(fields["processed"]),
        updated_at=datetime.fromisoformat(fields["updated_at"]),
    )


def translate_error(exc: BaseException) -> BaseException:
    """The projectionist error for a Redis failure in a transaction, or ``exc`` itself.

    A lost connection anywhere in the chain (even under a handler's HandlerError, or the
    WatchError redis-py raises when a watching connection dies) is StoreUnavailableError,
    which the runner retries; EXEC refused because a watched key moved is a checkpoint
    conflict; any other raw Redis error is a BackendError.
    """
    if _lost_connection(exc):
        return StoreUnavailableError(f"lost the connection to Redis ({type(exc).__name__}: {exc})")
    if isinstance(exc, WatchError):
        return CheckpointConflictError(
            f"a checkpoint watched by this transaction moved before EXEC: {exc}"
        )
    if isinstance(exc, RedisError):
        return BackendError(f"Redis: {type(exc).__name__}: {exc}")
    return exc


def _lost_connection(exc: BaseException) -> bool:
    return in_cause_chain(exc, _is_connection_error)


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, RedisConnectionError | RedisTimeoutError)
