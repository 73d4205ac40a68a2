"""projectionist: read models from event streams, for CQRS and event-sourced systems."""

from .app import Application
from .errors import (
    BackendError,
    ConcurrencyError,
    ConfigurationError,
    EventDecodingError,
    HandlerError,
    InvalidInputError,
    PayloadValidationError,
    ProjectionistError,
    ProjectionTimeoutError,
    ProjectionVersionError,
    SchemaError,
    StoreUnavailableError,
    TransactionConflictError,
)
from .events import START, NewEvent, Position, RecordedEvent
from .factory import create_store, open_read_models
from .live import Evolver, LiveProjection, fold_stream
from .operations import DeadLetter, Fault
from .payloads import Event
from .projection import Kind, OnError, Projection
from .reactor import Reactor
from .readmodel import Checkpoint, ReadModelStore, ReadModelTransaction
from .search import SearchHit, SearchProjection, SearchQueryError
from .source import Decoder, EventSource
from .state import DELETE, Evolved, State, StateProjection
from .status import ProjectionStatus, Severity, UnitState
from .store import (
    ANY,
    NO_STREAM,
    AppendResult,
    Backlog,
    EventBatch,
    EventStore,
    ExpectedVersion,
    HeldBack,
    StoreTransaction,
    StreamState,
)
from .verify import Verification
from .worker import Worker

__all__ = [
    "ANY",
    "DELETE",
    "NO_STREAM",
    "START",
    "AppendResult",
    "Application",
    "BackendError",
    "Backlog",
    "Checkpoint",
    "ConcurrencyError",
    "ConfigurationError",
    "DeadLetter",
    "Decoder",
    "Event",
    "EventBatch",
    "EventDecodingError",
    "EventSource",
    "EventStore",
    "Evolved",
    "Evolver",
    "ExpectedVersion",
    "Fault",
    "HandlerError",
    "HeldBack",
    "InvalidInputError",
    "Kind",
    "LiveProjection",
    "NewEvent",
    "OnError",
    "PayloadValidationError",
    "Position",
    "Projection",
    "ProjectionStatus",
    "ProjectionTimeoutError",
    "ProjectionVersionError",
    "ProjectionistError",
    "Reactor",
    "ReadModelStore",
    "ReadModelTransaction",
    "RecordedEvent",
    "SchemaError",
    "SearchHit",
    "SearchProjection",
    "SearchQueryError",
    "Severity",
    "State",
    "StateProjection",
    "StoreTransaction",
    "StoreUnavailableError",
    "StreamState",
    "TransactionConflictError",
    "UnitState",
    "Verification",
    "Worker",
    "create_store",
    "fold_stream",
    "open_read_models",
]
