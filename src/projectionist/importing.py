"""Bulk import into our own store: the input records, their validation, the batch plan, the loop.

``EventStore.import_events`` copies existing events (millions of them, once) into the store,
keeping their streams, versions, ids, times and metadata, in batches of one transaction
each. Everything a backend does not have to know is decided here, once for every backend:

- what an input event is (an ``ImportedEvent``, or a ``RecordedEvent`` of any source) and
  how it is validated, as ``append`` validates (``ImportRejectedError`` names the event);
- the plan of a batch against the stored versions of its streams: versions must continue
  each stream contiguously, and an event whose id is already stored *with the same stream
  and version* is skipped (it was imported before: re-running an import resumes it);
- the loop and its report.

A backend only locks the batch's streams, reads their versions (and the stored copies of the
ids the plan asks about), writes the planned rows and tells what it wrote (docs/importing.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from .defaults import DEFAULT_BATCH_SIZE
from .errors import ImportRejectedError, InvalidInputError
from .events import (
    MAX_BIGINT,
    START,
    JsonObject,
    Position,
    RecordedEvent,
    encode_json_object,
    validate_batch_size,
    validate_name,
    validate_position,
    validate_version,
)

if TYPE_CHECKING:  # the store's contract imports this module for its method's types
    from .source import EventSource
    from .store import EventStore

DEFAULT_IMPORT_BATCH_SIZE = 20_000
"""Events per transaction of an import: measured faster than 5,000 or 10,000 and as fast
as 50,000 within the noise, a batch holding its stream locks about a quarter of a second on
the bench machine (docs/importing.md)."""

IMPORT_NAMESPACE = uuid.UUID("5f0c4d8e-2b1a-4f6e-9c3d-7a8b9c0d1e2f")
"""The namespace of the ids derived for input events that bring none (``derived_id``)."""


def derived_id(stream_id: str, version: int) -> uuid.UUID:
    """The id of an input event that has none: stable, so that a re-run skips it too."""
    return uuid.uuid5(IMPORT_NAMESPACE, f"{stream_id}\x00{version}")


@dataclass(frozen=True, slots=True)
class ImportedEvent:
    """One event to import: its stream and version as the other system recorded them.

    ``id`` None derives a stable id from the stream and version (``derived_id``);
    ``recorded_at`` None takes the time of the batch's transaction, as an append does.
    """

    stream_id: str
    version: int
    type: str
    data: JsonObject
    metadata: JsonObject = field(default_factory=dict)
    id: uuid.UUID | None = None
    recorded_at: datetime | None = None


ImportInput = ImportedEvent | RecordedEvent
"""What ``import_events`` takes: ``RecordedEvent``s of any source keep everything but their
position (imported events get positions after the store's head, in input order)."""

ImportEvents = Iterable[ImportInput] | AsyncIterable[ImportInput]


class ImportRow(NamedTuple):
    """An input event validated and encoded; ``ordinal`` counts the input from 0. (A tuple:
    an import makes one per event, and a tuple is the cheapest immutable record.)"""

    ordinal: int
    id: uuid.UUID
    stream_id: str
    version: int
    type: str
    data: str
    metadata: str
    recorded_at: datetime | None


@dataclass(frozen=True, slots=True)
class BatchWritten:
    """What a backend wrote of one batch."""

    written: int
    skipped: int
    streams: frozenset[str]
    first: Position | None
    last: Position | None


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import wrote: events (skipped ones not counted), distinct streams written to,
    transactions, the first and last position written, and the seconds it took."""

    events: int
    skipped: int
    streams: int
    batches: int
    first: Position | None
    last: Position | None
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """The rows of a batch to write, how many were skipped, each written stream's new version."""

    rows: list[ImportRow]
    skipped: int
    versions: dict[str, int]


def encode_row(item: object, index: int, names: set[str] | None = None) -> ImportRow:
    """Validate one input event as ``append`` validates, naming it when it is refused.
    ``names``: stream ids and types validated already (of this batch), extended here."""
    if not isinstance(item, ImportedEvent | RecordedEvent):
        raise ImportRejectedError(
            index, f"expected an ImportedEvent or a RecordedEvent, not {type(item).__name__}"
        )
    try:
        return _encode(item, index, set() if names is None else names)
    except ImportRejectedError:
        raise
    except InvalidInputError as exc:
        raise ImportRejectedError(index, str(exc)) from None


def _encode(item: ImportInput, index: int, names: set[str]) -> ImportRow:
    stream_id = _name(item.stream_id, "stream id", names)
    version = item.version
    if version is None:  # a RecordedEvent of a source that keeps no stream versions
        raise InvalidInputError(
            f"event of stream {stream_id!r} has no stream version (its source keeps none): "
            "give ImportedEvent(stream_id, version, ...) with each stream numbered 1, 2, 3..."
        )
    if type(version) is not int or not 0 < version <= MAX_BIGINT:  # the usual case: skip
        version = validate_version(version, "version", minimum=1)
    event_type = _name(item.type, "event type", names)
    if item.id is not None and not isinstance(item.id, uuid.UUID):
        raise InvalidInputError(f"event id must be a uuid.UUID, not {type(item.id).__name__}")
    recorded_at = item.recorded_at
    if recorded_at is not None and (
        not isinstance(recorded_at, datetime) or recorded_at.utcoffset() is None
    ):
        raise InvalidInputError(
            f"recorded_at must be a datetime with a time zone, not {recorded_at!r}"
        )
    return ImportRow(
        index,
        item.id or derived_id(stream_id, version),
        stream_id,
        version,
        event_type,
        encode_json_object(item.data, f"data of event {event_type!r}"),
        encode_json_object(item.metadata, f"metadata of event {event_type!r}"),
        recorded_at,
    )


def _name(value: object, what: str, valid: set[str]) -> str:
    """``validate_name``, once per distinct name of a batch: streams and types repeat."""
    if type(value) is str and value in valid:
        return value
    name = validate_name(value, what)
    valid.add(name)
    return name


ENCODE_SLICE = 500
"""Input events validated between two turns of the event loop: encoding the next batch goes
on while the current one is written, and must leave the loop free to feed the write."""


async def read_batches(events: object, batch_size: int) -> AsyncGenerator[list[ImportRow], None]:
    """The input in batches of validated rows, each checked on its own (``check_batch``)."""
    batch: list[ImportRow] = []
    names: set[str] = set()
    index = 0
    async for item in _items(events):
        batch.append(encode_row(item, index, names))
        index += 1
        if index % ENCODE_SLICE == 0:
            await asyncio.sleep(0)
        if len(batch) == batch_size:
            yield check_batch(batch)
            batch, names = [], set()
    if batch:
        yield check_batch(batch)


async def _items(events: object) -> AsyncIterator[object]:
    if isinstance(events, AsyncIterable):
        async for item in events:
            yield item
    else:
        assert isinstance(events, Iterable)  # run_import checked it
        for item in events:
            yield item


def check_batch(rows: list[ImportRow]) -> list[ImportRow]:
    """Within one batch: no id twice, and each stream's versions consecutive in input order."""
    seen: set[int] = set()  # the ids' integers: hashed in C, not by UUID.__hash__
    last: dict[str, int] = {}
    for row in rows:
        if row.id.int in seen:
            raise ImportRejectedError(row.ordinal, f"event id {row.id} appears twice in the input")
        seen.add(row.id.int)
        before = last.get(row.stream_id)
        if before is not None and row.version != before + 1:
            raise ImportRejectedError(row.ordinal, _out_of_order(row, before))
        last[row.stream_id] = row.version
    return rows


def _out_of_order(row: ImportRow, before: int) -> str:
    what = "a gap" if row.version > before + 1 else "a repeated or earlier version"
    return (
        f"stream {row.stream_id!r}: version {row.version} follows version {before} "
        f"({what}); versions of a stream must be contiguous in input order"
    )


def streams_of(rows: Sequence[ImportRow]) -> list[str]:
    """The batch's distinct streams, sorted: the order in which backends lock them (two
    imports locking the same streams in one order cannot deadlock each other)."""
    return sorted({row.stream_id for row in rows})


def stream_spans(rows: Sequence[ImportRow]) -> tuple[list[str], list[int], list[int]]:
    """The streams of a checked batch, sorted (the lock order of ``streams_of``), with the
    first and the last version each has there."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for row in rows:
        first.setdefault(row.stream_id, row.version)
        last[row.stream_id] = row.version
    names = sorted(last)
    return names, [first[name] for name in names], [last[name] for name in names]


def ids_to_look_up(rows: Sequence[ImportRow], versions: Mapping[str, int]) -> list[uuid.UUID]:
    """The ids whose stored copy the plan needs: events at or below their stream's stored
    version (imported before, or a duplicate)."""
    return [row.id for row in rows if row.version <= versions.get(row.stream_id, 0)]


def plan_batch(
    rows: Sequence[ImportRow],
    versions: Mapping[str, int],
    stored: Mapping[uuid.UUID, tuple[str, int]],
) -> ImportPlan:
    """What to write of a checked batch, given its streams' stored ``versions`` and the
    ``stored`` (stream, version) of ids already in the store; refuses a gap, a duplicate
    version or an id stored as another event."""
    write: list[ImportRow] = []
    skipped = 0
    current = dict(versions)
    for row in rows:
        at = stored.get(row.id)
        if at == (row.stream_id, row.version):
            skipped += 1  # imported before: a re-run resumes
            continue
        if at is not None:
            raise ImportRejectedError(
                row.ordinal, f"event id {row.id} is already stored as {at[0]!r} version {at[1]}"
            )
        have = current.get(row.stream_id, 0)
        if row.version != have + 1:
            raise ImportRejectedError(row.ordinal, _does_not_continue(row, have))
        current[row.stream_id] = row.version
        write.append(row)
    written = {row.stream_id: current[row.stream_id] for row in write}
    return ImportPlan(write, skipped, written)


def _does_not_continue(row: ImportRow, have: int) -> str:
    if row.version <= have:
        return (
            f"stream {row.stream_id!r} already has version {row.version} (it is at version "
            f"{have}) and this event's id {row.id} is not stored: a duplicate"
        )
    return (
        f"stream {row.stream_id!r} is at version {have}: the next version must be {have + 1}, "
        f"not {row.version} (a gap)"
    )


@dataclass
class _Tally:
    started: float = field(default_factory=time.perf_counter)
    events: int = 0
    skipped: int = 0
    batches: int = 0
    streams: set[str] = field(default_factory=set)
    first: Position | None = None
    last: Position | None = None

    def add(self, batch: BatchWritten) -> None:
        self.events += batch.written
        self.skipped += batch.skipped
        self.batches += 1
        self.streams |= batch.streams
        self.first = self.first or batch.first
        self.last = batch.last or self.last

    def report(self) -> ImportReport:
        seconds = time.perf_counter() - self.started
        return ImportReport(
            self.events,
            self.skipped,
            len(self.streams),
            self.batches,
            self.first,
            self.last,
            seconds,
        )


ImportProgress = Callable[[ImportReport], Any]
"""Called after each committed batch with the report so far (a CLI's progress line)."""


async def run_import(
    events: object,
    batch_size: int,
    write: Callable[[list[ImportRow]], Any],
    progress: ImportProgress | None = None,
) -> ImportReport:
    """Validate, plan and write the input batch by batch, reading and validating the next
    batch while one is written; a refused batch writes nothing, and the batches before it
    stay written (a re-run skips them)."""
    validate_batch_size(batch_size)
    if isinstance(events, str | bytes | Mapping) or not isinstance(
        events, Iterable | AsyncIterable
    ):
        raise InvalidInputError(
            f"import_events takes an iterable or async iterable of events, not "
            f"{type(events).__name__}"
        )
    tally = _Tally()
    batches = read_batches(events, batch_size)
    upcoming = asyncio.ensure_future(anext(batches, None))
    try:
        while (rows := await upcoming) is not None:
            # The next batch is read and validated while this one is written (the database
            # works on the write meanwhile); a refused one is raised after this one is in.
            upcoming = asyncio.ensure_future(anext(batches, None))
            tally.add(await write(rows))
            if progress is not None:
                progress(tally.report())
    finally:
        await _stop(upcoming, batches)
    return tally.report()


async def _stop(upcoming: asyncio.Future[Any], batches: AsyncGenerator[Any, None]) -> None:
    """Stop reading ahead (after a failed write, or a cancellation) and close the input."""
    upcoming.cancel()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await upcoming  # its error, if any, comes after the write's that stopped the import
    await batches.aclose()


async def import_from_source(
    store: EventStore,
    source: EventSource,
    *,
    after: Position = START,
    batch_size: int = DEFAULT_IMPORT_BATCH_SIZE,
    progress: ImportProgress | None = None,
) -> ImportReport:
    """Import every event of ``source`` after ``after``, reading it page by page in its global
    order until it is caught up with what it had committed when the import began."""
    validate_position(after, "after")
    validate_batch_size(batch_size)
    return await store.import_events(
        _pages(source, after, min(batch_size, DEFAULT_BATCH_SIZE * 10)),
        batch_size=batch_size,
        progress=progress,
    )


async def _pages(source: EventSource, after: Position, limit: int) -> AsyncIterator[RecordedEvent]:
    target = await source.last_committed()
    checkpoint = after
    while True:
        batch = await source.read_all(checkpoint, limit=limit)
        for event in batch.events:
            yield event
        checkpoint = batch.checkpoint
        if not batch.events:
            if checkpoint >= target:
                return
            # committed events held back behind an open transaction: wait for them
            await source.wait_for_events(checkpoint, timeout=source.poll_interval)
