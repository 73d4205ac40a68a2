"""In-memory projections: live state fed by new events, and folding one stream on demand.

Nothing is stored: a live projection starts from the head (or from the beginning when asked)
each time its process starts. Evolve functions are pure and synchronous:
``state, event -> new state``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

from .defaults import DEFAULT_BATCH_SIZE, STREAM_PAGE_SIZE
from .events import START, RecordedEvent
from .identifiers import validate_identifier
from .payloads import Event, typed_events
from .runner import sleep_until_new_events
from .source import EventSource
from .store import EventStore

S = TypeVar("S")
FOLD_STREAM = "fold_stream"
"""Who failed, in the HandlerError of an upcaster that raised while a stream was folded."""
P = TypeVar("P")
Evolve = Callable[[S, RecordedEvent], S]


class Evolver(Generic[S]):
    """Pure evolve functions per event type, registered with ``@evolver.on("Type")``."""

    def __init__(self) -> None:
        self.functions: dict[str, Evolve[S]] = {}

    @overload
    def on(self, *types: str) -> Callable[[Evolve[S]], Evolve[S]]: ...
    @overload
    def on(
        self, *types: str, payload: type[P]
    ) -> Callable[[Callable[[S, Event[P]], S]], Callable[[S, Event[P]], S]]: ...
    def on(self, *types: str, payload: type[Any] | None = None) -> Callable[[Any], Any]:
        """Register ``evolve(state, event) -> state`` for ``types``; with ``payload=T`` (a
        msgspec Struct, a pydantic model or a dataclass) it receives ``Event[T]``. A payload
        that does not validate raises PayloadValidationError out of the fold."""
        owner = f"evolve function of {', '.join(types)}"
        typed = None if payload is None else typed_events(payload, owner)

        def register(function: Callable[[S, Any], S]) -> Callable[[S, Any], S]:
            stored = function if typed is None else _with_payloads(function, typed)
            for type_ in types:
                self.functions[type_] = stored
            return function

        return register

    def fold(self, state: S, events: Sequence[RecordedEvent]) -> S:
        return _fold(self.functions, state, events)


class LiveProjection(Evolver[S]):
    """State kept in memory and updated as events arrive (dashboards, counters).

    ``state`` is readable at any time; ``run(store)`` follows the store until ``stop()``.
    """

    def __init__(self, name: str, initial: Callable[[], S], *, from_start: bool = False) -> None:
        super().__init__()
        self.name = validate_identifier(name, "projection name")
        self._initial = initial
        self.state: S = initial()
        self.from_start = from_start
        self.position = START
        self._stop = asyncio.Event()

    async def run(self, store: EventSource, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self._stop.clear()
        self.state = self._initial()
        self.position = START if self.from_start else await store.head()
        types = frozenset(self.functions)
        while not self._stop.is_set():
            upcasters = store.upcasters  # as the source has them now
            read = upcasters.read_types(types)
            batch = await store.read_all(self.position, limit=batch_size, types=read)
            self.state = self.fold(self.state, upcasters.apply(batch.events, self.name, types))
            moved = batch.checkpoint != self.position
            self.position = batch.checkpoint
            if not moved:
                await sleep_until_new_events(store, self.position, self._stop)

    def stop(self) -> None:
        self._stop.set()


async def fold_stream(
    store: EventStore,
    stream_id: str,
    initial: S,
    evolve: Mapping[str, Evolve[S]] | Evolver[S],
) -> S:
    """The current state of one stream: its events folded now, for a query (upcast by the
    store's upcasters first; one that raises is a HandlerError)."""
    functions = evolve.functions if isinstance(evolve, Evolver) else evolve
    state = initial
    version = 1
    while True:
        events = await store.read_stream(stream_id, from_version=version, limit=STREAM_PAGE_SIZE)
        state = _fold(functions, state, store.upcasters.apply(events, FOLD_STREAM))
        if len(events) < STREAM_PAGE_SIZE:
            return state
        version += len(events)  # a stream's versions run 1, 2, 3... with no gap


def _with_payloads(
    function: Callable[[S, Any], S], typed: Callable[[RecordedEvent], Event[Any]]
) -> Evolve[S]:
    def decoded(state: S, event: RecordedEvent) -> S:
        return function(state, typed(event))

    return decoded


def _fold(functions: Mapping[str, Evolve[S]], state: S, events: Sequence[RecordedEvent]) -> S:
    for event in events:
        function = functions.get(event.type)
        if function is not None:
            state = function(state, event)
    return state
