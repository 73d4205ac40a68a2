"""asyncpg's exceptions said in projectionist's terms, and why a connection failed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import asyncpg

from ...errors import (
    BackendError,
    SchemaError,
    StoreUnavailableError,
    TransactionConflictError,
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


@contextlib.contextmanager
def lost_connection_is_unavailable() -> Iterator[None]:
    """A handler's statement on a dead connection: say so in our terms (retried as transient),
    keeping the driver's exception as the cause. Other driver errors stay as they are."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise StoreUnavailableError(f"lost the read model's connection: {exc}") from exc
