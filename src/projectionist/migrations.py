"""Schema migrations shipped as package data: ``sql/<backend>/NNNN_name.sql``.

Each file is applied once, in order, and its number recorded; applying is idempotent.
PostgreSQL files name the schema as ``{{schema}}``, replaced by the quoted, validated name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_FILE_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(backend: str) -> list[Migration]:
    """The migrations of ``backend`` ("postgres" or "sqlite"), numbered 1, 2, 3... in order."""
    folder = resources.files("projectionist") / "sql" / backend
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda migration: migration.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"projectionist's {backend} migrations are not numbered 1..n: {found}")
    return found


def latest_version(backend: str) -> int:
    return len(load_migrations(backend))
