"""One SQLite connection in WAL mode, and the transactions that take turns on it."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import aiosqlite

from ...errors import BackendError, ConfigurationError, StoreUnavailableError
from ...partitions import partition_of
from .errors import translate_operational_error


def sqlite_path(url: str) -> str:
    """``sqlite:///relative.db`` -> ``relative.db``; ``sqlite:////abs.db`` -> ``/abs.db``."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigurationError(
            f"invalid SQLite URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    return url[len(prefix) :].partition("?")[0]


class WriterLock:
    """An asyncio lock that refuses a second turn to the task holding it.

    A store with a single writer (SQLite's one connection, memory's append lock) would
    otherwise hang forever when code inside ``store.transaction()`` calls the store itself:
    the call waits for the transaction its own task holds. Other tasks, also those started
    inside the block, wait their turn as usual (one may well be meant to run after it).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[object] | None = None

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        if task is not None and task is self._holder:
            raise ConfigurationError(
                f"this task already holds the transaction of {self.url}, the store's only "
                "writer, and would wait for itself forever: inside store.transaction() use "
                "tx.append / tx.execute, not the store or its read models"
            )
        async with self._lock:
            self._holder = task
            try:
                yield
            finally:
                self._holder = None


class SqliteDatabase:
    """One SQLite connection in WAL mode, shared by the event store and its read models.

    The lock keeps one transaction at a time on the connection; write transactions begin
    IMMEDIATE, so they also exclude writers in other processes.
    """

    def __init__(self, path: str, url: str, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.url = url
        self._busy_timeout = busy_timeout
        self._connection: aiosqlite.Connection | None = None
        self._lock = WriterLock(url)

    async def open(self) -> None:
        if self._connection is not None:
            return
        if self.path != ":memory:" and not Path(self.path).parent.exists():
            raise StoreUnavailableError(
                f"cannot open {self.url}: directory {str(Path(self.path).parent)!r} does not exist"
            )
        try:
            # (A failed connect stops aiosqlite's thread itself.)
            connection = await aiosqlite.connect(
                self.path, isolation_level=None, timeout=self._busy_timeout
            )
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open {self.url}: {exc}") from exc
        try:
            await _configure(connection)
        except BaseException as exc:
            # E.g. a file that is not a database: the connection exists, its thread runs,
            # and would keep the process from ever exiting unless closed here.
            with contextlib.suppress(sqlite3.Error):
                await connection.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreUnavailableError(f"cannot open {self.url}: {exc}") from exc
            raise
        self._connection = connection

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()

    @contextlib.asynccontextmanager
    async def transaction(self, doing: str, *, write: bool) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the connection inside one transaction; roll back on any error."""
        if self._connection is None:
            raise StoreUnavailableError(f"store {self.url} is not open: call open() first")
        connection = self._connection
        async with self._lock.held():
            try:
                try:
                    await _uncancellable(
                        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    )
                except asyncio.CancelledError:
                    await _uncancellable(connection.execute("ROLLBACK"))
                    raise
                try:
                    yield connection
                except BaseException:
                    await _rollback(connection)
                    raise
                try:
                    await _uncancellable(connection.execute("COMMIT"))
                except sqlite3.Error:
                    # A failed COMMIT (a deferred constraint) leaves the transaction open on
                    # the store's only connection: end it, or nothing could run after.
                    await _rollback(connection)
                    raise
            except sqlite3.OperationalError as exc:
                raise translate_operational_error(exc, doing, self.url) from exc
            except sqlite3.Error as exc:
                raise BackendError(f"{doing} failed in {self.url}: {exc}") from exc


async def _configure(connection: aiosqlite.Connection) -> None:
    """WAL mode, foreign keys, and the partition function the statements use."""
    await connection.execute("PRAGMA journal_mode=WAL")
    await connection.execute("PRAGMA synchronous=NORMAL")
    await connection.execute("PRAGMA foreign_keys=ON")
    await connection.create_function("pj_partition", 2, partition_of, deterministic=True)


async def _rollback(connection: aiosqlite.Connection) -> None:
    """Roll back if a transaction is open, keeping the error that led here if it fails."""
    if connection.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            await _uncancellable(connection.execute("ROLLBACK"))


async def _uncancellable(statement: Awaitable[object]) -> None:
    """Let BEGIN, COMMIT and ROLLBACK finish even if the caller is cancelled meanwhile.

    aiosqlite runs a statement in its thread whether or not anyone still awaits it, so a
    cancelled BEGIN would otherwise leave a transaction open that nobody ends.
    """
    task = asyncio.ensure_future(statement)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise
