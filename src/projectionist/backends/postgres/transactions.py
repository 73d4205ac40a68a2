"""Transactions of the PostgreSQL event store on one connection: yours (appends together
with your own writes) and an exclusive replay's."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from ...events import NewEvent, Position
from ...partitions import Partition
from ...store import ANY, AppendResult, EventBatch, ExclusiveReplay, ExpectedVersion
from .connections import Connection
from .read_models import PostgresReadModelTransaction

if TYPE_CHECKING:
    from .event_store import PostgresEventStore


class PostgresTransaction:
    """An open transaction of a PostgresEventStore (see ``PostgresEventStore.transaction``)."""

    def __init__(self, store: PostgresEventStore, connection: Connection) -> None:
        self.store = store
        self.connection = connection

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        return await self.store.append_on(self.connection, stream_id, events, expected_version)


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
