"""What the PostgreSQL sources of others' events share: a connection pool opened and closed
with the source, the driver's errors said as ours, the decoder checked once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg
import orjson

from ...defaults import DEFAULT_POLL_INTERVAL
from ...errors import BackendError, ConfigurationError, StoreUnavailableError
from ...source import Decoder, EventSource
from ...urls import redact_url
from .errors import CONNECTION_ERRORS, why_no_connection


class PooledPostgresSource(EventSource):
    """An EventSource over a PostgreSQL database of another system's, read through a pool.

    Subclasses name what they read (``what``, shown in errors) and may check the database
    once it is reached (``check_opened``); a failing check closes the pool again."""

    what: str
    """What the source reads, for messages (e.g. the table's name)."""

    def __init__(
        self,
        url: str,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        pool_size: int = 4,
        decode: Decoder | None = None,
    ) -> None:
        super().__init__()
        if decode is not None and not callable(decode):
            raise ConfigurationError(f"decode must be a function, not {type(decode).__name__}")
        self.decode: Decoder = decode or orjson.loads
        """Turns a payload (the driver's value of its column) into an event's data."""
        self.url = redact_url(url)
        self.poll_interval = poll_interval
        self._dsn = url
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._pool_size)
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreUnavailableError(
                f"cannot connect to {self.url}: {why_no_connection(exc)}"
            ) from exc
        except ValueError as exc:  # asyncpg's parsing of the URL
            raise ConfigurationError(f"invalid PostgreSQL URL {self.url}: {exc}") from exc
        try:
            await self.check_opened(pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def check_opened(self, pool: asyncpg.Pool) -> None:
        """Check the database just reached (nothing by default)."""

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise ConfigurationError(f"the source of {self.what} is not open: open() it")
        return self._pool

    @contextlib.contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        try:
            yield
        except CONNECTION_ERRORS as exc:
            raise StoreUnavailableError(f"{doing} {self.what} failed, {self.url}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise BackendError(f"{doing} {self.what} failed: {exc}") from exc
