"""The SQL of ``MessageDbSource`` (message_db.py): Message DB's objects, every value a parameter.

Every statement names its objects with the ``message_store`` schema, so it needs no
search_path. Reads per category go through Message DB's own index ``messages_category``
(``category(stream_name), global_position, ...``): one ordered index scan per chosen
category, merged, instead of sorting every message of the range (PostgreSQL 15 cannot keep
index order over ``category = ANY(...)``).
"""

from __future__ import annotations

from ...partitions import PARTITION_SQL

MESSAGES = "message_store.messages"
SEQUENCE = "message_store.messages_global_position_seq"
CATEGORY = "message_store.category(m.stream_name)"

# What must exist for the source to read (open() checks it once).
INSTALLED = f"""
    SELECT to_regclass('{MESSAGES}') IS NOT NULL AS messages,
           to_regclass('{SEQUENCE}') IS NOT NULL AS sequence,
           to_regprocedure('message_store.hash_64(varchar)') IS NOT NULL AS hash_64,
           to_regprocedure('message_store.category(varchar)') IS NOT NULL AS category,
           (SELECT cache_size FROM pg_sequences
            WHERE schemaname = 'message_store'
              AND sequencename = 'messages_global_position_seq') AS cache_size"""

# t0: the last global position drawn so far (non-transactional: seen at once by all).
LAST_DRAWN = f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {SEQUENCE}"

# The advisory lock of category $1 as pg_locks shows a bigint key: its high and low 32
# bits as classid and objid, objsubid 1, in this database only (advisory locks are per
# database). The key is hash_64(category), computed by Message DB's own function.
_LOCK_OF = """
    l.locktype = 'advisory' AND l.objsubid = 1
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.classid = ((message_store.hash_64({category}) >> 32) & 4294967295)::oid
    AND l.objid = (message_store.hash_64({category}) & 4294967295)::oid"""

# t1: which of the categories $1 have their writer's lock held right now.
HELD = f"""
    SELECT coalesce(array_agg(c.category), '{{}}') FROM unnest($1::text[]) AS c(category)
    WHERE EXISTS (
        SELECT FROM pg_locks l WHERE l.granted AND {_LOCK_OF.format(category="c.category")})"""

# Who holds the locks of categories $1: process id, state and transaction age only.
HOLDERS = f"""
    SELECT c.category, l.pid, a.state,
           extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS age
    FROM unnest($1::text[]) AS c(category)
    JOIN pg_locks l ON l.granted AND {_LOCK_OF.format(category="c.category")}
    LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    ORDER BY a.xact_start NULLS LAST"""


def _horizon(categories: str, floors: str, after: str) -> str:
    """The CTEs ``tops`` (per category the least position that no later message of it can
    be at or below: its highest visible one, its floor, or ``after``) and ``horizon``
    (``h``, the least of them). The statement's snapshot is the one the page is read with."""
    return f"""
        tops AS (
            SELECT c.category, greatest({after}::bigint, c.floor, (
                       SELECT max(m.global_position) FROM {MESSAGES} m
                       WHERE {CATEGORY} = c.category)) AS top
            FROM unnest({categories}::text[], {floors}::bigint[]) AS c(category, floor)),
        horizon AS (SELECT min(t.top) AS h FROM tops t)"""


def _partition(count: str, index: str) -> str:
    hashed = PARTITION_SQL.format(column="m.stream_name", count=count)
    return f"({count}::int = 1 OR {hashed} = {index})"


# t2: $1 categories, $2 their floors, $3 after, $4 limit, $5 types, $6 $7 the partition,
# $8 max bytes. The horizon and the page share one snapshot.
PAGE = f"""
    WITH {_horizon("$1", "$2", "$3")},
    chosen AS (
        SELECT x.* FROM unnest($1::text[]) AS c(category) CROSS JOIN horizon
        CROSS JOIN LATERAL (
            SELECT m.global_position AS seq, m.stream_name, m.type, m.position AS version,
                   m.id, m.time, m.data::text AS data, m.metadata::text AS metadata,
                   coalesce(octet_length(m.data::text), 0)
                   + coalesce(octet_length(m.metadata::text), 0) AS size
            FROM {MESSAGES} m
            WHERE {CATEGORY} = c.category
              AND m.global_position > $3::bigint AND m.global_position <= horizon.h
              AND ($5::text[] IS NULL OR m.type = ANY($5::text[]))
              AND {_partition("$6", "$7")}
            ORDER BY m.global_position LIMIT $4) x
        ORDER BY x.seq LIMIT $4),
    page AS (
        SELECT c.*, count(*) OVER () AS fetched,
               sum(c.size) OVER (ORDER BY c.seq) - c.size AS before
        FROM chosen c)
    SELECT horizon.h, p.* FROM horizon
    LEFT JOIN page p ON p.before < $8::bigint
    ORDER BY p.seq"""

# The last visible message at or below the horizon: $1 categories, $2 their floors.
HEAD = f"""
    WITH {_horizon("$1", "$2", "0")}
    SELECT max(x.seq) FROM unnest($1::text[]) AS c(category) CROSS JOIN horizon
    CROSS JOIN LATERAL (
        SELECT max(m.global_position) AS seq FROM {MESSAGES} m
        WHERE {CATEGORY} = c.category AND m.global_position <= horizon.h) x"""

# The visible messages after $3 up to the horizon, of partition $4 $5 (an exact count).
COUNT = f"""
    WITH {_horizon("$1", "$2", "$3")}
    SELECT count(*) FROM {MESSAGES} m, horizon
    WHERE {CATEGORY} = ANY($1::text[])
      AND m.global_position > $3::bigint AND m.global_position <= horizon.h
      AND {_partition("$4", "$5")}"""

# The first visible message beyond the horizon, how long it has waited, and the held
# held categories ($3) that stop the horizon: $1 categories, $2 their floors.
HELD_BACK = f"""
    WITH {_horizon("$1", "$2", "0")},
    beyond AS (
        SELECT min(x.time) AS time FROM unnest($1::text[]) AS c(category) CROSS JOIN horizon
        CROSS JOIN LATERAL (
            SELECT m.time FROM {MESSAGES} m
            WHERE {CATEGORY} = c.category AND m.global_position > horizon.h
            ORDER BY m.global_position LIMIT 1) x)
    SELECT extract(epoch FROM (clock_timestamp() AT TIME ZONE 'utc') - b.time)::float8,
           (SELECT array_agg(t.category) FROM tops t
            WHERE t.category = ANY($3::text[]) AND t.top = horizon.h)
    FROM beyond b, horizon WHERE b.time IS NOT NULL"""

# The last committed message of the categories $1, visible or not yet.
LAST = f"""
    SELECT max(x.seq) FROM unnest($1::text[]) AS c(category)
    CROSS JOIN LATERAL (
        SELECT max(m.global_position) AS seq FROM {MESSAGES} m
        WHERE {CATEGORY} = c.category) x"""

# Up to $5 committed messages after $2 (held back or not), of partition $3 $4: how many,
# the last counted, the oldest time. $1 categories.
BOUNDED_COUNT = f"""
    SELECT count(*) AS counted, max(y.seq) AS reached, min(y.time) AS oldest FROM (
        SELECT x.seq, x.time FROM unnest($1::text[]) AS c(category)
        CROSS JOIN LATERAL (
            SELECT m.global_position AS seq, m.time FROM {MESSAGES} m
            WHERE {CATEGORY} = c.category AND m.global_position > $2::bigint
              AND {_partition("$3", "$4")}
            ORDER BY m.global_position LIMIT $5) x
        ORDER BY x.seq LIMIT $5) y"""
