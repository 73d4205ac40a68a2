"""One exception root for everything the library raises.

Driver errors (asyncpg, sqlite3) never escape raw: they are wrapped in a subclass of
``ProjectionistError`` with the original exception as ``__cause__``.
"""

from __future__ import annotations


class ProjectionistError(Exception):
    """Root of every error raised by projectionist."""


class InvalidInputError(ProjectionistError, ValueError):
    """Bad input caught before anything was written: a name, a payload, a size."""


class ConfigurationError(ProjectionistError):
    """A setting cannot work: an unknown URL scheme, an invalid option."""


class StoreUnavailableError(ProjectionistError):
    """The backend cannot be reached (server down, file not writable, database missing)."""


class SchemaError(ProjectionistError):
    """The store's schema is missing, or newer than this version of projectionist knows."""


class BackendError(ProjectionistError):
    """A driver error that has no more specific meaning; the driver's exception is the cause."""


class MissingTableError(BackendError):
    """A statement named a table that does not exist (not one of projectionist's own: a
    missing own table is a SchemaError). ``table`` is its name when the database said it."""

    def __init__(self, message: str, table: str | None = None) -> None:
        self.table = table
        super().__init__(message)


class MalformedStatementError(BackendError):
    """The database could not parse a statement or one of its query arguments: SQL syntax,
    an unknown column, a full-text query in the database's own syntax that is malformed."""


class TransientBackendError(BackendError):
    """The database failed for a reason that passes (resources ran short, an administrator
    intervened): the same work, tried again later, is expected to succeed."""


class UnsupportedFeatureError(ConfigurationError):
    """The database lacks something a read model needs (a SQLite built without FTS5)."""


class TransactionConflictError(ProjectionistError):
    """The transaction lost a race it cannot win as it is; retrying the whole transaction will
    succeed (on PostgreSQL: a younger transaction appended to the same stream first)."""


class ConcurrencyError(ProjectionistError):
    """An append's expected version did not match the stream's actual version.

    Nothing was written. ``expected`` is what the caller asked for and ``actual`` the
    stream's version at the time (0 when the stream does not exist).
    """

    def __init__(self, stream_id: str, expected: object, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"stream {stream_id!r}: expected version {expected}, but the stream is at "
            f"version {actual}{' (it does not exist)' if actual == 0 else ''}; nothing was written"
        )


class HandlerError(ProjectionistError):
    """A projection's handler raised. The batch was rolled back and the checkpoint did not
    move; the handler's exception is the cause. ``event`` is the event being handled (or the
    first of the run a batch handler was given)."""

    def __init__(self, projection: str, event: object, message: str) -> None:
        self.projection = projection
        self.event = event
        super().__init__(message)


class ProjectionVersionError(ProjectionistError):
    """The stored read model was built by another version of the projection."""


class ProjectionTimeoutError(ProjectionistError, TimeoutError):
    """A projection did not reach a position in time (``wait_for``)."""


class LeaseLostError(ProjectionistError):
    """This worker no longer owns the projection (or partition) it was about to write: its
    lease expired or another worker took it over. The batch was rolled back."""


class ProjectionSupersededError(ProjectionVersionError):
    """The stored read model is of a newer version than this code's: a newer deployment
    has taken over (after a blue/green rebuild). This worker leaves the projection alone."""


class EventDecodingError(ProjectionistError):
    """A source could not turn a stored event's payload into data (its decoder raised, or
    the payload is not a JSON object). The read stops at that event, so nothing after it is
    projected; the decoder's exception is the cause."""


class PayloadValidationError(InvalidInputError):
    """An event's data does not validate as the payload type its handler declared. The
    message names the event and each field path (``$.items[0].qty: Expected int, got
    str``), never the values; ``problems`` holds the (path, reason) pairs. A projection
    reports it as the cause of a HandlerError, so its error policy applies."""

    def __init__(
        self, message: str, event_type: str, payload_type: str, problems: list[tuple[str, str]]
    ) -> None:
        self.event_type = event_type
        self.payload_type = payload_type
        self.problems = problems
        super().__init__(message)


class ImportRejectedError(InvalidInputError):
    """An event of an import was refused: nothing of its batch was written (the batches
    before it were). ``index`` counts the input events from 0; ``reason`` says why."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(
            f"input event {index} (counting from 0): {reason}; nothing of its batch was written"
        )
