"""The one place that maps a store URL to a backend, or a read-model URL to its store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from .defaults import DEFAULT_POLL_INTERVAL
from .errors import ConfigurationError
from .readmodel import ReadModelStore
from .store import EventStore
from .urls import is_key_value_dsn, redact_url

SCHEMES = ("postgresql://", "postgres://", "sqlite:///", "memory://")


def create_store(
    url: str, *, schema: str | None = None, poll_interval: float = DEFAULT_POLL_INTERVAL
) -> EventStore:
    """A store for ``url``, not yet opened: ``async with create_store(url) as store: ...``.

    - ``postgresql://user@host:5432/db`` (``?schema=name`` or ``schema=`` picks the schema),
    - ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``,
    - ``memory://`` (nothing persisted).
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"store URL must be a string, not {type(url).__name__}")
    if is_key_value_dsn(url):
        raise ConfigurationError(
            f"{redact_url(url)!r} is a key=value connection string: write it as a URL, "
            "postgresql://user:password@host:5432/database"
        )
    if url.startswith(("postgresql://", "postgres://")):
        from .backends.postgres import PostgresEventStore

        return PostgresEventStore(url, schema=schema, poll_interval=poll_interval)
    if schema is not None:
        raise ConfigurationError(f"schema= applies to PostgreSQL only, not to {redact_url(url)}")
    if url.startswith("sqlite:"):
        from .backends.sqlite import SqliteEventStore

        return SqliteEventStore(url, poll_interval=poll_interval)
    if url == "memory://":
        from .backends.memory import MemoryEventStore

        return MemoryEventStore(url)
    raise ConfigurationError(
        f"unknown store URL {redact_url(url)!r}: it must start with one of {', '.join(SCHEMES)}"
    )


@contextlib.asynccontextmanager
async def open_read_models(url: str, *, schema: str | None = None) -> AsyncIterator[ReadModelStore]:
    """A read-model store for ``url``, open for the block, without an event store of ours:
    ``async with open_read_models("postgresql://...") as read_models: ...``.

    SQL URLs (``postgresql://``, ``sqlite:///``, ``memory://``, as for ``create_store``)
    open a store object of ours on that database and use only its read-model side (tables,
    checkpoints, leases); no event table is created there. ``redis://`` (``rediss://``)
    opens a ``RedisReadModelStore`` with its default prefix.
    """
    if isinstance(url, str) and url.startswith(("redis://", "rediss://")):
        if schema is not None:
            raise ConfigurationError(
                f"schema= applies to PostgreSQL only, not to {redact_url(url)}"
            )
        from .targets.redis import RedisReadModelStore

        async with RedisReadModelStore(url) as redis_store:
            yield redis_store
        return
    async with create_store(url, schema=schema) as host:
        yield host.read_models()
