"""How a JetStream message becomes a ``RecordedEvent``, and NATS names and subjects checked.

The message's stream sequence is its position, ``Position(0, seq)``. Each other field comes
from a header when the message has it, else from a stand-in (see ``MessageMap``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from ...errors import ConfigurationError, InvalidInputError
from ...events import JsonObject, Position, RecordedEvent
from .errors import JetStreamDecodeError

DEFAULT_STREAM_HEADER = "Projectionist-Stream"
DEFAULT_TYPE_HEADER = "Projectionist-Type"
DEFAULT_VERSION_HEADER = "Projectionist-Version"
MSG_ID_HEADER = "Nats-Msg-Id"
EVENT_ID_NAMESPACE = uuid.UUID("0b8d4f5e-7c1a-5e3b-9a2d-4c6e8f0a1b3d")
"""Ids of messages without a UUID ``Nats-Msg-Id``: uuid5(it, "<stream>/<seq>")."""

Decoder = Callable[[bytes], JsonObject]


def decode_json(data: bytes) -> JsonObject:
    """The default decoder: the payload is a JSON object (an empty payload is ``{}``)."""
    if not data:
        return {}
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise ValueError(f"the payload is JSON {type(value).__name__}, not an object")
    return value


@dataclass(frozen=True, slots=True)
class Message:
    """What the source reads of one stored message."""

    seq: int
    subject: str
    headers: Mapping[str, str]
    data: bytes
    time: datetime

    @property
    def size(self) -> int:
        """The bytes it weighs for ``max_bytes``: its data and its headers."""
        return len(self.data) + sum(len(k) + len(v) for k, v in self.headers.items())


@dataclass(frozen=True, slots=True)
class MessageMap:
    """Where each field of an event comes from (a header name of None: never a header).

    - ``stream_id``: header ``stream_header``, else the subject, whole (``stream_token``
      None) or its token at index ``stream_token`` (``-1`` the last, ``1`` the second);
    - ``type``: header ``type_header``, else the subject's last token;
    - ``version``: header ``version_header`` (an integer), else None (JetStream has no
      per-stream version);
    - ``id``: header ``Nats-Msg-Id`` when it is a UUID, else uuid5 of "<stream>/<seq>"
      (a stand-in, the same on every read);
    - ``data``: ``decode(payload)``, a JSON object by default;
    - ``metadata``: the other headers, as strings (``Nats-Msg-Id`` among them);
    - ``recorded_at``: when the stream stored the message.
    """

    stream_header: str | None = DEFAULT_STREAM_HEADER
    stream_token: int | None = None
    type_header: str | None = DEFAULT_TYPE_HEADER
    version_header: str | None = DEFAULT_VERSION_HEADER
    decode: Decoder = field(default=decode_json)

    def validated(self) -> MessageMap:
        for what in ("stream_header", "type_header", "version_header"):
            name = getattr(self, what)
            if name is not None and (not isinstance(name, str) or not _is_header_name(name)):
                raise ConfigurationError(f"{what} must be a header name or None, got {name!r}")
        token = self.stream_token
        if token is not None and (isinstance(token, bool) or not isinstance(token, int)):
            raise ConfigurationError(f"stream_token must be an integer or None, got {token!r}")
        if not callable(self.decode):
            raise ConfigurationError("decode must be a callable taking bytes")
        return self

    def stream_of(self, message: Message) -> str:
        if self.stream_header and (value := message.headers.get(self.stream_header)):
            return value
        if self.stream_token is None:
            return message.subject
        tokens = message.subject.split(".")
        if not -len(tokens) <= self.stream_token < len(tokens):
            raise _undecodable(message, f"its subject has no token {self.stream_token}")
        return tokens[self.stream_token]

    def type_of(self, message: Message) -> str:
        if self.type_header and (value := message.headers.get(self.type_header)):
            return value
        return message.subject.rsplit(".", 1)[-1]

    def event(self, stream: str, message: Message, stream_id: str, type_: str) -> RecordedEvent:
        """The event of ``message`` of JetStream stream ``stream`` (stream id and type
        already read, for the filters)."""
        return RecordedEvent(
            id=_event_id(stream, message),
            stream_id=stream_id,
            version=self._version(message),
            type=type_,
            data=self._data(message),
            metadata=self._metadata(message),
            recorded_at=message.time,
            position=Position(0, message.seq),
        )

    def _version(self, message: Message) -> int | None:
        raw = message.headers.get(self.version_header) if self.version_header else None
        if raw is None:
            return None
        try:
            version = int(raw)
        except ValueError:
            version = -1
        if not 0 <= version < 2**63:
            raise _undecodable(message, f"header {self.version_header} is {raw!r}, not a version")
        return version

    def _data(self, message: Message) -> JsonObject:
        try:
            data = self.decode(message.data)
        except Exception as exc:
            raise _undecodable(message, f"its data does not decode: {exc}") from exc
        if not isinstance(data, dict):
            raise _undecodable(message, f"decode returned {type(data).__name__}, not a dict")
        return data

    def _metadata(self, message: Message) -> JsonObject:
        mapped = {self.stream_header, self.type_header, self.version_header}
        return {key: value for key, value in message.headers.items() if key not in mapped}


def _event_id(stream: str, message: Message) -> uuid.UUID:
    raw = message.headers.get(MSG_ID_HEADER)
    if raw is not None:
        try:
            return uuid.UUID(raw)
        except ValueError:
            pass  # not a UUID: the stand-in below
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"{stream}/{message.seq}")


def _undecodable(message: Message, why: str) -> JetStreamDecodeError:
    return JetStreamDecodeError(
        f"message {message.seq} ({message.subject}) cannot become an event: {why}", message.seq
    )


def _is_header_name(name: str) -> bool:
    return bool(name) and all(33 <= ord(c) <= 126 and c != ":" for c in name)


# -- names and subjects ----------------------------------------------------------------------


def validate_stream_name(name: object) -> str:
    """A JetStream stream name: printable, without spaces, dots, wildcards or slashes."""
    if not isinstance(name, str) or not name or len(name) > 255:
        raise InvalidInputError(f"stream name must be a non-empty string, got {name!r}")
    if any(c in name for c in ". *>/\\\t\r\n") or not name.isprintable():
        raise InvalidInputError(
            f"stream name {name!r} is invalid: no spaces, dots, '*', '>' or slashes"
        )
    return name


def validate_subjects(subjects: Sequence[str] | None) -> tuple[str, ...]:
    """Filter subjects, each valid and no two overlapping (counts add them up)."""
    if subjects is None:
        return ()
    if isinstance(subjects, str):
        raise InvalidInputError("subjects must be a sequence of subjects, not a single string")
    checked = tuple(dict.fromkeys(_valid_subject(s) for s in subjects))
    if not checked:
        raise InvalidInputError("subjects is empty: give None for the whole stream")
    for i, first in enumerate(checked):
        for second in checked[i + 1 :]:
            if subjects_overlap(first, second):
                raise InvalidInputError(
                    f"filter subjects {first!r} and {second!r} overlap: a message could match "
                    "both; give subjects that no message matches twice"
                )
    return checked


def _valid_subject(subject: object) -> str:
    if not isinstance(subject, str) or not subject:
        raise InvalidInputError(f"a subject must be a non-empty string, got {subject!r}")
    tokens = subject.split(".")
    bad = any(not t or any(c.isspace() for c in t) for t in tokens)
    wild = any(("*" in t and t != "*") or (">" in t and t != ">") for t in tokens)
    if bad or wild or ">" in tokens[:-1]:
        raise InvalidInputError(
            f"subject {subject!r} is invalid: dot-separated non-empty tokens without spaces; "
            "'*' and '>' only as whole tokens, '>' only last"
        )
    return subject


def subjects_overlap(first: str, second: str) -> bool:
    """Whether some subject matches both patterns."""
    a, b = first.split("."), second.split(".")
    for x, y in zip(a, b, strict=False):
        if ">" in (x, y):
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(a) == len(b)


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` (no wildcards) matches ``pattern``."""
    tokens = subject.split(".")
    for index, want in enumerate(pattern.split(".")):
        if want == ">":
            return len(tokens) > index
        if index >= len(tokens) or (want != "*" and want != tokens[index]):
            return False
    return len(tokens) == len(pattern.split("."))
