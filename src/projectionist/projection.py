"""What a projection is: a name, a version, handlers per event type, and its read model.

Handlers are async and receive the read model's open transaction: the rows they write and
the projection's checkpoint commit together. Handlers must still be safe to replay (a
rebuild replays everything), so prefer upserts to blind inserts.

    summaries = Projection("order_summaries", tables=["order_summary"])

    @summaries.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS order_summary (...)")

    @summaries.on("OrderCreated")
    async def created(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        await tx.execute("INSERT INTO order_summary ... ON CONFLICT ...", ...)

    @summaries.on_batch("ItemAdded")
    async def items(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        await tx.executemany("UPDATE ...", [(...) for event in events])
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from .errors import ConfigurationError, HandlerError
from .events import START, Position, RecordedEvent, validate_name
from .identifiers import validate_identifier
from .partitions import Partition, unit_name, validate_partition_count
from .readmodel import ReadModelStore, ReadModelTransaction
from .store import validate_batch_size, validate_max_bytes

EventHandler = Callable[[RecordedEvent, ReadModelTransaction], Awaitable[None]]
BatchHandler = Callable[[Sequence[RecordedEvent], ReadModelTransaction], Awaitable[None]]
SetupHook = Callable[[ReadModelTransaction], Awaitable[None]]
H = TypeVar("H", EventHandler, BatchHandler, SetupHook)


class Kind(enum.StrEnum):
    """How a projection is fed."""

    ASYNC = "async"
    """By a runner from its checkpoint, in batches: catch-up, then live."""
    INLINE = "inline"
    """Inside each append's own transaction: the read model is never behind."""


class OnError(enum.StrEnum):
    """What a runner does when a handler raises (after ``retries`` more attempts)."""

    STOP = "stop"
    """The projection (or partition) stops in a faulted state, with the event and the error
    recorded; other projections go on. ``projectionist restart NAME`` resumes it."""
    SKIP = "skip"
    """The event goes to the dead-letter table with its error and the checkpoint moves on."""


class Projection:
    """A read model built from events. See the module documentation for an example."""

    read_models: ReadModelStore | None = None
    """Where this projection's read model and checkpoint live when not in the application's
    read-model store: e.g. a ``RedisReadModelStore`` (``targets.redis.RedisProjection``)."""

    def __init__(
        self,
        name: str,
        *,
        version: int = 1,
        kind: Kind | str = Kind.ASYNC,
        tables: Iterable[str] = (),
        batch_size: int = 1000,
        max_batch_bytes: int = 16 * 1024 * 1024,
        start: Position = START,
        partitions: int = 1,
        on_error: OnError | str = OnError.STOP,
        retries: int = 0,
    ) -> None:
        self.name = validate_identifier(name, "projection name")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigurationError(f"projection {name!r}: version must be an integer >= 1")
        try:
            self.kind = Kind(kind)
        except ValueError:
            raise ConfigurationError(
                f"projection {name!r}: kind must be one of {', '.join(Kind)}, not {kind!r}"
            ) from None
        self.version = version
        self.tables = tuple(validate_identifier(t, "table name") for t in tables)
        self.batch_size = validate_batch_size(batch_size)
        self.max_batch_bytes = validate_max_bytes(max_batch_bytes)
        """A batch also ends once its events' stored payload reaches this many bytes."""
        if not isinstance(start, Position):
            raise ConfigurationError(f"projection {name!r}: start must be a Position")
        self.start = start
        self.partitions = validate_partition_count(name, partitions)
        """Streams are split over this many partitions (by a stable hash of the stream id),
        each with its own checkpoint, possibly on different workers. Changing it needs a
        new version (a blue/green rebuild) or a rebuild."""
        if self.partitions > 1 and self.kind is Kind.INLINE:
            raise ConfigurationError(f"projection {name!r}: inline projections have no partitions")
        try:
            self.on_error = OnError(on_error)
        except ValueError:
            raise ConfigurationError(
                f"projection {name!r}: on_error must be one of {', '.join(OnError)}, "
                f"not {on_error!r}"
            ) from None
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise ConfigurationError(f"projection {name!r}: retries must be an integer 0..100")
        self.retries = retries
        """How many more times a failing event is tried (with backoff) before ``on_error``."""
        """Where the projection begins (and a rebuild replays from): START, or a position
        such as ``await store.head()`` to skip history."""
        self._handlers: dict[str, tuple[bool, EventHandler | BatchHandler]] = {}
        self._setup: SetupHook | None = None
        self._teardown: SetupHook | None = None

    def __repr__(self) -> str:
        return f"Projection({self.name!r}, version={self.version}, kind={self.kind.value!r})"

    @property
    def units(self) -> list[str]:
        """The names of its units of work: the projection itself, or each partition."""
        return [unit_name(self.name, part) for part in self.partition_list]

    @property
    def partition_list(self) -> list[Partition | None]:
        if self.partitions == 1:
            return [None]
        return [Partition(index, self.partitions) for index in range(self.partitions)]

    @property
    def types(self) -> frozenset[str]:
        """The event types this projection handles; only these are read and decoded."""
        return frozenset(self._handlers)

    def on(self, *types: str) -> Callable[[EventHandler], EventHandler]:
        """Register ``async def handler(event, tx)`` for each of ``types``."""
        return self._register(types, batch=False)  # type: ignore[return-value]

    def on_batch(self, *types: str) -> Callable[[BatchHandler], BatchHandler]:
        """Register ``async def handler(events, tx)``: consecutive events of ``types`` at once.

        Use it for set-based SQL (one ``executemany`` for the whole run of events).
        """
        return self._register(types, batch=True)  # type: ignore[return-value]

    def _register(
        self, types: tuple[str, ...], *, batch: bool
    ) -> Callable[[EventHandler | BatchHandler], EventHandler | BatchHandler]:
        if not types:
            raise ConfigurationError(f"projection {self.name!r}: name at least one event type")

        def register(handler: EventHandler | BatchHandler) -> EventHandler | BatchHandler:
            for type_ in types:
                validate_name(type_, "event type")
                if type_ in self._handlers:
                    raise ConfigurationError(
                        f"projection {self.name!r} already has a handler for {type_!r}"
                    )
                self._handlers[type_] = (batch, handler)
            return handler

        return register

    def setup(self, hook: SetupHook) -> SetupHook:
        """Register ``async def setup(tx)`` that creates the read model (idempotently)."""
        self._setup = hook
        return hook

    def teardown(self, hook: SetupHook) -> SetupHook:
        """Register ``async def teardown(tx)`` that removes the read model, for rebuilds.

        Without one, a rebuild drops the tables named in ``tables``.
        """
        self._teardown = hook
        return hook

    async def run_setup(self, tx: ReadModelTransaction) -> None:
        if self._setup is not None:
            await self._setup(tx)

    async def run_teardown(self, tx: ReadModelTransaction) -> None:
        if self._teardown is not None:
            await self._teardown(tx)
        else:
            await tx.drop_tables(self.tables)

    async def apply(self, events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        """Apply events in order: each run of consecutive events with one batch handler goes
        to it in one call; other events go one by one. Unhandled types are skipped."""
        handlers = self._handlers
        for (batch, handler), run in itertools.groupby(
            (event for event in events if event.type in handlers),
            key=lambda event: handlers[event.type],
        ):
            events_of_run = list(run)
            if batch:
                await self._call(handler, events_of_run, events_of_run[0], tx)
            else:
                for event in events_of_run:
                    await self._call(handler, event, event, tx)

    async def _call(
        self,
        handler: EventHandler | BatchHandler,
        argument: RecordedEvent | list[RecordedEvent],
        event: RecordedEvent,
        tx: ReadModelTransaction,
    ) -> None:
        try:
            await handler(argument, tx)  # type: ignore[arg-type]
        except HandlerError:
            raise
        except Exception as exc:  # the handler's own error or its SQL's, kept as the cause
            raise HandlerError(self.name, event, failure(self.name, event, exc)) from exc


def failure(name: str, event: RecordedEvent, exc: BaseException) -> str:
    return (
        f"projection {name!r} failed on {event.type} (stream {event.stream_id!r} version "
        f"{event.version}, position {event.position}): {type(exc).__name__}: {exc}"
    )
