"""``JetStreamSource``: the messages of a NATS JetStream stream as events (nats-py).

Order and gap safety. A stream gives each message it stores the next stream sequence, and
a consumer delivers in that order: no message can appear later below one already read. The
position is ``Position(0, stream_seq)``; the checkpoint stays in the read model's
transaction, so each message is applied exactly once whatever JetStream redelivers. Nothing
is acknowledged and no durable consumer is kept for us (``cursors.py``).

Reads go through ephemeral pull consumers over the *whole* stream, one per reader position
(reused while a reader continues where its last read ended, new when it starts elsewhere),
and filter subjects, types and partitions here. Reading every message is what makes a lost
message visible: stream sequences of an unfiltered consumer only jump where messages are
gone, and messages dropped by the stream's limits (or a purge) lie below its first
sequence, so a jump into that range raises ``JetStreamHistoryLostError`` instead of skipping
silently (unless ``accept_truncated_history``).

Waking: a core NATS subscription to the source's subjects notifies ``changes`` on every
publish, so followers see new messages at once. The subscriber may hear of a publish before
the stream has stored it, so for a moment after each one a waiting reader looks again soon,
backing off (as behind an open transaction); ``poll_interval`` bounds the wait when no
wake-up arrives (another account publishing, a reconnect).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from datetime import datetime

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import StreamInfo

from ...defaults import DEFAULT_BATCH_SIZE, DEFAULT_POLL_INTERVAL
from ...errors import BackendError, ConfigurationError, StoreUnavailableError
from ...events import (
    START,
    Position,
    RecordedEvent,
    validate_position,
)
from ...partitions import Partition
from ...source import Backlog, EventBatch, EventSource, validated_read
from .cursors import Broken, PullCursor, pending_after, stamp_of
from .errors import JetStreamHistoryLostError, translated
from .mapping import (
    Message,
    MessageMap,
    subject_matches,
    validate_stream_name,
    validate_subjects,
)
from .options import checked_url, positive, redacted

logger = logging.getLogger("projectionist.nats")

CURSORS_KEPT = 16
"""Idle cursors kept for reuse (one per reader that goes on where it stopped)."""
_COUNT_PAGE = 1_000
_STORING = 1.0
"""Seconds after a publish was heard during which the stream may still be storing it."""


class JetStreamSource(EventSource):
    """The messages of JetStream stream ``stream`` (only those on ``subjects`` if given)."""

    def __init__(
        self,
        url: str,
        stream: str,
        *,
        subjects: Sequence[str] | None = None,
        mapping: MessageMap | None = None,
        accept_truncated_history: bool = False,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        wake_on_publish: bool = True,
        request_timeout: float = 5.0,
        consumer_idle: float = 300.0,
    ) -> None:
        super().__init__()
        self._server = checked_url(url)
        self.url = f"{redacted(url)}#{validate_stream_name(stream)}"
        self.stream = stream
        self.subjects = validate_subjects(subjects)
        self.mapping = (mapping or MessageMap()).validated()
        self.accept_truncated_history = bool(accept_truncated_history)
        self.poll_interval = positive(poll_interval, "poll_interval")
        self.wake_on_publish = bool(wake_on_publish)
        self._timeout = positive(request_timeout, "request_timeout")
        self._idle = positive(consumer_idle, "consumer_idle")
        self._client: Client | None = None
        self._wakers: list[Subscription] = []
        self._cursors: list[PullCursor] = []
        self._heard = float("-inf")  # when a publish on the source's subjects was last heard

    # -- connecting ----------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        client = await self._connect()
        try:
            info = await self._stream_info(client)
            if self.wake_on_publish:
                for subject in self.subjects or tuple(info.config.subjects or ()):
                    self._wakers.append(await client.subscribe(subject, cb=self._woken))
        except BaseException:
            self._wakers.clear()
            await client.close()
            raise
        self._client = client

    async def _connect(self) -> Client:
        # One retry when connecting (nats-py counts the first try), so a wrong address fails
        # within seconds; once connected, reconnect for as long as it takes.
        try:
            client = await nats.connect(
                self._server,
                connect_timeout=self._timeout,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                error_cb=_quiet,
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise StoreUnavailableError(
                f"cannot connect to NATS at {redacted(self._server)}: {exc or type(exc).__name__}"
            ) from exc
        client.options["max_reconnect_attempts"] = -1
        return client

    async def _woken(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        self.changes.notify()

    async def _head_and_held_back(self) -> tuple[Position, bool]:
        """The head; and, just after a publish was heard, that a message may be on its way
        into the stream (the waiting loop then looks again soon, backing off)."""
        return await self.head(), time.monotonic() - self._heard < _STORING

    async def close(self) -> None:
        client, self._client = self._client, None
        cursors, self._cursors = self._cursors, []
        self._wakers.clear()
        if client is None:
            return
        for cursor in cursors:  # (with the server away, each would wait for its timeout)
            await (cursor.delete(self._timeout) if client.is_connected else cursor.discard())
        await client.close()

    @property
    def client(self) -> Client:
        if self._client is None:
            raise ConfigurationError(f"the JetStream source {self.url} is not open: open() it")
        return self._client

    async def _stream_info(self, client: Client | None = None) -> StreamInfo:
        js = (client or self.client).jetstream(timeout=self._timeout)
        try:
            with translated("reading the stream info", self.url):
                return await js.stream_info(self.stream)
        except BackendError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                raise StoreUnavailableError(
                    f"JetStream has no stream {self.stream!r} at {redacted(self._server)}: "
                    "create it, or fix the name"
                ) from exc.__cause__
            raise

    # -- reading -------------------------------------------------------------------------

    async def read_all(
        self,
        after: Position = START,
        limit: int = DEFAULT_BATCH_SIZE,
        types: Collection[str] | None = None,
        max_bytes: int | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        after, limit, budget, wanted, part = validated_read(
            after, limit, types, max_bytes, partition
        )
        cursor, messages = await self._messages(after.seq, limit)
        try:
            await self._check_history(after.seq, messages)
            events, checkpoint, rest = self._page(after.seq, messages, wanted, part, budget)
        except BaseException:
            await cursor.discard()
            raise
        cursor.position, cursor.buffer = checkpoint, rest + cursor.buffer
        await self._park(cursor)
        return EventBatch(events, Position(0, checkpoint))

    async def _messages(self, after: int, limit: int) -> tuple[PullCursor, list[Message]]:
        """The next messages after stream sequence ``after``, and the cursor that read them
        (a broken cursor is replaced once; a second failure means the server is not well)."""
        cursor = await self._cursor_at(after)
        for attempt in (1, 2):
            try:
                with translated("reading", self.url):
                    return cursor, await self._next(cursor, limit)
            except Broken as exc:
                await cursor.discard()
                if attempt == 2:
                    raise StoreUnavailableError(f"reading {self.url} failed: {exc}") from exc
                cursor = await self._new_cursor(after)
            except BaseException:
                await cursor.discard()
                raise
        raise AssertionError("unreachable")

    async def _next(self, cursor: PullCursor, limit: int) -> list[Message]:
        if cursor.buffer:
            taken, cursor.buffer = cursor.buffer[:limit], cursor.buffer[limit:]
            return taken
        return await cursor.pull(limit, self._timeout)

    async def _cursor_at(self, after: int) -> PullCursor:
        """An idle cursor that has handed out up to ``after``, else a new one. A cursor idle
        for half the server's inactivity limit may be gone: it is replaced."""
        for cursor in self._cursors:
            if cursor.position == after:
                self._cursors.remove(cursor)
                if cursor.idle_for() < self._idle / 2:
                    return cursor
                await cursor.delete(self._timeout)
                break
        return await self._new_cursor(after)

    async def _new_cursor(self, after: int) -> PullCursor:
        with translated("creating a consumer on", self.url):
            return await PullCursor.create(
                self.client, self.stream, after, self._timeout, self._idle
            )

    async def _park(self, cursor: PullCursor) -> None:
        self._cursors.append(cursor)
        if len(self._cursors) > CURSORS_KEPT:
            oldest = min(self._cursors, key=lambda kept: kept.used)
            self._cursors.remove(oldest)
            await oldest.delete(self._timeout)

    def _page(
        self,
        after: int,
        messages: list[Message],
        wanted: list[str] | None,
        part: Partition,
        budget: int,
    ) -> tuple[list[RecordedEvent], int, list[Message]]:
        """The events of ``messages`` that pass the filters, the sequence scanned up to,
        and the messages left once the page reached ``budget`` bytes."""
        events: list[RecordedEvent] = []
        size, checkpoint = 0, after
        for index, message in enumerate(messages):
            checkpoint = message.seq
            event = self._event_if_wanted(message, wanted, part)
            if event is None:
                continue
            events.append(event)
            size += message.size
            if size >= budget:
                return events, checkpoint, messages[index + 1 :]
        return events, checkpoint, []

    def _event_if_wanted(
        self, message: Message, wanted: list[str] | None, part: Partition
    ) -> RecordedEvent | None:
        if self.subjects and not any(subject_matches(s, message.subject) for s in self.subjects):
            return None
        stream_id = self.mapping.stream_of(message)
        type_ = self.mapping.type_of(message)
        if (wanted is not None and type_ not in wanted) or not part.holds(stream_id):
            return None
        return self.mapping.event(self.stream, message, stream_id, type_)

    async def _check_history(self, after: int, messages: list[Message]) -> None:
        """Raise when messages after ``after`` are gone: the first message read is not the
        next sequence (or none was read) and the stream now starts beyond ``after + 1``."""
        if messages and messages[0].seq == after + 1:
            return
        state = (await self._stream_info()).state
        first = state.first_seq or 0
        if not messages and after > (state.last_seq or 0):
            raise BackendError(
                f"the checkpoint {after} is past the last message of {self.url} "
                f"({state.last_seq or 0}): was the stream deleted and created again?"
            )
        if first <= after + 1:
            return  # a jump over deleted messages of the stream, not over lost history
        lost = (after + 1, first - 1)
        if self.accept_truncated_history:
            logger.warning(
                "%s: messages %d to %d are gone, read on from %d", self.url, *lost, first
            )
            return
        raise JetStreamHistoryLostError(
            f"messages {lost[0]} to {lost[1]} of {self.url} are gone (the stream now starts at "
            f"{first}: its limits, max age or a purge dropped them); reading on would skip "
            "them. Rebuild into a stream that keeps its history, or pass "
            "accept_truncated_history=True to read on from the first message that is left",
            *lost,
        )

    # -- where the stream is -------------------------------------------------------------

    async def head(self) -> Position:
        """The last message of the source's subjects (of the stream without subjects)."""
        if not self.subjects:
            return Position(0, (await self._stream_info()).state.last_seq or 0)
        last = 0
        for subject in self.subjects:
            message = await self._message_by_subject(subject, None)
            last = max(last, 0 if message is None else message[0])
        return Position(0, last)

    async def _message_by_subject(
        self, subject: str, after: int | None
    ) -> tuple[int, datetime] | None:
        """The last message on ``subject``, or (``after``) the first one after it."""
        js = self.client.jetstream(timeout=self._timeout)
        try:
            with translated("reading a message of", self.url):
                if after is None:
                    raw = await js.get_msg(self.stream, subject=subject)
                else:
                    raw = await js.get_msg(self.stream, seq=after + 1, subject=subject, next=True)
        except BackendError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                return None
            raise
        return raw.seq or 0, stamp_of(raw.time)

    async def count_after(self, after: Position, partition: Partition | None = None) -> int:
        """Exact: the consumers' pending counts; with a partition, by reading the headers
        of every message after ``after`` (rebuilds and verify ask without one)."""
        after = validate_position(after, "after")
        if partition is not None and partition.validate().count > 1:
            return await self._count_by_reading(after, partition)
        return await self._pending(after.seq)

    async def _pending(self, after: int) -> int:
        counted = 0
        for subject in self.subjects or (None,):
            with translated("counting the messages of", self.url):
                counted += await pending_after(
                    self.client, self.stream, subject, after, self._timeout, self._idle
                )
        return counted

    async def _count_by_reading(self, after: Position, partition: Partition) -> int:
        counted = 0
        while True:
            batch = await self.read_all(after, _COUNT_PAGE, partition=partition)
            counted += len(batch.events)
            if batch.checkpoint == after:
                return counted
            after = batch.checkpoint

    async def backlog(self, after: Position, partition: Partition | None = None) -> Backlog:
        """The pending count of a consumer (one request), shared evenly by the partitions
        (an estimate then); ``oldest`` is the first message waiting, of any partition."""
        after = validate_position(after, "after")
        parts = 1 if partition is None else partition.validate().count
        pending = await self._pending(after.seq)
        if pending == 0:
            return Backlog(0, False, None)
        oldest = [
            found[1]
            for subject in self.subjects or (">",)
            if (found := await self._message_by_subject(subject, after.seq)) is not None
        ]
        return Backlog(pending // parts, parts > 1, min(oldest, default=None))


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback: what fails reaches callers as our errors; a reconnect is
    only worth a debug line."""
    logger.debug("NATS connection: %s", exc)
