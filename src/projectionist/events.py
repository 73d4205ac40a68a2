"""The event model: new events going in, recorded events coming out, and their position."""

from __future__ import annotations

import functools
import math
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, TypeGuard

import orjson

from .errors import InvalidInputError

MAX_NAME_LENGTH = 200  # stream ids and event types
MAX_BIGINT = 2**63 - 1  # positions and versions are BIGINT columns on PostgreSQL
MAX_BATCH_SIZE = 100_000
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str(position) never prints anything else
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
        """Parse the ``"tx/seq"`` form printed by ``str(position)`` (or a bare ``seq``).

        Only what ``str`` prints is accepted: ASCII digits, no sign, no underscores, each
        part within 64 bits."""
        if not isinstance(text, str):
            raise InvalidInputError(
                f"invalid position {text!r}: expected a 'TX/SEQ' string, not {type(text).__name__}"
            )
        tx_text, slash, seq_text = text.strip().rpartition("/")
        parts = [tx_text, seq_text] if slash else [seq_text]
        if not all(_DIGITS.fullmatch(part) for part in parts):
            raise InvalidInputError(f"invalid position {text!r}: expected 'TX/SEQ', e.g. '0/42'")
        position = cls(int(tx_text or 0), int(seq_text))
        if max(position) > MAX_BIGINT:
            raise InvalidInputError(f"invalid position {text!r}: parts must be below 2**63")
        return position


new_position = functools.partial(tuple.__new__, Position)
"""``new_position((tx, seq))``, unchecked (for backends' hot paths)."""

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
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:  # a lone surrogate: no database can store it
            raise InvalidInputError(
                f"{what} {value!r} is not valid Unicode (it holds a lone surrogate)"
            ) from None
    return value


def validate_position(value: object, what: str = "position") -> Position:
    """A Position (not a string or a tuple: use ``Position.parse``) whose parts are
    integers from 0 to 2**63 - 1, what every backend can store and compare."""
    if not isinstance(value, Position):
        hint = " (use Position.parse)" if isinstance(value, str) else ""
        raise InvalidInputError(
            f"{what} must be a Position, not {type(value).__name__} {value!r}{hint}"
        )
    if not all(_is_bigint(part) and part >= 0 for part in value):
        raise InvalidInputError(f"{what} {value!r} must have integer parts from 0 to 2**63 - 1")
    return value


def validate_version(value: object, what: str, minimum: int = 0) -> int:
    """A stream version: an integer from ``minimum`` to 2**63 - 1 (not a bool)."""
    if not _is_bigint(value) or value < minimum:
        raise InvalidInputError(
            f"{what} must be an integer from {minimum} to 2**63 - 1, got {value!r}"
        )
    return value


def _is_bigint(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value <= MAX_BIGINT


def validate_batch_size(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_BATCH_SIZE:
        raise InvalidInputError(
            f"batch size must be an integer from 1 to {MAX_BATCH_SIZE}, got {limit!r}"
        )
    return limit


def validate_max_bytes(max_bytes: object) -> int:
    """``None`` (no byte bound) or a positive size; returns the bound to use."""
    if max_bytes is None:
        return 2**62
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise InvalidInputError(f"max_bytes must be a positive integer or None, got {max_bytes!r}")
    return max_bytes


def validate_types(types: Collection[str] | None) -> list[str] | None:
    if types is None:
        return None
    if isinstance(types, str):
        raise InvalidInputError("types must be a collection of event types, not a single string")
    return sorted({validate_name(t, "event type") for t in types})


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
    if "\\u0000" in text and _has_nul(value):
        # PostgreSQL's jsonb cannot store NUL; refuse it on every backend alike. (The text
        # test alone would also refuse a backslash followed by "u0000", which is fine.)
        raise InvalidInputError(f"{what} must not contain NUL characters")
    return text


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
    return False


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
    def of(cls, event: NewEvent, stamp: Stamp | None = None) -> EncodedEvent:
        if not isinstance(event, NewEvent):
            raise InvalidInputError(f"expected a NewEvent, got {type(event).__name__}")
        metadata = event.metadata
        if stamp is not None and isinstance(metadata, dict):
            metadata = stamp(event.type, metadata)
        return cls(
            event.id,
            event.type,
            encode_json_object(event.data, f"data of event {event.type!r}"),
            encode_json_object(metadata, f"metadata of event {event.type!r}"),
        )


Stamp = Callable[[str, JsonObject], JsonObject]
"""What an append does to an event's metadata before it is written, by type: records the
schema version (``upcasting.stamp``)."""


class RecordedEvent(NamedTuple):
    """An event as stored: immutable, equal by value, with its stream version and global
    position. ``id`` and ``version`` are None when the source has none (docs/sources.md).

    A named tuple, not a dataclass: backends make hundreds of thousands per second, and a
    tuple is built in one step (``new_recorded_event``) where a frozen dataclass sets each
    field on its own."""

    id: uuid.UUID | None
    stream_id: str
    version: int | None
    type: str
    data: JsonObject
    metadata: JsonObject
    recorded_at: datetime
    position: Position


new_recorded_event = functools.partial(tuple.__new__, RecordedEvent)
"""``new_recorded_event((id, stream_id, version, type, data, metadata, recorded_at,
position))``: a RecordedEvent from its fields in order, unchecked (for backends' hot paths)."""


def encode_events(events: object, stream_id: str, stamp: Stamp | None = None) -> list[EncodedEvent]:
    """The events of one append, validated and serialized (at least one, ids unrepeated),
    their metadata given to ``stamp`` first, if any."""
    if isinstance(events, NewEvent):
        raise InvalidInputError("append takes a sequence of events; wrap a single event in a list")
    if not isinstance(events, Iterable) or isinstance(events, str | bytes | Mapping):
        raise InvalidInputError(f"append takes a sequence of events, not {type(events).__name__}")
    encoded = [EncodedEvent.of(event, stamp) for event in events]
    if not encoded:
        raise InvalidInputError(f"nothing to append to stream {stream_id!r}: no events given")
    if len({event.id for event in encoded}) != len(encoded):
        raise InvalidInputError(f"append to stream {stream_id!r} repeats an event id")
    return encoded


def validate_read_stream(stream_id: str, from_version: object, limit: int | None) -> int:
    """Check ``read_stream``'s arguments; the version to read from (0 reads from the start)."""
    validate_name(stream_id, "stream id")
    if limit is not None:
        validate_batch_size(limit)
    return validate_version(from_version, "from_version")
