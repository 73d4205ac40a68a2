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

    @summaries.on("OrderShipped", payload=OrderShipped)  # a msgspec Struct, pydantic, dataclass
    async def shipped(event: Event[OrderShipped], tx: ReadModelTransaction) -> None:
        await tx.execute("UPDATE ...", event.data.carrier)  # see payloads.py

Every kind of projection (this one, ``StateProjection``, ``SearchProjection``,
``RedisProjection``) takes the same options (``ProjectionOptions``): as keyword arguments
(``Projection("p", batch_size=500, on_error="skip")``), as one ``options=`` object shared by
several projections, or both (the keywords override the object).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict, TypeVar, Unpack, overload

from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_BYTES
from .errors import ConfigurationError, HandlerError, InvalidInputError
from .events import (
    START,
    Position,
    RecordedEvent,
    validate_batch_size,
    validate_max_bytes,
    validate_name,
)
from .identifiers import validate_identifier
from .partitions import MAX_PARTITIONS, Partition, unit_name
from .payloads import Event, typed_events
from .readmodel import ReadModelStore, ReadModelTransaction
from .source import EventSource

EventHandler = Callable[[RecordedEvent, ReadModelTransaction], Awaitable[None]]
BatchHandler = Callable[[Sequence[RecordedEvent], ReadModelTransaction], Awaitable[None]]
SetupHook = Callable[[ReadModelTransaction], Awaitable[None]]
H = TypeVar("H", EventHandler, BatchHandler, SetupHook)
P = TypeVar("P")
TypedHandler = Callable[[Event[P], ReadModelTransaction], Awaitable[None]]
"""A handler registered with ``payload=P``: it receives ``Event[P]``."""
TypedBatchHandler = Callable[[Sequence[Event[P]], ReadModelTransaction], Awaitable[None]]


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
    """The event goes to the dead-letter table with its error and the checkpoint moves on;
    later events of its stream are applied (for projections where order within a stream
    does not matter)."""
    PARK = "park"
    """The event goes to the dead-letter table and parks its stream for the unit: every later
    event of that stream waits behind it in the dead letters, in order, while other streams
    go on; ``projectionist dead-letters retry --stream`` applies them in order and un-parks it
    (docs/operations.md)."""


class ProjectionOptionsDict(TypedDict, total=False):
    """The options of ``ProjectionOptions`` as keyword arguments (enums also as strings)."""

    version: int
    kind: Kind | str
    batch_size: int
    max_batch_bytes: int
    start: Position
    partitions: int
    on_error: OnError | str
    retries: int
    replay_safe: bool


@dataclass(frozen=True, slots=True)
class ProjectionOptions:
    """How any projection is fed, whatever its kind; checked when made.

    ``ProjectionOptions.of(batch_size=500, on_error="skip")`` takes the same keywords as
    every projection's constructor.
    """

    version: int = 1
    """Raise it when the read model's shape or meaning changes: it is rebuilt."""
    kind: Kind = Kind.ASYNC
    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    """A batch also ends once its events' stored payload reaches this many bytes."""
    start: Position = START
    """Where the projection begins (and a rebuild replays from): START, or a position
    such as ``await store.head()`` to skip history."""
    partitions: int = 1
    """Streams are split over this many partitions (by a stable hash of the stream id),
    each with its own checkpoint, possibly on different workers. Changing it needs a
    new version (a blue/green rebuild) or a rebuild."""
    on_error: OnError = OnError.STOP
    retries: int = 0
    """How many more times a failing event is tried (with backoff) before ``on_error``."""
    replay_safe: bool = False
    """The user's claim that applying events again over the current rows leaves them as one
    clean run would (upserts of absolute values, not increments): what a partial replay
    (``Application.replay``) requires. ``testing.assert_replay_safe`` checks the claim."""

    def __post_init__(self) -> None:
        version = self.version
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigurationError("version must be an integer >= 1")
        object.__setattr__(self, "kind", _member(Kind, "kind", self.kind))
        object.__setattr__(self, "batch_size", validate_batch_size(self.batch_size))
        object.__setattr__(self, "max_batch_bytes", validate_max_bytes(self.max_batch_bytes))
        if not isinstance(self.start, Position):
            raise ConfigurationError("start must be a Position")
        partitions = self.partitions
        if isinstance(partitions, bool) or not isinstance(partitions, int):
            partitions = 0
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise ConfigurationError(f"partitions must be an integer from 1 to {MAX_PARTITIONS}")
        if partitions > 1 and self.kind is Kind.INLINE:
            raise ConfigurationError("inline projections have no partitions")
        object.__setattr__(self, "on_error", _member(OnError, "on_error", self.on_error))
        if self.on_error is OnError.PARK and self.kind is Kind.INLINE:
            raise ConfigurationError(
                "on_error='park' is for async projections: an inline projection's failure "
                "fails the append itself"
            )
        retries = self.retries
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise ConfigurationError("retries must be an integer 0..100")
        if not isinstance(self.replay_safe, bool):
            raise ConfigurationError(f"replay_safe must be True or False, not {self.replay_safe!r}")

    @classmethod
    def of(
        cls, base: ProjectionOptions | None = None, **options: Unpack[ProjectionOptionsDict]
    ) -> ProjectionOptions:
        """``base`` (default: the defaults) with the given options changed."""
        base = base or cls()
        return dataclasses.replace(
            base,
            version=options.get("version", base.version),
            kind=_member(Kind, "kind", options.get("kind", base.kind)),
            batch_size=options.get("batch_size", base.batch_size),
            max_batch_bytes=options.get("max_batch_bytes", base.max_batch_bytes),
            start=options.get("start", base.start),
            partitions=options.get("partitions", base.partitions),
            on_error=_member(OnError, "on_error", options.get("on_error", base.on_error)),
            retries=options.get("retries", base.retries),
            replay_safe=options.get("replay_safe", base.replay_safe),
        )


E = TypeVar("E", Kind, OnError)


def _member(enum_type: type[E], option: str, value: E | str) -> E:
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(enum_type)
        raise ConfigurationError(f"{option} must be one of {choices}, not {value!r}") from None


class Projection:
    """A read model built from events. See the module documentation for an example."""

    read_models: ReadModelStore | None = None
    """Where this projection's read model and checkpoint live when not in the application's
    read-model store: e.g. a ``RedisReadModelStore`` (``targets.redis.RedisProjection``)."""
    default_options: ClassVar[ProjectionOptions] = ProjectionOptions()
    """The options a kind starts from when given no ``options=``."""
    replayable: ClassVar[bool] = True
    """Whether the engine may apply its events again (a rebuild, a blue/green build,
    ``verify``, a partial replay). False for a reactor, whose effects must not run twice."""

    def __init__(
        self,
        name: str,
        *,
        tables: Iterable[str] = (),
        options: ProjectionOptions | None = None,
        **settings: Unpack[ProjectionOptionsDict],
    ) -> None:
        self.name = validate_identifier(name, "projection name")
        try:
            self.options = ProjectionOptions.of(options or self.default_options, **settings)
        except (ConfigurationError, InvalidInputError) as exc:
            raise type(exc)(f"projection {name!r}: {exc}") from None
        self.tables = tuple(validate_identifier(t, "table name") for t in tables)
        self._types: set[str] = set()
        self._handlers: dict[str, tuple[bool, EventHandler | BatchHandler]] = {}
        self._setup: SetupHook | None = None
        self._teardown: SetupHook | None = None

    # -- options (settable: a changed option is checked again) -----------------------------

    def _change(self, **change: Unpack[ProjectionOptionsDict]) -> None:
        try:
            self.options = ProjectionOptions.of(self.options, **change)
        except (ConfigurationError, InvalidInputError) as exc:
            raise type(exc)(f"projection {self.name!r}: {exc}") from None

    @property
    def version(self) -> int:
        return self.options.version

    @version.setter
    def version(self, value: int) -> None:
        self._change(version=value)

    @property
    def kind(self) -> Kind:
        return self.options.kind

    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    @property
    def max_batch_bytes(self) -> int:
        return self.options.max_batch_bytes

    @property
    def start(self) -> Position:
        return self.options.start

    @start.setter
    def start(self, value: Position) -> None:
        self._change(start=value)

    @property
    def partitions(self) -> int:
        return self.options.partitions

    @property
    def on_error(self) -> OnError:
        return self.options.on_error

    @property
    def retries(self) -> int:
        return self.options.retries

    @property
    def replay_safe(self) -> bool:
        return self.options.replay_safe

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
        return frozenset(self._types)

    def handles(self, *types: str) -> None:
        """Declare event types this projection reads, for kinds that apply whole batches
        themselves (state and search projections) rather than through handlers."""
        if not types:
            raise ConfigurationError(f"projection {self.name!r}: name at least one event type")
        for type_ in types:
            validate_name(type_, "event type")
            if type_ in self._types:
                raise ConfigurationError(
                    f"projection {self.name!r} already has a handler for {type_!r}"
                )
            self._types.add(type_)

    @overload
    def on(self, *types: str) -> Callable[[EventHandler], EventHandler]: ...
    @overload
    def on(self, *types: str, payload: type[P]) -> Callable[[TypedHandler[P]], TypedHandler[P]]: ...
    def on(self, *types: str, payload: type[Any] | None = None) -> Callable[[Any], Any]:
        """Register ``async def handler(event, tx)`` for each of ``types``.

        With ``payload=T`` (a msgspec Struct, a pydantic model or a dataclass) the handler
        receives ``Event[T]``, its ``data`` decoded into ``T`` (docs/typed-events.md)."""
        return self._register(types, batch=False, payload=payload)

    @overload
    def on_batch(self, *types: str) -> Callable[[BatchHandler], BatchHandler]: ...
    @overload
    def on_batch(
        self, *types: str, payload: type[P]
    ) -> Callable[[TypedBatchHandler[P]], TypedBatchHandler[P]]: ...
    def on_batch(self, *types: str, payload: type[Any] | None = None) -> Callable[[Any], Any]:
        """Register ``async def handler(events, tx)``: consecutive events of ``types`` at once.

        Use it for set-based SQL (one ``executemany`` for the whole run of events). With
        ``payload=T`` it receives a list of ``Event[T]``.
        """
        return self._register(types, batch=True, payload=payload)

    def _register(
        self, types: tuple[str, ...], *, batch: bool, payload: type[Any] | None
    ) -> Callable[[Any], Any]:
        if not types:
            raise ConfigurationError(f"projection {self.name!r}: name at least one event type")
        # Decided here, once: an untyped handler is stored as it is, so it costs nothing.
        typed = None if payload is None else typed_events(payload, f"projection {self.name!r}")

        def register(handler: EventHandler | BatchHandler) -> EventHandler | BatchHandler:
            self.handles(*types)
            stored = handler if typed is None else _with_payloads(handler, typed, batch=batch)
            for type_ in types:
                self._handlers[type_] = (batch, stored)
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

    async def first_position(self, source: EventSource) -> Position:
        """Where a new checkpoint of this projection begins in ``source``: ``start``
        (a reactor begins at the head)."""
        del source
        return self.start

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
        event = None
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
            event = events_of_run[-1]
        if event is not None:
            await self._send_queued(tx, event)

    async def _send_queued(self, tx: ReadModelTransaction, last: RecordedEvent) -> None:
        """The handlers' queued writes (``tx.queue``), sent before the checkpoint moves; a
        failure names the batch's last event (the runner then narrows it down)."""
        try:
            await tx.flush()
        except HandlerError:
            raise
        except Exception as exc:
            raise HandlerError(self.name, last, failure(self.name, last, exc)) from exc

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


def _with_payloads(
    handler: Callable[[Any, ReadModelTransaction], Awaitable[None]],
    typed: Callable[[RecordedEvent], Event[Any]],
    *,
    batch: bool,
) -> EventHandler | BatchHandler:
    """The handler, given its events decoded (a plain function returning the handler's
    awaitable: no coroutine of its own per call). A payload that does not validate raises
    in ``_call``, as the handler's failure."""
    if batch:

        def decoded_batch(
            events: Sequence[RecordedEvent], tx: ReadModelTransaction
        ) -> Awaitable[None]:
            return handler([typed(event) for event in events], tx)

        return decoded_batch

    def decoded(event: RecordedEvent, tx: ReadModelTransaction) -> Awaitable[None]:
        return handler(typed(event), tx)

    return decoded


def failure(name: str, event: RecordedEvent, exc: BaseException) -> str:
    return (
        f"projection {name!r} failed on {event.type} (stream {event.stream_id!r}"
        f"{'' if event.version is None else f' version {event.version}'}, position "
        f"{event.position}): {type(exc).__name__}: {exc}"
    )
