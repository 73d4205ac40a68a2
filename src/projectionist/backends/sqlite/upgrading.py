"""``events upgrade`` on SQLite: stored events rewritten in place to their upcast shape."""

from __future__ import annotations

from collections.abc import Sequence

from ...upcasting import SCHEMA_VERSION, Rewrite
from .database import SqliteDatabase

# Only while the row is still what was read: a second (or a concurrent) upgrade changes
# nothing. Position, id, stream, version and recorded_at are left as they are.
_REWRITE = (
    "UPDATE events SET type = ?, data = ?, metadata = ? WHERE position = ? AND type = ? "
    f"AND coalesce(json_extract(metadata, '$.{SCHEMA_VERSION}'), 1) = ?"
)


async def rewrite_events(database: SqliteDatabase, rewrites: Sequence[Rewrite]) -> int:
    """Write ``rewrites`` in one transaction; how many events changed."""
    rows = [
        (r.type, r.data, r.metadata, r.position.seq, r.old_type, r.old_version) for r in rewrites
    ]
    async with database.transaction("upgrading events", write=True) as connection:
        before = connection.total_changes
        await connection.executemany(_REWRITE, rows)
        return connection.total_changes - before
