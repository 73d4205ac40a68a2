"""A projection whose read model and checkpoint live on Redis."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Unpack

from ...errors import ConfigurationError
from ...projection import Kind, Projection, ProjectionOptions, ProjectionOptionsDict
from .store import RedisReadModelStore


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
