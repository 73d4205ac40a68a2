"""An ``EventSource`` over the notification log of a Python ``eventsourcing`` application.

Install with ``pip install projectionist[eventsourcing]``. The source reads the application
recorder's ``select_notifications`` in ``notification_id`` order and decodes each
notification's ``state`` with the application's own mapper (its transcoder, compressor and
cipher, and its upcasters), so custom-transcoded, compressed or encrypted events project like
any other. The library's recorders are synchronous: every call runs in a worker thread.

Why ``notification_id`` order is gap-safe (read in eventsourcing 9.5's source): the
PostgreSQL recorder takes ``LOCK TABLE ... IN EXCLUSIVE MODE`` in each inserting transaction
before it draws ids from the sequence, so writers commit in id order; SQLite has one writer
at a time, and a row's ``rowid`` is drawn inside that write transaction; the in-memory (POPO)
recorder appends under a lock. The PostgreSQL recorder's ``POSTGRES_ENABLE_DB_FUNCTIONS``
mode inserts through a database function that takes no table lock, so it is refused.
Recorders of other classes are refused too: their commit order is unknown.

How a notification becomes a ``RecordedEvent`` (docs/sources.md):

- ``stream_id`` is ``str(originator_id)`` (a UUID in its hyphenated form), ``version`` the
  ``originator_version``, ``position`` is ``Position(0, notification_id)``;
- ``type`` is the event's **topic** (``eventsourcing.utils.get_topic(Dog.Registered)``, e.g.
  ``"myapp.domain:Dog.Registered"``): unambiguous across modules, and the recorder filters
  by it in SQL;
- ``data`` is the decoded domain event's attributes without ``originator_id`` and
  ``originator_version``, made JSON-safe: UUIDs, datetimes, dates, times and Decimals become
  their text (``str``, ``isoformat()``), tuples and sets become lists, other values ``str``;
- ``recorded_at`` is the event's ``timestamp`` (every aggregate event has one); ``id`` is
  ``uuid5(originator_id, version)``, stable across reads (the library's events have no id).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from eventsourcing.application import Application as EventsourcingApplication
from eventsourcing.persistence import ApplicationRecorder, Mapper, Notification
from eventsourcing.popo import POPOApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder

from ..defaults import DEFAULT_BATCH_SIZE, DEFAULT_POLL_INTERVAL
from ..errors import ConfigurationError
from ..events import START, JsonObject, Position, RecordedEvent
from ..partitions import Partition
from ..source import (
    BACKLOG_COUNTED,
    Backlog,
    EventBatch,
    EventSource,
    ReadRequest,
    validated_read,
)

EVENT_ID_NAMESPACE = uuid.UUID("6f1d3c1e-2a4b-5c6d-8e9f-0a1b2c3d4e5f")
"""The namespace of the ids made for the library's events: uuid5(it, "stream/version")."""

_COUNT_PAGE = 5_000  # notifications per page while counting (their state is read too)
_NO_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)


class EventsourcingSource(EventSource):
    """The notification log of an ``eventsourcing`` application as an event source.

    Give it the application (its recorder and mapper are used), or an application recorder
    with the ``mapper`` that encoded its events. ``url`` names the log in logs and status.
    """

    def __init__(
        self,
        application_or_recorder: EventsourcingApplication[Any] | ApplicationRecorder,
        *,
        mapper: Mapper[Any] | None = None,
        url: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        super().__init__()
        recorder, mapper = _recorder_and_mapper(application_or_recorder, mapper)
        _refuse_unordered(recorder)
        self.recorder: ApplicationRecorder = recorder
        self.mapper: Mapper[Any] = mapper
        self.url = url or f"eventsourcing://{type(application_or_recorder).__name__}"
        self.poll_interval = poll_interval

    async def read_all(
        self,
        after: Position = START,
        limit: int = DEFAULT_BATCH_SIZE,
        types: Collection[str] | None = None,
        max_bytes: int | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        request = validated_read(after, limit, types, max_bytes, partition)
        return await asyncio.to_thread(self._read, request)

    async def head(self) -> Position:
        last = await asyncio.to_thread(self.recorder.max_notification_id)
        return START if not last else Position(0, last)

    async def count_after(self, after: Position, partition: Partition | None = None) -> int:
        counted, _ = await asyncio.to_thread(self._count, after, partition, None)
        return counted

    async def backlog(self, after: Position, partition: Partition | None = None) -> Backlog:
        """Counted up to BACKLOG_COUNTED notifications, estimated from ids beyond."""
        counted, reached = await asyncio.to_thread(self._count, after, partition, BACKLOG_COUNTED)
        last = await asyncio.to_thread(self.recorder.max_notification_id)
        parts = 1 if partition is None else partition.count
        return Backlog.measured(counted, reached, last, None, parts)

    def _read(self, request: ReadRequest) -> EventBatch:
        after, limit, budget, types, partition = request
        # Read the head first: every notification up to it is committed (writers commit in
        # id order), so a short page may move the checkpoint up to it past filtered ones.
        head = self.recorder.max_notification_id() or 0
        if head <= after.seq:
            return EventBatch([], after)
        if types is not None and not types:  # no types: nothing matches (the recorder
            return EventBatch([], Position(0, head))  # would read "no topics" as all)
        notifications = self._select(after.seq, limit, head, types)
        events: list[RecordedEvent] = []
        size = 0
        for notification in notifications:
            if not partition.holds(str(notification.originator_id)):
                continue
            events.append(self._decode(notification))
            size += len(notification.state)
            if size >= budget:
                return EventBatch(events, events[-1].position)
        if len(notifications) < limit:
            return EventBatch(events, Position(0, head))
        return EventBatch(events, Position(0, notifications[-1].id))

    def _select(
        self, after: int, limit: int, stop: int, types: Collection[str] | None
    ) -> Sequence[Notification]:
        return self.recorder.select_notifications(
            after, limit, stop=stop, topics=sorted(types or ()), inclusive_of_start=False
        )

    def _count(
        self, after: Position, partition: Partition | None, at_most: int | None
    ) -> tuple[int, int | None]:
        """Notifications after ``after`` (of ``partition``), counted page by page up to
        ``at_most``; and the id the count reached (None when none were counted)."""
        counted, reached = 0, None
        start = after.seq
        while at_most is None or counted < at_most:
            page = self.recorder.select_notifications(start, _COUNT_PAGE, inclusive_of_start=False)
            for notification in page:
                if partition is None or partition.holds(str(notification.originator_id)):
                    counted += 1
                    reached = notification.id
                    if at_most is not None and counted >= at_most:
                        break
            if len(page) < _COUNT_PAGE:
                break
            start = page[-1].id
        return counted, reached

    def _decode(self, notification: Notification) -> RecordedEvent:
        domain_event = self.mapper.to_domain_event(notification)
        state = dict(vars(domain_event))
        stream_id = str(state.pop("originator_id"))
        version = state.pop("originator_version")
        timestamp = state.get("timestamp")
        return RecordedEvent(
            id=uuid.uuid5(EVENT_ID_NAMESPACE, f"{stream_id}/{version}"),
            stream_id=stream_id,
            version=version,
            type=notification.topic,
            data=json_safe_object(state),
            metadata={},
            recorded_at=timestamp if isinstance(timestamp, datetime) else _NO_TIMESTAMP,
            position=Position(0, notification.id),
        )


def _recorder_and_mapper(
    given: EventsourcingApplication[Any] | ApplicationRecorder, mapper: Mapper[Any] | None
) -> tuple[ApplicationRecorder, Mapper[Any]]:
    if isinstance(given, EventsourcingApplication):
        recorder = given.recorder
        if not isinstance(recorder, ApplicationRecorder):
            raise ConfigurationError(
                f"the application's recorder {type(recorder).__name__} keeps no notification log"
            )
        return recorder, mapper or given.mapper
    if not isinstance(given, ApplicationRecorder):
        raise ConfigurationError(
            "EventsourcingSource takes an eventsourcing Application or ApplicationRecorder, "
            f"not {type(given).__name__}"
        )
    if mapper is None:
        raise ConfigurationError(
            "EventsourcingSource over a bare recorder needs mapper=: the one that encoded "
            "its events (the application's mapper)"
        )
    return given, mapper


def _refuse_unordered(recorder: ApplicationRecorder) -> None:
    """Refuse recorders whose writers may commit out of notification_id order."""
    # The PostgreSQL recorder's module imports psycopg: look it up only if it is loaded
    # already, since a recorder of its class cannot exist otherwise.
    postgres = sys.modules.get("eventsourcing.postgres")
    if postgres is not None and isinstance(recorder, postgres.PostgresApplicationRecorder):
        if recorder.datastore.enable_db_functions:
            raise ConfigurationError(
                "this PostgreSQL recorder inserts through database functions "
                "(POSTGRES_ENABLE_DB_FUNCTIONS), which take no table lock: its writers may "
                "commit out of notification_id order and a follower would skip events"
            )
        return
    if not isinstance(recorder, SQLiteApplicationRecorder | POPOApplicationRecorder):
        raise ConfigurationError(
            f"EventsourcingSource cannot tell whether {type(recorder).__name__}'s writers "
            "commit in notification_id order; it reads the PostgreSQL, SQLite and in-memory "
            "(POPO) recorders"
        )


_TEXT_FORMS: dict[type, Callable[[Any], str]] = {
    uuid.UUID: str,
    Decimal: str,
    datetime: datetime.isoformat,
    date: date.isoformat,
    time: time.isoformat,
}


def json_safe(value: object) -> object:
    """``value`` as JSON can hold it: see the module docstring for what becomes text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return json_safe_object(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item) for item in value]
    for kind, text in _TEXT_FORMS.items():
        if isinstance(value, kind):
            return text(value)
    return str(value)


def json_safe_object(values: Mapping[Any, Any]) -> JsonObject:
    return {str(key): json_safe(item) for key, item in values.items()}
