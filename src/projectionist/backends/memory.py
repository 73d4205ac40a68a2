"""In-memory event store: a real backend for tests and prototypes, nothing persisted."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from ..defaults import DEFAULT_BATCH_SIZE
from ..errors import ConcurrencyError, InvalidInputError
from ..events import (
    START,
    EncodedEvent,
    NewEvent,
    Position,
    RecordedEvent,
    validate_position,
    validate_read_stream,
)
from ..importing import BatchWritten, ImportRow, ids_to_look_up, plan_batch, streams_of
from ..migrations import EVENTS, latest_version
from ..partitions import Partition
from ..readmodel import ReadModelStore
from ..source import validated_read
from ..store import (
    ANY,
    AppendResult,
    Backlog,
    EventBatch,
    EventStore,
    ExclusiveReplay,
    ExpectedVersion,
    StoreTransaction,
    append_savepoint,
    prepare_append,
)
from ..upcasting import SCHEMA_VERSION, Rewrite
from .sqlite import SqliteDatabase, SqliteReadModelStore, SqliteReadModelTransaction
from .sqlite.database import WriterLock


@dataclass
class _OpenTransaction:
    """The appends of an open ``transaction()``: recorded, published only at its commit."""

    read_model: SqliteReadModelTransaction
    appends: list[tuple[tuple[RecordedEvent, ...], list[EncodedEvent]]] = field(
        default_factory=list
    )
    events: list[RecordedEvent] = field(default_factory=list)
    block_ended: bool = False
    """The caller's block finished without an exception: what follows is the COMMIT."""

    def add(self, recorded: tuple[RecordedEvent, ...], encoded: list[EncodedEvent]) -> None:
        self.appends.append((recorded, encoded))
        self.events += recorded

    def committed(self) -> bool:
        """After a cancellation that arrived while COMMIT ran (it runs to its end): whether
        it committed, which leaves no transaction open (a failed one leaves it open)."""
        return self.block_ended and not self.read_model.connection.in_transaction


class MemoryEventStore(EventStore):
    """Events in a list; the list index is the global position minus one.

    Read models (and their checkpoints) live in an in-memory SQLite database, so SQL
    projections run here unchanged. Appends take a lock and publish their events only after
    inline projections succeeded: readers never see half an append.
    """

    def __init__(self, url: str = "memory://") -> None:
        super().__init__()
        self.url = url
        self._events: list[RecordedEvent] = []
        self._sizes: list[int] = []  # encoded data + metadata per event, for max_bytes
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._ids: set[object] = set()
        self._append_lock = WriterLock(url)
        self._database = SqliteDatabase(":memory:", url)
        self._read_models = SqliteReadModelStore(self._database)
        self._open_transaction: _OpenTransaction | None = None

    async def open(self) -> None:
        await self._database.open()

    async def close(self) -> None:
        await self._database.close()

    def read_models(self) -> ReadModelStore:
        return self._read_models

    async def apply_schema(self) -> int:
        # Read models live in an in-memory SQLite: the sqlite read_models track applies there.
        # Events live in lists, so the events version is, by definition, the latest.
        await self._read_models.apply_schema()
        return latest_version("sqlite", EVENTS)

    async def count_after(self, after: Position, partition: Partition | None = None) -> int:
        validate_position(after, "after")
        part = (partition or Partition(0, 1)).validate()
        if part.count == 1:
            return max(len(self._events) - after.seq, 0)
        return sum(1 for event in self._events[after.seq :] if part.holds(event.stream_id))

    async def backlog(self, after: Position, partition: Partition | None = None) -> Backlog:
        validate_position(after, "after")
        part = (partition or Partition(0, 1)).validate()
        waiting = (e for e in self._events[after.seq :] if part.holds(e.stream_id))
        first = next(waiting, None)
        if first is None:
            return Backlog(0, False, None)
        return Backlog(await self.count_after(after, part), False, first.recorded_at)

    @contextlib.asynccontextmanager
    async def exclusive_replay(self) -> AsyncIterator[ExclusiveReplay]:
        async with (
            self._append_lock.held(),
            self._database.transaction("replaying", write=True) as connection,
        ):
            yield _MemoryReplay(self, SqliteReadModelTransaction(connection, self.url))

    async def schema_version(self) -> int:
        return latest_version("sqlite", EVENTS)  # events live in lists: always the latest

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        expected, encoded = prepare_append(stream_id, events, expected_version, self.upcasters)
        async with self._append_lock.held():
            recorded = self._record(stream_id, encoded, expected, expected_version)
            if self.inline_hooks:
                # Shielded: once the inline rows commit, the events must be published too,
                # even if the caller is cancelled meanwhile.
                await asyncio.shield(self._project_inline_and_publish(recorded, encoded))
            else:
                self._publish(recorded, encoded)
        self._changes.notify()
        return AppendResult(recorded)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTransaction]:
        """Holds the append lock and a write transaction of the read models' SQLite; the
        appends are published when it commits and vanish when it rolls back."""
        async with self._append_lock.held():
            opened: _OpenTransaction | None = None
            try:
                async with self._database.transaction("running a transaction", write=True) as db:
                    opened = self._open_transaction = _OpenTransaction(
                        SqliteReadModelTransaction(db)
                    )
                    yield StoreTransaction(self, opened.read_model)
                    opened.block_ended = True
            except asyncio.CancelledError:
                if opened is not None and opened.committed():
                    self._publish_transaction(opened)
                raise
            finally:
                self._open_transaction = None
            self._publish_transaction(opened)

    def _publish_transaction(self, opened: _OpenTransaction) -> None:
        for recorded, encoded in opened.appends:
            self._publish(recorded, encoded)
        self._changes.notify()

    async def append_on(
        self,
        connection: Any,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        """Append inside the open ``transaction()`` whose ``tx.connection`` this is."""
        opened = self._open_transaction
        if opened is None or connection is not opened.read_model.connection:
            raise InvalidInputError(
                "MemoryEventStore.append_on takes tx.connection of an open store.transaction(), "
                f"not {connection!r}"
            )
        expected, encoded = prepare_append(stream_id, events, expected_version, self.upcasters)
        recorded = self._record(stream_id, encoded, expected, expected_version, opened.events)
        if self.inline_hooks:
            async with append_savepoint(opened.read_model):
                for hook in self.inline_hooks:
                    await hook(opened.read_model, recorded)
        opened.add(recorded, encoded)
        return AppendResult(recorded)

    async def _import_batch(self, rows: list[ImportRow]) -> BatchWritten:
        """Plan and publish one batch of an import under the append lock: all or nothing."""
        async with self._append_lock.held():
            versions = {s: len(self._streams.get(s, [])) for s in streams_of(rows)}
            plan = plan_batch(rows, versions, self._stored(rows, versions))
            now = datetime.now(UTC)
            start = len(self._events)
            recorded = [
                RecordedEvent(
                    row.id,
                    row.stream_id,
                    row.version,
                    row.type,
                    orjson.loads(row.data),
                    orjson.loads(row.metadata),
                    row.recorded_at or now,
                    Position(0, start + offset),
                )
                for offset, row in enumerate(plan.rows, start=1)
            ]
            for event, row in zip(recorded, plan.rows, strict=True):
                self._events.append(event)
                self._sizes.append(len(row.data) + len(row.metadata))
                self._streams.setdefault(event.stream_id, []).append(event)
                self._ids.add(event.id)
        if recorded:
            self._changes.notify()
        first, last = (recorded[0].position, recorded[-1].position) if recorded else (None, None)
        return BatchWritten(len(recorded), plan.skipped, frozenset(plan.versions), first, last)

    def _stored(
        self, rows: list[ImportRow], versions: dict[str, int]
    ) -> dict[uuid.UUID, tuple[str, int]]:
        """The stored (stream, version) of the batch's ids that exist: by a scan, only when
        there are any (a re-run, or a refused duplicate)."""
        wanted = {row.id for row in rows if row.id in self._ids}
        wanted.update(i for i in ids_to_look_up(rows, versions) if i in self._ids)
        if not wanted:
            return {}
        # Our own events all have ids and versions (a source may leave them out: not here).
        return {e.id: (e.stream_id, e.version or 0) for e in self._events if e.id in wanted}

    async def _project_inline_and_publish(
        self, recorded: tuple[RecordedEvent, ...], encoded: list[EncodedEvent]
    ) -> None:
        async with self._database.transaction("appending", write=True) as connection:
            read_model = SqliteReadModelTransaction(connection, self.url)
            for hook in self.inline_hooks:
                await hook(read_model, recorded)
        self._publish(recorded, encoded)

    def _publish(self, recorded: tuple[RecordedEvent, ...], encoded: list[EncodedEvent]) -> None:
        stream_id = recorded[0].stream_id
        self._events.extend(recorded)
        self._sizes.extend(len(e.data) + len(e.metadata) for e in encoded)
        self._streams[stream_id] = self._streams.get(stream_id, []) + list(recorded)
        self._ids.update(event.id for event in recorded)

    def _record(
        self,
        stream_id: str,
        encoded: list[EncodedEvent],
        expected: int | None,
        expected_version: ExpectedVersion,
        unpublished: Sequence[RecordedEvent] = (),
    ) -> tuple[RecordedEvent, ...]:
        """The events as they will be recorded after the published ones and the
        ``unpublished`` ones of an open transaction."""
        version = len(self._streams.get(stream_id, []))
        version += sum(1 for e in unpublished if e.stream_id == stream_id)
        if expected is not None and expected != version:
            raise ConcurrencyError(stream_id, expected_version, version)
        taken = self._ids.union(e.id for e in unpublished) if unpublished else self._ids
        duplicate = next((e.id for e in encoded if e.id in taken), None)
        if duplicate is not None:
            raise InvalidInputError(f"an event with id {duplicate} already exists")
        now = datetime.now(UTC)
        return tuple(
            RecordedEvent(
                id=event.id,
                stream_id=stream_id,
                version=version + offset,
                type=event.type,
                # Decode what was encoded so callers get the same values any backend returns,
                # and later mutation of the caller's dicts cannot reach the store.
                data=orjson.loads(event.data),
                metadata=orjson.loads(event.metadata),
                recorded_at=now,
                position=Position(0, len(self._events) + len(unpublished) + offset),
            )
            for offset, event in enumerate(encoded, start=1)
        )

    async def rewrite_events(self, rewrites: Sequence[Rewrite]) -> int:
        """Replace the events in place (the list, the streams' lists, the sizes), under the
        append lock: all at once, as a transaction would."""
        changed = 0
        async with self._append_lock.held():
            for rewrite in rewrites:
                index = rewrite.position.seq - 1
                if not 0 <= index < len(self._events):
                    continue
                old = self._events[index]
                if (
                    old.type != rewrite.old_type
                    or old.metadata.get(SCHEMA_VERSION, 1) != rewrite.old_version
                ):
                    continue  # not what was read (upgraded already)
                new = old._replace(
                    type=rewrite.type,
                    data=orjson.loads(rewrite.data),
                    metadata=orjson.loads(rewrite.metadata),
                )
                self._events[index] = new
                self._sizes[index] = len(rewrite.data) + len(rewrite.metadata)
                stream = self._streams[old.stream_id]
                stream[stream.index(old)] = new
                changed += 1
        return changed

    async def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        start = max(validate_read_stream(stream_id, from_version, limit), 1) - 1
        stop = None if limit is None else start + limit
        return self._streams.get(stream_id, [])[start:stop]

    async def read_all(
        self,
        after: Position = START,
        limit: int = DEFAULT_BATCH_SIZE,
        types: Collection[str] | None = None,
        max_bytes: int | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        return self._read_all(after, limit, types, max_bytes, partition)

    def _read_all(
        self,
        after: Position,
        limit: int,
        types: Collection[str] | None,
        max_bytes: int | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        after, limit, budget, wanted, part = validated_read(
            after, limit, types, max_bytes, partition
        )
        page: list[RecordedEvent] = []
        used = 0
        for index in range(after.seq, len(self._events)):
            event = self._events[index]
            if wanted is not None and event.type not in wanted:
                continue
            if not part.holds(event.stream_id):
                continue
            if page and used >= budget:
                return EventBatch(page, page[-1].position)  # cut by bytes
            page.append(event)
            used += self._sizes[index]
            if len(page) == limit:
                return EventBatch(page, page[-1].position)
        return EventBatch(page, max(after, self._head()))

    async def head(self) -> Position:
        return self._head()

    def _head(self) -> Position:
        return self._events[-1].position if self._events else START


class _MemoryReplay(ExclusiveReplay):
    def __init__(self, store: MemoryEventStore, read_model: SqliteReadModelTransaction) -> None:
        self.read_model = read_model
        self._store = store

    async def read_all(
        self,
        after: Position,
        limit: int,
        types: Collection[str] | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        return self._store._read_all(after, limit, types, None, partition)
