"""Upcasting: old shapes of events turned into the current one as they are read.

An event's *schema version* is recorded in its metadata under ``SCHEMA_VERSION`` when it is
appended (only for types whose current version is above 1); an event without the key is
version 1. An ``Upcasters`` registry maps ``(type, version)`` to a pure function from the
old ``data`` to the new one, and to the ``(type, version)`` it produces:

    upcasters = Upcasters()

    @upcasters.register("OrderCreated", from_version=1)          # -> OrderCreated v2
    def add_currency(data: JsonObject) -> JsonObject:
        return {**data, "currency": "EUR"}

    @upcasters.register("OrderCreated", from_version=2, to_type="OrderPlaced")  # v3
    def rename(data: JsonObject) -> JsonObject:
        return {"order_id": data["id"], "total": data["total"], "currency": data["currency"]}

An event is upcast step after step while a step exists for its ``(type, version)``. The
registry is carried by the source (``EventSource.upcasters``) and applied by every consumer
the engine runs (runners, rebuilds, blue/green builds, verify, live projections,
``fold_stream``, the idempotency kit), so no consumer sees an old shape. A step that raises
is a ``HandlerError`` of the consumer for that event (its ``on_error`` policy applies).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .errors import ConfigurationError, HandlerError, InvalidInputError
from .events import (
    MAX_BIGINT,
    JsonObject,
    Position,
    RecordedEvent,
    encode_json_object,
    new_recorded_event,
    validate_name,
)

SCHEMA_VERSION = "schema_version"
"""The metadata key holding an event's schema version (absent: version 1)."""

Upcaster = Callable[[JsonObject], JsonObject]
"""A pure function from an event's ``data`` in one version to its ``data`` in the next."""


@dataclass(frozen=True, slots=True)
class Step:
    """One registered upcaster: ``(from_type, from_version) -> (to_type, to_version)``."""

    from_type: str
    from_version: int
    to_type: str
    to_version: int
    function: Upcaster

    def __str__(self) -> str:
        return f"{self.from_type} v{self.from_version} -> {self.to_type} v{self.to_version}"


class _Plan(NamedTuple):
    """What a reader of some types does, computed once per registry change."""

    read_types: frozenset[str] | None
    """What to ask the source for."""
    relevant: frozenset[str]
    """The stored types among those that have a step: the only ones worth a look."""
    widened: bool
    """Whether ``read_types`` holds more than the reader's own types (then filter)."""


class Rewrite(NamedTuple):
    """A stored event's upcast shape, encoded (``events upgrade``): what a store writes in
    place of the row at ``position``, while that row is still ``old_type`` at
    ``old_version``."""

    position: Position
    old_type: str
    old_version: int
    type: str
    version: int
    data: str
    """The upcast data as JSON text."""
    metadata: str
    """The metadata as JSON text, recording ``version``."""


class Upcasters:
    """A registry of upcasters. Register with ``@upcasters.register(type, from_version)``."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Step] = {}
        self._plans: dict[frozenset[str] | None, _Plan] = {}
        self._current: dict[str, int] = {}
        self._frozen = False

    @classmethod
    def none(cls) -> Upcasters:
        """An empty registry that refuses registrations (every source's default)."""
        empty = cls()
        empty._frozen = True
        return empty

    def __bool__(self) -> bool:
        return bool(self._steps)

    def __len__(self) -> int:
        return len(self._steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self._steps.values())

    def __repr__(self) -> str:
        return f"Upcasters({', '.join(str(step) for step in self) or 'none'})"

    # -- registering ------------------------------------------------------------------------

    def register(
        self,
        type: str,
        from_version: int = 1,
        *,
        to_type: str | None = None,
        to_version: int | None = None,
    ) -> Callable[[Upcaster], Upcaster]:
        """Register ``def upcaster(data) -> data`` for events of ``type`` at ``from_version``:
        they become ``to_type`` (default: the same type) at ``to_version`` (default:
        ``from_version + 1``). Refused (ConfigurationError): a second step for the same
        ``(type, from_version)``, a version that does not grow within a type, a cycle."""
        step_from = (_type(type), _version(from_version, "from_version"))
        target_type = type if to_type is None else _type(to_type)
        target_version = (
            from_version + 1 if to_version is None else _version(to_version, "to_version")
        )

        def add(function: Upcaster) -> Upcaster:
            if not callable(function):
                raise ConfigurationError(f"an upcaster must be callable, not {function!r}")
            self._add(Step(*step_from, target_type, target_version, function))
            return function

        return add

    def _add(self, step: Step) -> None:
        if self._frozen:
            raise ConfigurationError(
                "this registry is the shared empty one: make your own with Upcasters()"
            )
        existing = self._steps.get((step.from_type, step.from_version))
        if existing is not None:
            raise ConfigurationError(
                f"an upcaster from {step.from_type} v{step.from_version} is registered "
                f"already ({existing})"
            )
        if step.to_type == step.from_type and step.to_version <= step.from_version:
            raise ConfigurationError(
                f"upcaster {step}: within one type the version must grow (to_version > "
                "from_version)"
            )
        if step.to_version > MAX_BIGINT:
            raise ConfigurationError(f"upcaster {step}: to_version is too large")
        cycle = self._cycle_through(step)
        if cycle:
            raise ConfigurationError(f"upcaster {step} closes a cycle: {' -> '.join(cycle)}")
        self._steps[(step.from_type, step.from_version)] = step
        self._plans.clear()
        for type_, version in (
            (step.from_type, step.from_version),
            (step.to_type, step.to_version),
        ):
            self._current[type_] = max(self._current.get(type_, 1), version)

    def _cycle_through(self, step: Step) -> list[str]:
        """The chain from ``step``'s target back to its source, if it leads there."""
        start = (step.from_type, step.from_version)
        seen = [f"{step.from_type} v{step.from_version}"]
        node = (step.to_type, step.to_version)
        while True:
            seen.append(f"{node[0]} v{node[1]}")
            if node == start:
                return seen
            following = self._steps.get(node)
            if following is None:
                return []
            node = (following.to_type, following.to_version)

    # -- what readers need ------------------------------------------------------------------

    def current_version(self, type: str) -> int:
        """The version new events of ``type`` are written at: the highest version of it
        that a step starts from or leads to (1 when none does)."""
        return self._current.get(type, 1)

    def final(self, type: str, version: int) -> tuple[str, int]:
        """The ``(type, version)`` an event at ``(type, version)`` is upcast to."""
        node = (type, version)
        while (step := self._steps.get(node)) is not None:
            node = (step.to_type, step.to_version)
        return node

    def read_types(self, types: Collection[str] | None) -> frozenset[str] | None:
        """The stored types a reader of ``types`` must ask for: those, and every type with
        a chain ending in one of them (None, every type, stays None)."""
        return self._plan(types).read_types

    def _plan(self, types: Collection[str] | None) -> _Plan:
        key = None if types is None else frozenset(types)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._make_plan(key)
        return plan

    def _make_plan(self, types: frozenset[str] | None) -> _Plan:
        sources = {step.from_type for step in self._steps.values()}
        if types is None:
            return _Plan(None, frozenset(sources), False)
        leading_here = {
            step.from_type
            for step in self._steps.values()
            if self.final(step.from_type, step.from_version)[0] in types
        }
        read = types | leading_here
        return _Plan(read, frozenset(sources & read), read != types)

    def stamper(self) -> Callable[[str, JsonObject], JsonObject] | None:
        """What an append does to each event's metadata (``stamp``); None when nothing is
        registered: appends then pay nothing."""
        return functools.partial(stamp, self) if self._steps else None

    # -- applying ---------------------------------------------------------------------------

    def apply(
        self,
        events: Sequence[RecordedEvent],
        consumer: str,
        types: Collection[str] | None = None,
    ) -> Sequence[RecordedEvent]:
        """``events`` in their current shapes, only those of ``types`` if given (events read
        with ``read_types(types)``); the same list when nothing applies. An upcaster that
        raises (or returns no dict) is a ``HandlerError`` of ``consumer`` naming the event."""
        if not self._steps:
            return events  # the common case: one test, no scan
        plan = self._plan(types)
        if not plan.relevant:
            return events
        relevant = plan.relevant
        upcast: list[RecordedEvent] | None = None
        for index, event in enumerate(events):
            if event.type in relevant:
                new = self._upcast(event, consumer)
                if new is not event and upcast is None:
                    upcast = list(events[:index])
                event = new
            if upcast is not None:
                upcast.append(event)
        if upcast is None and not plan.widened:
            return events
        if types is not None:
            return [event for event in (upcast or events) if event.type in types]
        return upcast or events

    def upcast(self, event: RecordedEvent, consumer: str = "upcasting") -> RecordedEvent:
        """One event in its current shape (itself when no step applies)."""
        return self._upcast(event, consumer)

    def _upcast(self, event: RecordedEvent, consumer: str) -> RecordedEvent:
        version = stored_version(event, consumer)
        step = self._steps.get((event.type, version))
        if step is None:
            return event
        data = dict(event.data)  # a copy: a store may hand the same dict to every reader
        while step is not None:
            try:
                data = step.function(data)
                if not isinstance(data, dict):
                    raise TypeError(f"it returned {type(data).__name__}, not a dict")
            except Exception as exc:  # the upcaster's own error, kept as the cause
                raise HandlerError(consumer, event, _failure(consumer, event, step, exc)) from exc
            node = (step.to_type, step.to_version)
            step = self._steps.get(node)
        return new_recorded_event(
            (
                event.id,
                event.stream_id,
                event.version,
                node[0],
                data,
                {**event.metadata, SCHEMA_VERSION: node[1]},
                event.recorded_at,
                event.position,
            )
        )

    def rewrites(self, events: Sequence[RecordedEvent]) -> list[Rewrite]:
        """How to store the events of ``events`` that a step applies to (``events
        upgrade``). An upcaster that raises is a HandlerError naming the event."""
        found = []
        for event in events:
            version = stored_version(event, UPGRADE)
            if (event.type, version) not in self._steps:
                continue
            new = self._upcast(event, UPGRADE)
            what = f"the upcast {what_event(event)}"
            found.append(
                Rewrite(
                    event.position,
                    event.type,
                    version,
                    new.type,
                    new.metadata[SCHEMA_VERSION],
                    encode_json_object(new.data, f"data of {what}"),
                    encode_json_object(new.metadata, f"metadata of {what}"),
                )
            )
        return found


UPGRADE = "events upgrade"


def stored_version(event: RecordedEvent, consumer: str) -> int:
    """The schema version an event was stored at (1 without the key)."""
    version = event.metadata.get(SCHEMA_VERSION, 1)
    if type(version) is not int or version < 1:
        raise HandlerError(
            consumer,
            event,
            f"{_who(consumer)} failed on {event.type} ({_where(event)}): its metadata has "
            f"{SCHEMA_VERSION} {version!r}, not an integer >= 1",
        )
    return version


def stamp(upcasters: Upcasters, event_type: str, metadata: JsonObject) -> JsonObject:
    """``metadata`` with the schema version new events of ``type`` are written at, when it
    is above 1 (else unchanged). A version the writer gave stays, if it is one of the
    type's (from 1 to the current one): an older shape, upcast when read."""
    current = upcasters.current_version(event_type)
    given = metadata.get(SCHEMA_VERSION)
    if given is None:
        return metadata if current == 1 else {**metadata, SCHEMA_VERSION: current}
    if type(given) is int and 1 <= given <= current:
        return metadata
    raise InvalidInputError(
        f"event {event_type!r}: metadata {SCHEMA_VERSION} must be an integer from 1 to "
        f"{current} (the current version of {event_type!r}), got {given!r}"
    )


def _who(consumer: str) -> str:
    return consumer if " " in consumer else f"projection {consumer!r}"


def what_event(event: RecordedEvent) -> str:
    return f"event {event.type} ({_where(event)})"


def _where(event: RecordedEvent) -> str:
    where = f"stream {event.stream_id!r}"
    if event.version is not None:
        where += f" version {event.version}"
    return f"{where}, position {event.position}"


def _failure(consumer: str, event: RecordedEvent, step: Step, exc: BaseException) -> str:
    return (
        f"{_who(consumer)} failed on {event.type} ({_where(event)}): upcaster {step} "
        f"raised {type(exc).__name__}: {exc}"
    )


def _type(value: object) -> str:
    try:
        return validate_name(value, "event type")
    except InvalidInputError as exc:
        raise ConfigurationError(f"upcaster: {exc}") from None


def _version(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BIGINT:
        raise ConfigurationError(f"upcaster: {what} must be an integer >= 1, got {value!r}")
    return value


NO_UPCASTERS = Upcasters.none()
"""The default of every source: nothing registered, nothing can be."""
