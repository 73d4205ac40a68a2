"""projectionist: read models from event streams, for CQRS and event-sourced systems."""

from .app import Application, ProjectionStatus
from .errors import (
    BackendError,
    ConcurrencyError,
    ConfigurationError,
    HandlerError,
    InvalidInputError,
    ProjectionistError,
    ProjectionTimeoutError,
    ProjectionVersionError,
    SchemaError,
    StoreUnavailableError,
    TransactionConflictError,
)
from .events import START, NewEvent, Position, RecordedEvent
from .factory import create_store
from .live import Evolver, LiveProjection, fold_stream
from .projection import Kind, Projection
from .readmodel import Checkpoint, ReadModelStore, ReadModelTransaction
from .search import SearchHit, SearchProjection, SearchQueryError
from .state import DELETE, Evolved, State, StateProjection
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
    "DELETE",
    "NO_STREAM",
    "START",
    "AppendResult",
    "Application",
    "BackendError",
    "Checkpoint",
    "ConcurrencyError",
    "ConfigurationError",
    "EventBatch",
    "EventStore",
    "Evolved",
    "Evolver",
    "ExpectedVersion",
    "HandlerError",
    "InvalidInputError",
    "Kind",
    "LiveProjection",
    "NewEvent",
    "Position",
    "Projection",
    "ProjectionStatus",
    "ProjectionTimeoutError",
    "ProjectionVersionError",
    "ProjectionistError",
    "ReadModelStore",
    "ReadModelTransaction",
    "RecordedEvent",
    "SchemaError",
    "SearchHit",
    "SearchProjection",
    "SearchQueryError",
    "State",
    "StateProjection",
    "StoreUnavailableError",
    "StreamState",
    "TransactionConflictError",
    "create_store",
    "fold_stream",
]
