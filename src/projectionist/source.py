"""The event source contract: what the engine needs to *read* events, whoever stored them.

Runners, rebuilds of async projections, verify, status and ``wait_for`` read through an
``EventSource`` only; ``store.EventStore`` extends it with what our own store adds (append,
streams, inline hooks, exclusive replay, your own transaction). A source over events that
another system wrote implements this class alone (docs/sources.md).

Checkpoints are opaque positions that the engine keeps in the read model's database, in the
same transaction as its rows, whatever the source.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, NamedTuple, Self

from .changes import ChangeSignal
from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_POLL_INTERVAL
from .errors import ConfigurationError, EventDecodingError
from .events import (
    START,
    JsonObject,
    Position,
    RecordedEvent,
    validate_batch_size,
    validate_max_bytes,
    validate_position,
    validate_types,
)
from .partitions import Partition
from .upcasting import NO_UPCASTERS, Upcasters


@dataclass(frozen=True, slots=True)
class EventBatch:
    """A page of the global order.

    ``checkpoint`` is where the next read continues from. It may lie beyond the last event of
    the page when a type filter left out events: those were scanned and need no second look.
    """

    events: list[RecordedEvent]
    checkpoint: Position


Decoder = Callable[[Any], JsonObject]
"""Turns a stored payload (the column's or message's value as the driver returns it: str,
bytes, ...) into an event's ``data``, a JSON-like dict. A source takes one as ``decode=``."""


def decoded(decode: Decoder, payload: object, where: str) -> JsonObject:
    """``decode(payload)``, checked to be a dict; any failure is an ``EventDecodingError``
    naming ``where`` (the event's position or sequence), with the decoder's error as cause."""
    try:
        data = decode(payload)
    except Exception as exc:
        raise EventDecodingError(
            f"cannot decode the payload of {where}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise EventDecodingError(
            f"the payload of {where} decoded to {type(data).__name__}, not a dict (a JSON object)"
        )
    return data


class ReadRequest(NamedTuple):
    """``read_all``'s arguments, checked (``validated_read``): what every source does first."""

    after: Position
    limit: int
    budget: int
    """``max_bytes``, or a bound no page reaches when it was None."""
    types: list[str] | None
    """Sorted, unrepeated; None: every type."""
    partition: Partition
    """Partition(0, 1) when none was given: every stream."""


def validated_read(
    after: object, limit: object, types: Collection[str] | None, max_bytes: object,
    partition: Partition | None,
) -> ReadRequest:  # fmt: skip
    """Check ``read_all``'s arguments as every source must (InvalidInputError if not)."""
    return ReadRequest(
        validate_position(after, "after"),
        validate_batch_size(limit),
        validate_max_bytes(max_bytes),
        validate_types(types),
        partition.validate() if partition is not None else Partition(0, 1),
    )


BACKLOG_COUNTED = 10_000
"""A backlog is counted event by event up to this many, and estimated beyond (status and
metrics stay cheap however far a projection is behind)."""


@dataclass(frozen=True, slots=True)
class Backlog:
    """The committed events after a position: what a projection there still has to process,
    including events readers cannot see yet (held back by an older open append)."""

    events: int
    estimated: bool
    """True when more than ``BACKLOG_COUNTED`` events wait: ``events`` is then an estimate
    from positions (rolled-back appends leave gaps in them, so it may read a little high)."""
    oldest: datetime | None
    """When the first waiting event was recorded (None when nothing waits)."""

    @staticmethod
    def measured(
        counted: int, reached: int | None, last: int | None, oldest: datetime | None, parts: int
    ) -> Backlog:
        """From ``counted`` events (at most BACKLOG_COUNTED) ending at position ``reached``,
        and the store's ``last`` position; ``parts`` partitions share what lies beyond."""
        if counted < BACKLOG_COUNTED or reached is None or last is None:
            return Backlog(counted, False, oldest)
        return Backlog(counted + max(0, last - reached) // parts, True, oldest)


@dataclass(frozen=True, slots=True)
class HeldBack:
    """Committed events that no reader can see yet, because an older transaction that
    appended to this store is still open (docs/global-order.md)."""

    seconds: float
    """How long the first of them has waited."""
    by: str | None
    """The open appending transaction (process id, state, age; never its SQL text)."""


class OpenClose:
    """``async with thing:`` opens it and closes it, for classes with open() and close()."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class EventSource(OpenClose, abc.ABC):
    """Events in one global order that readers can page through after a checkpoint.

    The promise a source makes: a reader that continues from ``batch.checkpoint`` never
    skips or repeats an event, so an event must be returned only once every event before it
    in the order is visible. Use it as an async context manager, or ``open()``/``close()``.
    """

    url: str
    """Where the events come from, with any password removed (safe to log and show)."""

    poll_interval: float = DEFAULT_POLL_INTERVAL
    """Seconds between checks for new events when no wake-up arrives."""

    _upcasters: Upcasters = NO_UPCASTERS

    def __init__(self) -> None:
        self._changes = ChangeSignal()

    @property
    def upcasters(self) -> Upcasters:
        """The upcasters every consumer applies to this source's events as it reads them
        (docs/schema-evolution.md); our own store also records schema versions from them."""
        return self._upcasters

    def use_upcasters(self, upcasters: Upcasters) -> None:
        """Read (and, on our own store, append) with ``upcasters`` from now on."""
        if not isinstance(upcasters, Upcasters):
            raise ConfigurationError(
                f"upcasters must be an Upcasters registry, not {type(upcasters).__name__}"
            )
        self._upcasters = upcasters

    @property
    def changes(self) -> ChangeSignal:
        """Notified when new events may exist; ``notify()`` it after writing events in this
        process to wake readers at once (else they see them within ``poll_interval``)."""
        return self._changes

    async def open(self) -> None:
        """Connect (nothing to do by default)."""

    async def close(self) -> None:
        """Release what ``open()`` took (nothing by default). Safe to call twice."""

    @abc.abstractmethod
    async def read_all(
        self,
        after: Position = START,
        limit: int = DEFAULT_BATCH_SIZE,
        types: Collection[str] | None = None,
        max_bytes: int | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        """At most ``limit`` events after ``after`` in global order, only of ``types`` if given
        and only of the streams in ``partition`` if given (see ``partitions.partition_of``).

        With ``max_bytes`` the page also ends once its events' data and metadata reach that
        size (it always holds at least one event), so memory stays bounded whatever the
        events weigh. A source filters on its side where it can; the batch's checkpoint may
        lie beyond its last event when filtered events were scanned.

        An event is returned only once every event before it in the global order is visible:
        a reader that continues from ``batch.checkpoint`` never skips or repeats an event.
        """

    @abc.abstractmethod
    async def head(self) -> Position:
        """The position of the last event readers can see (START when there is none)."""

    @abc.abstractmethod
    async def count_after(self, after: Position, partition: Partition | None = None) -> int:
        """How many visible events lie after ``after``, only of the streams in ``partition``
        if given (an exact count; for a projection's lag see ``backlog``)."""

    async def backlog(self, after: Position, partition: Partition | None = None) -> Backlog:
        """The events after ``after``: a projection's lag, at a bounded cost. By default the
        exact ``count_after``, with no age; a source that can estimate cheaply overrides it."""
        return Backlog(await self.count_after(after, partition), False, None)

    async def held_back(self) -> HeldBack | None:
        """Committed events readers cannot see yet, and what holds them back (None: none,
        or the source cannot tell)."""
        return None

    async def last_committed(self) -> Position:
        """The last committed event, even if readers cannot see it yet. To catch up "to
        now", aim here and wait. By default the head."""
        return await self.head()

    async def wait_for_events(
        self, after: Position, timeout: float, *, since: int | None = None
    ) -> bool:
        """Wait until an event after ``after`` is visible; False when ``timeout`` passed first.

        Woken by ``changes``; ``poll_interval`` bounds the wait when a wake-up cannot arrive
        (another process writing, a lost notification).

        ``since`` is a ``changes.token`` the caller took before its own read found nothing:
        a change after it returns True at once, without looking again (the caller's next
        read is that look), so True then means an event *may* be visible.
        """
        return await self._wait_for_head(lambda head: head > after, timeout, since)

    async def wait_until_visible(self, position: Position, timeout: float = 5.0) -> bool:
        """Wait until readers can see ``position``; False when ``timeout`` passed first."""
        return await self._wait_for_head(lambda head: head >= position, timeout)

    async def _wait_for_head(
        self, reached: Callable[[Position], bool], timeout: float, since: int | None = None
    ) -> bool:
        deadline = time.monotonic() + timeout
        held_back_pause = 0.0005
        if since is not None and self._changes.token != since:
            return True  # changed during the caller's read: its next read looks
        token = self._changes.token if since is None else since
        while True:
            head, held_back = await self._head_and_held_back()
            if reached(head):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pause = self.poll_interval
            if held_back:
                # Committed events wait behind an open transaction. Its end sends no
                # notification when it appended nothing, so look again soon, backing off.
                pause = held_back_pause = min(held_back_pause * 2, self.poll_interval)
            woken = await self._changes.wait(token, min(remaining, pause))
            if woken and since is not None:
                return True  # the caller reads at once: a look here would be a second one
            token = self._changes.token

    async def _head_and_held_back(self) -> tuple[Position, bool]:
        """The head, and whether events exist beyond it that readers cannot see yet."""
        return await self.head(), False
