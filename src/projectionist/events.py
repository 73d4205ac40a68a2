"""The event model: new events going in, recorded events coming out, and their position."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from .errors import InvalidInputError

MAX_NAME_LENGTH = 200  # stream ids and event types
JsonObject = dict[str, Any]


class Position(NamedTuple):
    """A place in the global order: an opaque, totally ordered checkpoint value.

    On PostgreSQL ``tx`` is the id of the transaction that appended the event and ``seq`` its
    sequence number; ordering by the pair is what makes the order gap-free (see
    docs/global-order.md). SQLite and memory serialize their writers, so ``tx`` is always 0
    there and ``seq`` alone orders events. Compare positions, never do arithmetic on them.
    """

    tx: int
    seq: int

    def __str__(self) -> str:
        return f"{self.tx}/{self.seq}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """Parse the ``"tx/seq"`` form printed by ``str(position)`` (or a bare ``seq``)."""
        try:
            tx_text, _, seq_text = text.strip().rpartition("/")
            position = cls(int(tx_text or 0), int(seq_text))
        except ValueError:
            raise InvalidInputError(
                f"invalid position {text!r}: expected 'TX/SEQ', e.g. '0/42'"
            ) from None
        if position.tx < 0 or position.seq < 0:
            raise InvalidInputError(f"invalid position {text!r}: parts must not be negative")
        return position


START = Position(0, 0)
"""The position before the first event: reading after it reads everything."""


def validate_name(value: object, what: str) -> str:
    """Check a stream id or event type: a non-empty string of at most 200 characters."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, not {type(value).__name__}")
    if not value or len(value) > MAX_NAME_LENGTH:
        raise InvalidInputError(
            f"{what} must have 1 to {MAX_NAME_LENGTH} characters, got {len(value)}"
        )
    if "\x00" in value:
        raise InvalidInputError(f"{what} {value!r} must not contain NUL characters")
    return value


def encode_json_object(value: object, what: str) -> str:
    """Serialize a JSON object (a dict with string keys) to text, or raise InvalidInputError."""
    if not isinstance(value, Mapping):
        raise InvalidInputError(
            f"{what} must be a JSON object (a dict), not {type(value).__name__}"
        )
    try:
        text = orjson.dumps(value).decode()
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise InvalidInputError(f"{what} is not JSON-serializable: {exc}") from exc
    if "null" in text and _has_non_finite_float(value):
        # orjson writes NaN and infinities as null: refuse rather than lose the value.
        raise InvalidInputError(f"{what} contains NaN or an infinite number: JSON cannot hold it")
    if "\\u0000" in text:
        # PostgreSQL's jsonb cannot store NUL; refuse it on every backend alike.
        raise InvalidInputError(f"{what} must not contain NUL characters")
    return text


def _has_non_finite_float(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_has_non_finite_float(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite_float(item) for item in value)
    return False


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. ``id`` defaults to a fresh UUID4."""

    type: str
    data: JsonObject
    metadata: JsonObject = field(default_factory=dict)
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    def __post_init__(self) -> None:
        validate_name(self.type, "event type")
        if not isinstance(self.id, uuid.UUID):
            raise InvalidInputError(f"event id must be a uuid.UUID, not {type(self.id).__name__}")


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """A NewEvent validated and serialized, ready for a backend to write."""

    id: uuid.UUID
    type: str
    data: str
    metadata: str

    @classmethod
    def of(cls, event: NewEvent) -> EncodedEvent:
        if not isinstance(event, NewEvent):
            raise InvalidInputError(f"expected a NewEvent, got {type(event).__name__}")
        return cls(
            event.id,
            event.type,
            encode_json_object(event.data, f"data of event {event.type!r}"),
            encode_json_object(event.metadata, f"metadata of event {event.type!r}"),
        )


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored: immutable, with its stream version and global position."""

    id: uuid.UUID
    stream_id: str
    version: int
    type: str
    data: JsonObject
    metadata: JsonObject
    recorded_at: datetime
    position: Position
