"""The errors of the JetStream source, and the translation of nats-py's errors into ours.

``errors.py`` of the library has no class for "the source's history is gone", so the two
that only this source raises live here, under ``BackendError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import nats.errors
import nats.js.errors

from ...errors import BackendError, EventDecodingError, StoreUnavailableError


class JetStreamHistoryLostError(BackendError):
    """Messages after the checkpoint are gone from the stream (its limits or its max age
    dropped them, or it was purged): reading on would skip them silently, so it stops.

    ``first_lost`` and ``last_lost`` are the stream sequences that can no longer be read.
    """

    def __init__(self, message: str, first_lost: int, last_lost: int) -> None:
        self.first_lost = first_lost
        self.last_lost = last_lost
        super().__init__(message)


class JetStreamDecodeError(EventDecodingError):
    """A message of the stream cannot become an event (its data does not decode, a mapped
    header or subject token is malformed). ``seq`` is its stream sequence."""

    def __init__(self, message: str, seq: int) -> None:
        self.seq = seq
        super().__init__(message)


UNAVAILABLE = (
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    OSError,
    TimeoutError,
)
"""Errors that mean the server (or its JetStream) cannot be reached right now."""


@contextlib.contextmanager
def translated(doing: str, where: str) -> Iterator[None]:
    """Wrap nats-py's errors raised while ``doing`` on ``where`` (a redacted URL/stream)."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise StoreUnavailableError(f"{doing} failed, {where}: {_describe(exc)}") from exc
    except nats.errors.Error as exc:
        raise BackendError(f"{doing} failed, {where}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
