"""The SQL text of the PostgreSQL event store, built once per store schema.

Every statement names the store's schema explicitly (``q``, already quoted), so a store
never depends on the connection's ``search_path``. The horizon (migration 0002,
docs/global-order.md) is always read in a statement of its own, before the statement that
reads events below it.
"""

from __future__ import annotations

import dataclasses

import asyncpg
from orjson import loads

from ...events import RecordedEvent, new_position, new_recorded_event
from ...partitions import PARTITION_SQL

# The first half of every store's advisory lock key (migration 0002): appenders hold it.
STORE_LOCK_CLASS = 1886547818
# Above every order key: reads in an exclusive replay (appends locked out) see everything.
NO_HORIZON = 9223372036854775807
_EVENT_COLUMNS = (
    "e.position, e.tx_id, e.id, e.stream_id, e.version, e.type, "
    "e.data::text AS data, e.metadata::text AS metadata, e.recorded_at"
)


@dataclasses.dataclass(frozen=True, slots=True)
class EventStatements:
    """The statements of one store (see ``event_statements``)."""

    notify: str
    append: str
    append_reading_path: str
    horizon: str
    head: str
    last_committed: str
    head_held_back: str
    backlog: str
    held_back_since: str
    oldest_appender: str
    read_stream: str
    count_after: str
    count_after_partition: str
    read_all: str
    read_all_types: str
    read_all_partition: str


def event_statements(q: str, channel: str) -> EventStatements:
    """The statements of the store in schema ``q`` (quoted), notifying on ``channel``."""
    count_after = (
        f"SELECT count(*) FROM {q}.events e WHERE (e.tx_id, e.position) > ($1, $2) AND e.tx_id < $3"
    )
    return EventStatements(
        # The channel is built from a validated identifier, so it is safe as a literal.
        notify=(
            f"BEGIN; SET LOCAL synchronous_commit = off; SELECT pg_notify('{channel}', ''); COMMIT"
        ),
        append=f"SELECT * FROM {q}.append_events($1, $2, $3, $4, $5, $6)",
        # An append with inline projections also reads the caller's path, in the same trip.
        append_reading_path=(
            f"SELECT *, current_setting('search_path') AS search_path "
            f"FROM {q}.append_events($1, $2, $3, $4, $5, $6)"
        ),
        horizon=f"SELECT {q}.horizon()",
        head=(
            f"SELECT e.tx_id, e.position FROM {q}.events e WHERE e.tx_id < $1 "
            "ORDER BY e.tx_id DESC, e.position DESC LIMIT 1"
        ),
        last_committed=(
            f"SELECT e.tx_id, e.position FROM {q}.events e "
            "ORDER BY e.tx_id DESC, e.position DESC LIMIT 1"
        ),
        head_held_back=_head_held_back_sql(q),
        backlog=_backlog_sql(q),
        # Seconds the first committed event beyond the horizon has waited, if there is one.
        held_back_since=(
            "SELECT e.tx_id, extract(epoch from clock_timestamp() - e.recorded_at)::float8 "
            f"AS seconds FROM {q}.events e WHERE e.tx_id >= $1 "
            "ORDER BY e.tx_id, e.position LIMIT 1"
        ),
        oldest_appender=_oldest_appender_sql(q),
        read_stream=(
            f"SELECT {_EVENT_COLUMNS} FROM {q}.events e WHERE e.stream_id = $1 "
            "AND e.version >= $2 ORDER BY e.version LIMIT $3"
        ),
        count_after=count_after,
        count_after_partition=(
            count_after
            + f" AND {PARTITION_SQL.format(column='e.stream_id', count='$4::bigint')} = $5"
        ),
        read_all=_read_all_sql(q, filtered=False),
        read_all_types=_read_all_sql(q, filtered=True),
        read_all_partition=_read_all_sql(q, filtered=True, partitioned=True),
    )


def _head_held_back_sql(q: str) -> str:
    return f"""
        SELECT h.tx_id, h.position, coalesce((
            -- the newest committed event (one index entry), not an EXISTS the planner
            -- may answer with a sequential scan
            SELECT b.tx_id FROM {q}.events b ORDER BY b.tx_id DESC, b.position DESC LIMIT 1
        ) >= $1, false) AS held_back
        FROM (SELECT) AS one LEFT JOIN LATERAL (
            SELECT e.tx_id, e.position FROM {q}.events e WHERE e.tx_id < $1
            ORDER BY e.tx_id DESC, e.position DESC LIMIT 1
        ) h ON true
    """


def _backlog_sql(q: str) -> str:
    # Committed events after a position, whether readers see them yet or not: counted up
    # to $3, the rest estimated from positions (status must not count a long backlog).
    part = PARTITION_SQL.format(column="e.stream_id", count="$4::bigint")
    return f"""
        SELECT count(*) AS counted, max(c.position) AS reached,
               min(c.recorded_at) AS oldest,
               (SELECT max(l.position) FROM {q}.events l) AS last
        FROM (
            SELECT e.position, e.recorded_at FROM {q}.events e
            WHERE (e.tx_id, e.position) > ($1, $2) AND ($4 = 1 OR {part} = $5)
            ORDER BY e.tx_id, e.position LIMIT $3
        ) c
    """


def _oldest_appender_sql(q: str) -> str:
    return f"""
        SELECT a.pid, s.state,
               extract(epoch from clock_timestamp() - s.xact_start)::float8 AS seconds
        FROM pg_locks a LEFT JOIN pg_stat_activity s ON s.pid = a.pid
        WHERE a.locktype = 'advisory' AND a.granted AND a.objsubid = 2
          AND a.classid = {STORE_LOCK_CLASS} AND a.objid = {q}.store_lock_key()::oid
          AND a.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          -- a prepared transaction has no process; a process whose transaction ended
          -- between the two reads (idle, or gone) is no holder
          AND (a.pid IS NULL OR (s.pid IS NOT NULL AND s.state IS DISTINCT FROM 'idle'))
        ORDER BY a.pid IS NOT NULL, s.xact_start NULLS LAST LIMIT 1
    """


def _read_all_sql(q: str, *, filtered: bool, partitioned: bool = False) -> str:
    # Only events below the horizon $5 (read by an earlier statement) are read: every
    # transaction below it has ended, so what lies below it is final, and the head below it
    # (read here once, as an InitPlan) cannot move whatever the snapshot. The head lets a
    # filtered read move its checkpoint past events of other types it scanned.
    # The page stops at $3 events or once $4 bytes of payload are reached (at least one
    # event): a running sum that streams in index order, no window over the whole page and
    # no re-sort, so PostgreSQL sends the first row before it has built the page; "reached"
    # (the payload up to and including a row) tells the caller whether bytes cut it short.
    # A partitioned read ($7 of $8) keeps the streams whose hash falls in its partition.
    type_filter = "AND e.type = ANY($6::text[])" if filtered else ""
    if partitioned:  # types optional: NULL for all
        type_filter = "AND ($6::text[] IS NULL OR e.type = ANY($6))"
        part = PARTITION_SQL.format(column="e.stream_id", count="$8::bigint")
        type_filter += f" AND ($8::bigint = 1 OR {part} = $7::bigint)"
    head = (
        f"SELECT h.{{column}} FROM {q}.events h WHERE h.tx_id < $5::bigint "
        "ORDER BY h.tx_id DESC, h.position DESC LIMIT 1"
    )
    return f"""
        SELECT ({head.format(column="tx_id")}) AS head_tx,
               ({head.format(column="position")}) AS head_position,
               w.position, w.tx_id, w.id, w.stream_id, w.version, w.type,
               w.data::text AS data, w.metadata::text AS metadata, w.recorded_at,
               w.before + w.size AS reached
        FROM (
            SELECT c.*, sum(c.size) OVER (
                       ORDER BY c.tx_id, c.position ROWS UNBOUNDED PRECEDING) - c.size AS before
            FROM (
                SELECT e.position, e.tx_id, e.id, e.stream_id, e.version, e.type,
                       e.data, e.metadata, e.recorded_at,
                       pg_column_size(e.data) + pg_column_size(e.metadata) AS size
                FROM {q}.events e
                WHERE e.tx_id < $5::bigint
                  AND (e.tx_id, e.position) > ($1::bigint, $2::bigint)
                  {type_filter}
                ORDER BY e.tx_id, e.position
                LIMIT $3
            ) c
        ) w
        WHERE w.before < $4::bigint
        ORDER BY w.tx_id, w.position
    """


def event_from_row(row: asyncpg.Record, at: int = 0) -> RecordedEvent:
    """Columns position, tx_id, id, stream_id, version, type, data, metadata, recorded_at,
    from index ``at`` on (by index: on the hot path of every read, names cost a lookup)."""
    metadata = row[at + 7]
    return new_recorded_event(
        (
            row[at + 2],
            row[at + 3],
            row[at + 4],
            row[at + 5],
            loads(row[at + 6]),
            {} if metadata == "{}" else loads(metadata),  # most events carry none
            row[at + 8],
            new_position((row[at + 1], row[at])),
        )
    )


def describe_holder(row: asyncpg.Record) -> str:
    """The open appending transaction (a row of ``oldest_appender``), without its SQL text
    (it may hold secrets)."""
    if row["pid"] is None:
        return "a prepared transaction (see pg_prepared_xacts)"
    state = row["state"] or "state not visible to this role"
    age = "" if row["seconds"] is None else f", open {row['seconds']:.1f}s"
    return f"transaction of pid {row['pid']} ({state}{age})"
