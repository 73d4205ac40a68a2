"""``events upgrade`` on PostgreSQL: stored events rewritten in place to their upcast shape.

An UPDATE, not an append: the rows keep their position and order key (``tx_id``), id,
stream version and recorded_at, so the global order and every checkpoint stay valid. It
takes no advisory lock of the store (it is no appender), so the horizon does not wait for
it, and it sends no notification: there is nothing new to read. The events table has no
trigger or rule (sql/postgres/events/): nothing else runs. A replay that holds appends back
(``LOCK ... IN SHARE MODE``) and the upgrade wait for each other.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...upcasting import SCHEMA_VERSION, Rewrite
from .connections import Connection


def rewrite_sql(quoted_schema: str) -> str:
    """One statement for a whole batch; a row changes only while it is still what was
    read (type and schema version), so a second or concurrent upgrade changes nothing."""
    return (
        f"UPDATE {quoted_schema}.events AS e SET type = u.type, data = u.data::jsonb, "
        "metadata = u.metadata::jsonb "
        "FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], "
        "$6::text[]) AS u(position, old_type, old_version, type, data, metadata) "
        "WHERE e.position = u.position AND e.type = u.old_type "
        f"AND coalesce(e.metadata -> '{SCHEMA_VERSION}', '1'::jsonb) = to_jsonb(u.old_version)"
    )


async def rewrite_events(
    connection: Connection, quoted_schema: str, rewrites: Sequence[Rewrite]
) -> int:
    """Write ``rewrites`` in one statement (its own transaction); how many events changed."""
    status = await connection.execute(
        rewrite_sql(quoted_schema),
        [r.position.seq for r in rewrites],
        [r.old_type for r in rewrites],
        [r.old_version for r in rewrites],
        [r.type for r in rewrites],
        [r.data for r in rewrites],
        [r.metadata for r in rewrites],
    )
    return int(status.rsplit(" ", 1)[-1])
