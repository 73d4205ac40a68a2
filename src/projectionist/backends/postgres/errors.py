"""asyncpg's exceptions said in projectionist's terms, and why a connection failed."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator

import asyncpg

from ...errors import (
    BackendError,
    MalformedStatementError,
    MissingTableError,
    ProjectionistError,
    SchemaError,
    StoreUnavailableError,
    TransactionConflictError,
    TransientBackendError,
)
from ...migrations import VERSION_TABLE

# Objects of our migrations: a statement that misses one means the schema was not applied.
OWN_OBJECTS = (
    "events",
    "streams",
    VERSION_TABLE,
    "projection_checkpoints",
    "projection_leases",
    "projection_workers",
    "projection_worker_units",
    "projection_faults",
    "projection_dead_letters",
    "append_events",
    "horizon",
)
CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
)


def why_no_connection(exc: BaseException) -> str:
    """What is wrong when a connection cannot be made, said without naming any tool."""
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"the server answers, but that database does not exist ({exc})"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):  # or a bad password
        return f"the server refused the login ({exc})"
    if isinstance(exc, asyncpg.PostgresError):
        return f"the server refused the connection ({exc})"
    return f"no PostgreSQL server answers at that address ({exc})"


@contextlib.contextmanager
def translate_errors(doing: str, schema: str, url: str) -> Iterator[None]:
    """Driver errors of a statement on the store ``schema`` at ``url`` as our errors."""
    try:
        yield
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError) as exc:
        if not any(name in str(exc) for name in OWN_OBJECTS):
            raise BackendError(f"{doing} failed: {exc}") from exc
        raise SchemaError(
            f"the projectionist schema {schema!r} is missing or not up to date in "
            f"{url}: run 'projectionist schema apply' (or await store.apply_schema())"
        ) from exc
    except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError) as exc:
        raise TransactionConflictError(
            f"{doing} failed: {exc}; roll back and retry the whole transaction"
        ) from exc
    except asyncpg.InvalidSchemaNameError as exc:
        raise SchemaError(
            f"schema {schema!r} does not exist in {url}: run 'projectionist schema apply'"
        ) from exc
    except CONNECTION_ERRORS as exc:
        raise StoreUnavailableError(f"{doing} failed, {url}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise BackendError(f"{doing} failed: {exc}") from exc


_RELATION = re.compile(r'relation "([^"]+)" does not exist')
# SQLSTATE classes that pass: insufficient resources, operator intervention (a shutdown, not
# a cancelled query). Connection exceptions (08) and rollbacks (40) have their own errors.
_TRANSIENT_SQLSTATES = ("53", "57P")


@contextlib.contextmanager
def translate_statement_errors(schema: str) -> Iterator[None]:
    """A read-model statement's driver errors as our errors, the driver's as the cause: a
    lost connection is StoreUnavailableError, a lost race TransactionConflictError (both
    retried as transient), a missing table MissingTableError, bad syntax (or an argument
    it cannot parse) MalformedStatementError, anything else BackendError."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise StoreUnavailableError(f"lost the read model's connection: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise statement_error(exc, schema) from exc


def statement_error(exc: asyncpg.PostgresError, schema: str) -> ProjectionistError:
    """The projectionist error that stands for ``exc`` from a statement on ``schema``."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError):
        if any(name in str(exc) for name in OWN_OBJECTS):
            return SchemaError(
                f"the projectionist schema {schema} is missing or not up to date ({exc}): run "
                "'projectionist schema apply' (or await store.apply_schema())"
            )
        if isinstance(exc, asyncpg.UndefinedTableError):
            match = _RELATION.search(str(exc))
            return MissingTableError(text, match.group(1) if match else None)
    if isinstance(exc, asyncpg.TransactionRollbackError):  # serialization failure, deadlock
        return TransactionConflictError(f"{text}; roll back and retry the whole transaction")
    # A query argument the database cannot parse is malformed too: a tsquery's phrase
    # distance beyond its range is an invalid parameter value, not a syntax error.
    if isinstance(exc, asyncpg.PostgresSyntaxError | asyncpg.InvalidParameterValueError):
        return MalformedStatementError(text)
    if exc.sqlstate.startswith(_TRANSIENT_SQLSTATES):
        return TransientBackendError(text)
    return BackendError(text)
