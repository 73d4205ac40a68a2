"""In-memory event store: a real backend for tests and prototypes, nothing persisted."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime

import orjson

from ..errors import ConcurrencyError, InvalidInputError
from ..events import START, NewEvent, Position, RecordedEvent, validate_name
from ..store import (
    ANY,
    DEFAULT_BATCH_SIZE,
    AppendResult,
    EventBatch,
    EventStore,
    ExpectedVersion,
    prepare_append,
    validate_batch_size,
    validate_types,
)

SCHEMA_VERSION = 1


class MemoryEventStore(EventStore):
    """Events in a list; the list index is the global position minus one.

    Everything happens on the event loop without awaiting in the middle, so appends are
    atomic and readers can never observe a half-written append.
    """

    def __init__(self, url: str = "memory://") -> None:
        super().__init__()
        self.url = url
        self._events: list[RecordedEvent] = []
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._ids: set[object] = set()

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def apply_schema(self) -> int:
        return SCHEMA_VERSION

    async def schema_version(self) -> int:
        return SCHEMA_VERSION

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        expected, encoded = prepare_append(stream_id, events, expected_version)
        stream = self._streams.get(stream_id, [])
        if expected is not None and expected != len(stream):
            raise ConcurrencyError(stream_id, expected_version, len(stream))
        duplicate = next((e.id for e in encoded if e.id in self._ids), None)
        if duplicate is not None:
            raise InvalidInputError(f"an event with id {duplicate} already exists")
        now = datetime.now(UTC)
        recorded = tuple(
            RecordedEvent(
                id=event.id,
                stream_id=stream_id,
                version=len(stream) + offset,
                type=event.type,
                # Decode what was encoded so callers get the same values any backend returns,
                # and later mutation of the caller's dicts cannot reach the store.
                data=orjson.loads(event.data),
                metadata=orjson.loads(event.metadata),
                recorded_at=now,
                position=Position(0, len(self._events) + offset),
            )
            for offset, event in enumerate(encoded, start=1)
        )
        self._events.extend(recorded)
        self._streams[stream_id] = stream + list(recorded)
        self._ids.update(event.id for event in encoded)
        self._changes.notify()
        return AppendResult(recorded)

    async def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        validate_name(stream_id, "stream id")
        start = max(from_version, 1) - 1
        stop = None if limit is None else start + validate_batch_size(limit)
        return self._streams.get(stream_id, [])[start:stop]

    async def read_all(
        self,
        after: Position = START,
        limit: int = DEFAULT_BATCH_SIZE,
        types: Collection[str] | None = None,
    ) -> EventBatch:
        validate_batch_size(limit)
        wanted = validate_types(types)
        if wanted is None:
            page = self._events[after.seq : after.seq + limit]
        else:
            wanted_set = set(wanted)
            page = []
            for event in self._events[after.seq :]:
                if event.type in wanted_set:
                    page.append(event)
                    if len(page) == limit:
                        break
        if len(page) == limit:
            return EventBatch(page, page[-1].position)
        return EventBatch(page, max(after, self._head()))

    async def head(self) -> Position:
        return self._head()

    def _head(self) -> Position:
        return self._events[-1].position if self._events else START
