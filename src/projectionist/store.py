"""The event store contract that every backend implements: our own store.

It extends ``source.EventSource`` (what the engine reads) with what only our store has:
append, streams, inline hooks, exclusive replay and your own transaction. The engine and
the CLI speak only these contracts; they never import a backend.
"""

from __future__ import annotations

import abc
import contextlib
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from .changes import ChangeSignal as ChangeSignal  # re-exported: its old home
from .errors import ConfigurationError, InvalidInputError
from .events import (
    EncodedEvent,
    NewEvent,
    Position,
    RecordedEvent,
    encode_events,
    validate_name,
    validate_version,
)
from .importing import (
    DEFAULT_IMPORT_BATCH_SIZE,
    BatchWritten,
    ImportEvents,
    ImportProgress,
    ImportReport,
    ImportRow,
    run_import,
)
from .partitions import Partition
from .readmodel import ReadModelStore, ReadModelTransaction
from .source import BACKLOG_COUNTED as BACKLOG_COUNTED  # re-exported: their old home
from .source import Backlog as Backlog
from .source import EventBatch as EventBatch
from .source import EventSource
from .source import HeldBack as HeldBack
from .source import OpenClose as OpenClose
from .upcasting import NO_UPCASTERS, Rewrite, Upcasters


class StreamState(enum.Enum):
    """Expected versions that are not a number."""

    ANY = "any"
    """Append whatever the stream's version is."""
    NO_STREAM = "no stream"
    """Append only if the stream does not exist yet (the same as expected version 0)."""

    def __str__(self) -> str:
        return self.value


ANY = StreamState.ANY
NO_STREAM = StreamState.NO_STREAM
ExpectedVersion = int | StreamState


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append wrote: the recorded events, the stream's new version, the last position."""

    events: tuple[RecordedEvent, ...]

    @property
    def version(self) -> int:
        version = self.events[-1].version
        assert version is not None  # our own stores number every stream's events
        return version

    @property
    def position(self) -> Position:
        return self.events[-1].position


def expected_version_number(expected: ExpectedVersion) -> int | None:
    """Map an expected version to None (any) or the exact version the stream must have."""
    if expected is ANY:
        return None
    if expected is NO_STREAM:
        return 0
    try:
        return validate_version(expected, "expected_version")
    except InvalidInputError:
        raise InvalidInputError(
            f"expected_version must be ANY, NO_STREAM or a version from 0 to 2**63 - 1, "
            f"got {expected!r}"
        ) from None


def prepare_append(
    stream_id: str,
    events: Sequence[NewEvent],
    expected_version: ExpectedVersion,
    upcasters: Upcasters = NO_UPCASTERS,
) -> tuple[int | None, list[EncodedEvent]]:
    """Validate an append completely before any backend touches storage; the events'
    schema versions are recorded from ``upcasters`` (the store's) where above 1."""
    validate_name(stream_id, "stream id")
    encoded = encode_events(events, stream_id, upcasters.stamper())
    return expected_version_number(expected_version), encoded


InlineHook = Callable[[ReadModelTransaction, Sequence[RecordedEvent]], Awaitable[None]]
"""Called inside an append's transaction with the events it recorded (inline projections)."""


class ExclusiveReplay(abc.ABC):
    """A transaction that keeps appends out while it reads every committed event.

    For rebuilding inline projections: nothing can be appended (and so projected inline)
    between the replay's last read and its commit.
    """

    read_model: ReadModelTransaction

    @abc.abstractmethod
    async def read_all(
        self,
        after: Position,
        limit: int,
        types: Collection[str] | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        """Like EventStore.read_all, inside this transaction."""


@contextlib.asynccontextmanager
async def append_savepoint(sql: ReadModelTransaction) -> AsyncIterator[None]:
    """One append inside a caller's transaction: if it fails (an inline projection raised),
    its rows and its inline rows are undone and the caller's transaction goes on, as an
    append on PostgreSQL does (there asyncpg's nested transaction is this savepoint)."""
    await sql.execute("SAVEPOINT projectionist_append")
    try:
        yield
    except BaseException:
        await sql.execute("ROLLBACK TO SAVEPOINT projectionist_append")
        await sql.execute("RELEASE SAVEPOINT projectionist_append")
        raise
    await sql.execute("RELEASE SAVEPOINT projectionist_append")


class StoreTransaction:
    """Your own transaction on an event store: append events and write your own rows, and
    everything commits together when the block ends, or nothing on an exception.

    The same shape on every backend. SQL uses PostgreSQL's ``$1, $2`` placeholders everywhere
    (SQLite gets them translated), exactly as in a ``ReadModelTransaction``: the statements go
    through the backend's read-model transaction on the same connection, so they are run and
    their errors translated as a projection's are. ``connection`` is the driver's own
    connection (asyncpg or aiosqlite) inside the transaction, for anything else.

    Not a ``ReadModelTransaction`` itself: checkpoints and locks are the engine's business.
    """

    def __init__(self, store: EventStore, sql: ReadModelTransaction) -> None:
        self._store = store
        self._sql = sql
        self.connection: Any = sql.connection
        self.dialect: str = sql.dialect
        """``"postgres"`` or ``"sqlite"`` (memory's rows live in SQLite)."""

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        """Like ``EventStore.append``, inside this transaction; inline projections run here
        too. Readers see the events once the transaction commits."""
        return await self._store.append_on(self.connection, stream_id, events, expected_version)

    async def execute(self, sql: str, *args: object) -> int:
        """Run one statement; return the number of rows it changed (when the driver says)."""
        return await self._sql.execute(sql, *args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        """Run one statement for each row of arguments."""
        await self._sql.executemany(sql, rows)

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """All result rows as tuples."""
        return await self._sql.fetch(sql, *args)

    async def fetchval(self, sql: str, *args: object) -> Any:
        """The first column of the first row, or None."""
        return await self._sql.fetchval(sql, *args)


class EventStore(EventSource):
    """An append-only store of events in streams, with one gap-free global order: an
    ``EventSource`` that the engine can also append to and replay exclusively.

    Use it as an async context manager, or call ``open()`` and ``close()``.
    """

    url: str
    """The store's URL with any password removed (safe to log and show)."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_hooks: list[InlineHook] = []

    def add_inline_hook(self, hook: InlineHook) -> None:
        """Run ``hook`` inside every append's transaction; if it raises, the append rolls back."""
        self.inline_hooks.append(hook)

    @abc.abstractmethod
    def read_models(self) -> ReadModelStore:
        """The read-model store in this event store's own database."""

    @abc.abstractmethod
    def exclusive_replay(self) -> AbstractAsyncContextManager[ExclusiveReplay]:
        """A transaction that blocks appends and reads every committed event."""

    @abc.abstractmethod
    async def backlog(self, after: Position, partition: Partition | None = None) -> Backlog:
        """The committed events after ``after`` (visible or not yet), only of the streams in
        ``partition`` if given: a projection's lag, at a bounded cost."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect. Raises StoreUnavailableError naming the URL when that fails."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and background tasks. Safe to call twice."""

    @abc.abstractmethod
    async def apply_schema(self) -> int:
        """Create or migrate the store's schema idempotently; return the schema version."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The applied schema version, 0 when no schema exists yet."""

    @abc.abstractmethod
    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        """Append events to one stream atomically, in one round trip.

        Raises ConcurrencyError, writing nothing, when ``expected_version`` does not match.
        """

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[StoreTransaction]:
        """Your own transaction: ``async with store.transaction() as tx: await tx.append(...);
        await tx.execute(...)``. Everything commits together when the block ends, or nothing
        on an exception; the commit wakes readers as ``append`` does.

        On SQLite and memory it is the store's one write transaction: until it ends, other
        appends wait for it (and on SQLite every read of the store, on memory every read-model
        transaction), so inside the block write through ``tx``, not through the store.
        """

    @abc.abstractmethod
    async def append_on(
        self,
        connection: Any,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        """Append on a connection inside its open transaction: the events commit with it or
        vanish with its rollback. Inline projections run there too.

        PostgreSQL takes any asyncpg connection of the store's database (its transaction
        optional); SQLite and memory take the ``connection`` of ``transaction()``'s ``tx``.
        Anything else is an InvalidInputError, before anything is written. Readers learn of
        the events after the commit by polling, unless you call ``events_committed()``
        (``transaction()`` does both for you).
        """

    def events_committed(self) -> None:
        """Wake readers after you committed events appended with ``append_on``."""
        self._changes.notify()

    @abc.abstractmethod
    async def rewrite_events(self, rewrites: Sequence[Rewrite]) -> int:
        """Store events in their upcast shape, in place (``events upgrade``, see
        ``upgrading``): each keeps its id, position, stream version and recorded_at; only
        its type, data and metadata change, and only while the stored row is still of
        ``old_type`` at ``old_version`` (a second run changes nothing). One transaction;
        returns how many events changed. Nothing is appended, so no reader is woken."""

    @abc.abstractmethod
    async def read_stream(
        self, stream_id: str, from_version: int = 1, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Events of one stream from ``from_version`` on, oldest first."""

    async def import_events(
        self,
        events: ImportEvents,
        *,
        batch_size: int = DEFAULT_IMPORT_BATCH_SIZE,
        progress: ImportProgress | None = None,
    ) -> ImportReport:
        """Copy existing events (``ImportedEvent``s, or ``RecordedEvent``s of any source)
        into this store, keeping their streams, versions, ids, times and metadata; they get
        positions after the head, in input order (docs/importing.md).

        One transaction per ``batch_size`` events, validated and checked against the stored
        versions before it writes: a refused batch (``ImportRejectedError``) writes nothing,
        the batches before it stay, and a re-run skips the events already imported. Refused
        while inline projections are attached: they would not see the imported events.
        """
        if self.inline_hooks:
            raise ConfigurationError(
                f"import into {self.url} refused: inline projections are attached and would "
                "not see the imported events; import with a store of its own (as the CLI "
                "does), then rebuild the inline projections"
            )
        return await run_import(events, batch_size, self._import_batch, progress)

    @abc.abstractmethod
    async def _import_batch(self, rows: list[ImportRow]) -> BatchWritten:
        """Write one checked batch of an import in one transaction: lock its streams (in
        ``streams_of`` order), ``plan_batch`` it against their stored versions, write the
        planned rows after the head in input order, keep the streams' bookkeeping as an
        append does, and wake readers after the commit."""
