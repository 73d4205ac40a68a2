"""projectionist: read models from event streams, for CQRS and event-sourced systems."""

from .errors import (
    BackendError,
    ConcurrencyError,
    ConfigurationError,
    InvalidInputError,
    ProjectionistError,
    SchemaError,
    StoreUnavailableError,
    TransactionConflictError,
)
from .events import START, NewEvent, Position, RecordedEvent
from .factory import create_store
from .store import (
    ANY,
    NO_STREAM,
    AppendResult,
    EventBatch,
    EventStore,
    ExpectedVersion,
    StreamState,
)

__all__ = [
    "ANY",
    "NO_STREAM",
    "START",
    "AppendResult",
    "BackendError",
    "ConcurrencyError",
    "ConfigurationError",
    "EventBatch",
    "EventStore",
    "ExpectedVersion",
    "InvalidInputError",
    "NewEvent",
    "Position",
    "ProjectionistError",
    "RecordedEvent",
    "SchemaError",
    "StoreUnavailableError",
    "StreamState",
    "TransactionConflictError",
    "create_store",
]
