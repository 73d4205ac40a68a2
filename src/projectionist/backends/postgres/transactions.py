"""Transactions of the PostgreSQL event store on one connection: yours (appends together
with your own writes) and an exclusive replay's."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from ...events import Position
from ...partitions import Partition
from ...store import EventBatch, ExclusiveReplay, StoreTransaction
from .connections import Connection
from .read_models import PostgresReadModelTransaction

if TYPE_CHECKING:
    from .event_store import PostgresEventStore


class PostgresTransaction(StoreTransaction):
    """Your own transaction on a PostgresEventStore (see ``EventStore.transaction``):
    ``connection`` is the asyncpg connection it runs on."""

    connection: Connection

    def __init__(self, store: PostgresEventStore, connection: Connection) -> None:
        super().__init__(store, PostgresReadModelTransaction(connection, store._q))
        self.store = store


class PostgresReplay(ExclusiveReplay):
    """An exclusive replay: appends are locked out, the read model writes in its transaction."""

    def __init__(self, store: PostgresEventStore, connection: Connection) -> None:
        self.read_model = PostgresReadModelTransaction(connection, store._q)
        self._store = store
        self._connection = connection

    async def read_all(
        self,
        after: Position,
        limit: int,
        types: Collection[str] | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        return await self._store._read_all_on(
            self._connection, after, limit, types, exclusive=True, partition=partition
        )
