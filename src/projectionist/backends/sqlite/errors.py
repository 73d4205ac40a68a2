"""sqlite3's errors said in projectionist's terms."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from ...errors import (
    BackendError,
    MalformedStatementError,
    MissingTableError,
    ProjectionistError,
    SchemaError,
    UnsupportedFeatureError,
)
from ...migrations import VERSION_TABLE

# Tables of our migrations: a statement that misses one means the schema was not applied.
OWN_TABLES = (
    "events",
    "streams",
    VERSION_TABLE,
    "projection_checkpoints",
    "projection_leases",
    "projection_workers",
    "projection_worker_units",
    "projection_faults",
    "projection_dead_letters",
)
# FTS5 reports a malformed MATCH query as its own error (its name in it, or not: an
# unterminated "string, an unknown *special query, a NEAR distance that is no integer), a
# syntax error, or (for a "word:" prefix) an unknown column.
_MALFORMED = (
    "fts5",
    "syntax error",
    "no such column",
    "unterminated string",
    "unknown special query",
    "expected integer",
)


def translate_operational_error(
    exc: sqlite3.OperationalError, doing: str, url: str
) -> ProjectionistError:
    message = str(exc)
    table = message.removeprefix("no such table: ") if message.startswith("no such table") else ""
    if table in OWN_TABLES:
        return SchemaError(
            f"the projectionist schema is missing in {url} (no table {table!r}): "
            "run 'projectionist schema apply' (or await store.apply_schema())"
        )
    if table:
        return MissingTableError(
            f"{doing} failed in {url}: table {table!r} does not exist; "
            "does the projection's setup create it?",
            table,
        )
    if message.startswith("no such module: "):
        return UnsupportedFeatureError(
            f"this SQLite ({sqlite3.sqlite_version}) was built without the "
            f"{message.removeprefix('no such module: ')!r} module"
        )
    if any(marker in message for marker in _MALFORMED):
        return MalformedStatementError(f"{doing} failed in {url}: {message}")
    return BackendError(f"{doing} failed in {url}: {exc}")


@contextlib.contextmanager
def translated(doing: str, url: str) -> Iterator[None]:
    """Driver errors of one statement as projectionist errors, the driver's as the cause."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise translate_operational_error(exc, doing, url) from exc
    except sqlite3.Error as exc:
        raise BackendError(f"{doing} failed in {url}: {type(exc).__name__}: {exc}") from exc
