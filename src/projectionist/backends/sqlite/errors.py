"""sqlite3's errors said in projectionist's terms."""

from __future__ import annotations

import sqlite3

from ...errors import BackendError, ProjectionistError, SchemaError
from ...migrations import VERSION_TABLE

# Tables of our migrations: a statement that misses one means the schema was not applied.
OWN_TABLES = (
    "events",
    "streams",
    VERSION_TABLE,
    "projection_checkpoints",
    "projection_leases",
    "projection_workers",
    "projection_faults",
    "projection_dead_letters",
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
        return BackendError(
            f"{doing} failed in {url}: table {table!r} does not exist; "
            "does the projection's setup create it?"
        )
    return BackendError(f"{doing} failed in {url}: {exc}")
