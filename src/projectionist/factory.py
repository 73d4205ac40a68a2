"""The one place that maps a store URL to a backend, or a read-model URL to its store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

from .defaults import DEFAULT_POLL_INTERVAL
from .errors import ConfigurationError
from .projection import Kind, Projection
from .readmodel import ReadModelStore
from .source import EventSource
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


def events_given(
    store: str | EventStore | None, url: str | EventStore | None, source: EventSource | None
) -> str | EventSource:
    """What an Application reads its events from: an event store's URL or object (given as
    ``store``, or ``url=``, its former name), or another ``source``; given exactly once."""
    given = [thing for thing in (store, url, source) if thing is not None]
    if len(given) > 1:
        raise ConfigurationError(
            "give the events once: as store (or url=), or as source=, not several"
        )
    if not given:
        raise ConfigurationError(
            "an Application needs an event store (a URL or an EventStore) or a source="
        )
    if source is not None and not isinstance(source, EventSource):
        raise ConfigurationError(f"source= must be an EventSource, not {type(source).__name__}")
    return given[0]


def read_models_url(
    read_model_url: str | None, read_models: str | None, source: EventSource | None
) -> str | None:
    if read_model_url is not None and read_models is not None:
        raise ConfigurationError("give the read models' URL once: read_models= or read_model_url=")
    chosen = read_models if read_models is not None else read_model_url
    if source is not None and not isinstance(source, EventStore) and chosen is None:
        raise ConfigurationError(
            "an application over another event source needs read_models='<URL>' "
            "(postgresql://, sqlite:///, memory:// or redis://): the source keeps no read models"
        )
    return chosen


def refuse_inline_over_a_source(projections: Iterable[Projection]) -> None:
    """Inline projections write in an append's transaction: another source has none."""
    for projection in projections:
        if projection.kind is Kind.INLINE:
            raise ConfigurationError(
                f"projection {projection.name!r} is inline, so it writes in the append's own "
                "transaction: an application over another event source has none; make it async"
            )
