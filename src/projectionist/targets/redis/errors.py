"""Redis failures in our terms, and the checkpoint hash read back."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...errors import BackendError, StoreUnavailableError
from ...events import Position
from ...readmodel import Checkpoint, CheckpointConflictError
from ...transient import in_cause_chain

START_HINT = "no Redis server answers at that address, or it refused the connection"


def checkpoint_from_hash(name: str, fields: Mapping[Any, Any]) -> Checkpoint | None:
    if not fields:
        return None
    return Checkpoint(
        name=name,
        version=int(fields["version"]),
        position=Position(int(fields["tx"]), int(fields["seq"])),
        events_processed=int(fields["processed"]),
        updated_at=datetime.fromisoformat(fields["updated_at"]),
    )


def translate_error(exc: BaseException) -> BaseException:
    """The projectionist error for a Redis failure in a transaction, or ``exc`` itself.

    A lost connection anywhere in the chain (even under a handler's HandlerError, or the
    WatchError redis-py raises when a watching connection dies) is StoreUnavailableError,
    which the runner retries; EXEC refused because a watched key moved is a checkpoint
    conflict; any other raw Redis error is a BackendError.
    """
    if _lost_connection(exc):
        return StoreUnavailableError(f"lost the connection to Redis ({type(exc).__name__}: {exc})")
    if isinstance(exc, WatchError):
        return CheckpointConflictError(
            f"a checkpoint watched by this transaction moved before EXEC: {exc}"
        )
    if isinstance(exc, RedisError):
        return BackendError(f"Redis: {type(exc).__name__}: {exc}")
    return exc


def _lost_connection(exc: BaseException) -> bool:
    return in_cause_chain(exc, _is_connection_error)


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, RedisConnectionError | RedisTimeoutError)
