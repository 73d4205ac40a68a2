"""Typed event payloads: a handler or evolve function may ask for ``data`` as its own type.

    class OrderPlaced(msgspec.Struct):
        order_id: str
        total: float

    @orders.on("OrderPlaced", payload=OrderPlaced)
    async def placed(event: Event[OrderPlaced], tx: ReadModelTransaction) -> None:
        await tx.execute("INSERT ...", event.data.order_id, event.data.total)

A payload type is a ``msgspec.Struct``, a dataclass (both converted by ``msgspec.convert``,
strictly: a JSON string is not taken for a number) or a pydantic (v2) ``BaseModel`` (its own
``model_validate``, under the model's own configuration). The decoder is chosen once, when
the handler is registered (``typed_events``); registration wraps the handler, so a
projection without typed handlers runs exactly as before, with no check per event.

A payload that does not validate raises ``PayloadValidationError`` naming the event and each
field path (``$.items[0].qty: Expected int, got str``); the projection turns it into a
``HandlerError`` like any handler failure, so retries and ``on_error`` apply. Messages name
fields and expected types, never the values (a payload may hold personal data).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec

from .errors import ConfigurationError, PayloadValidationError
from .events import JsonObject, Position, RecordedEvent

P = TypeVar("P")


class Event(NamedTuple, Generic[P]):
    """A RecordedEvent whose ``data`` was decoded into the payload type its handler asked
    for (``payload=``): the same fields, in the same order, with ``data: P``."""

    id: uuid.UUID | None
    stream_id: str
    version: int | None
    type: str
    data: P
    metadata: JsonObject
    recorded_at: datetime
    position: Position


_new_event: Callable[[tuple[Any, ...]], Event[Any]] = functools.partial(tuple.__new__, Event)

Decode = Callable[[JsonObject], P]
"""A payload type's decoder: a JSON object to an instance, or a library's validation error."""


def typed_events(payload: object, owner: str) -> Callable[[RecordedEvent], Event[Any]]:
    """How events become ``Event[payload]``, chosen once; ``owner`` names the registration
    in errors (``"projection 'orders'"``). Raises ConfigurationError for any other type."""
    decode, errors, describe = _decoder(payload, owner)
    name = _type_name(payload)

    def typed(event: RecordedEvent) -> Event[Any]:
        try:
            data = decode(event[4])
        except errors as exc:
            raise _invalid(event, name, describe(exc)) from exc
        id_, stream_id, version, type_, _, metadata, recorded_at, position = event
        return _new_event((id_, stream_id, version, type_, data, metadata, recorded_at, position))

    return typed


Problems = list[tuple[str, str]]
"""(field path, what is wrong), e.g. ``("$.items[0].qty", "Expected int, got str")``."""


def _decoder(
    payload: object, owner: str
) -> tuple[Decode[Any], type[Exception], Callable[[Any], Problems]]:
    if not isinstance(payload, type):
        raise ConfigurationError(
            f"{owner}: payload must be a msgspec.Struct, a pydantic model or a dataclass "
            f"(a class), not {_type_name(payload)}"
        )
    if issubclass(payload, msgspec.Struct) or dataclasses.is_dataclass(payload):
        return functools.partial(msgspec.convert, type=payload), msgspec.ValidationError, _msgspec
    # A pydantic model implies pydantic was imported: never imported here for nothing.
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and issubclass(payload, pydantic.BaseModel):
        if not str(pydantic.VERSION).startswith("2."):
            raise ConfigurationError(f"{owner}: pydantic payloads need pydantic 2")
        validate: Decode[Any] = payload.model_validate  # type: ignore[attr-defined]
        errors: type[Exception] = pydantic.ValidationError
        return validate, errors, _pydantic
    raise ConfigurationError(
        f"{owner}: payload must be a msgspec.Struct, a pydantic model or a dataclass, "
        f"not {_type_name(payload)}"
    )


def _invalid(event: RecordedEvent, payload: str, problems: Problems) -> PayloadValidationError:
    version = "" if event.version is None else f" version {event.version}"
    where = f"stream {event.stream_id!r}{version}, position {event.position}"
    found = "; ".join(f"{path}: {reason}" for path, reason in problems)
    return PayloadValidationError(
        f"{event.type} event ({where}) is not a valid {payload}: {found}",
        event.type,
        payload,
        problems,
    )


def _msgspec(exc: msgspec.ValidationError) -> Problems:
    """``Expected `int`, got `str` - at `$.items[0].qty``` (msgspec stops at the first)."""
    message, _, path = str(exc).rpartition(" - at `")
    if not message:  # no path: the payload itself is wrong
        message, path = path, "$`"
    return [(path[:-1], message.replace("`", ""))]


def _pydantic(exc: Any) -> Problems:
    """Every error pydantic found, each at its ``loc`` (without the input values)."""
    return [
        (_path(error["loc"]), error["msg"])
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def _path(loc: Sequence[int | str]) -> str:
    parts = ["$"]
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part.isidentifier():
            parts.append(f".{part}")
        else:
            parts.append(f"[{part!r}]")
    return "".join(parts)


def _type_name(payload: object) -> str:
    if isinstance(payload, type):
        return payload.__qualname__
    return f"a {type(payload).__qualname__} instance"
