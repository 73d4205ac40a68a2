"""The SQL of the previous release (0.1.0), frozen: what its ``apply_schema`` ran.

Tests build a database with exactly this and upgrade it with the current code. Never edit
these strings: they are what databases in the field were made with. That release applied
the numbered event migrations (recording them in ``schema_migrations``), then created the
checkpoint table and the operations tables with ``CREATE TABLE IF NOT EXISTS`` from code.
PostgreSQL statements name the schema as ``{{schema}}`` (replaced by the quoted name).
"""

from __future__ import annotations

# fmt: off
POSTGRES_EVENTS_0001 = """\
-- projectionist event store, PostgreSQL. {{schema}} is the configured schema, quoted.
--
-- The global order is the pair (tx_id, position): tx_id is the id of the appending
-- transaction. Readers only see events whose transaction is older than the oldest
-- transaction still running (pg_snapshot_xmin), so no event can later appear before a
-- position a reader has already passed. See docs/global-order.md.

CREATE TABLE {{schema}}.streams (
    stream_id text PRIMARY KEY,
    version bigint NOT NULL CHECK (version >= 0),
    -- The transaction that appended the stream's latest version: a later version must come
    -- from a transaction that is not older, so the global order keeps each stream's order.
    last_tx_id bigint NOT NULL DEFAULT 0
);

CREATE TABLE {{schema}}.events (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    id uuid NOT NULL UNIQUE,
    stream_id text NOT NULL,
    version bigint NOT NULL CHECK (version >= 1),
    type text NOT NULL,
    data jsonb NOT NULL,
    metadata jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, version)
);

CREATE INDEX events_global_order ON {{schema}}.events (tx_id, position);

-- Appends events to one stream with optimistic concurrency, in one round trip.
-- p_expected: NULL for "any", otherwise the exact version the stream must have (0: none).
-- On a version mismatch nothing is written and one row comes back with a NULL position and
-- the stream's actual version. It sends no NOTIFY: a NOTIFY takes a database-wide lock at
-- commit, which would serialize concurrent appends; the store notifies after commit instead.
CREATE FUNCTION {{schema}}.append_events(
    p_stream_id text,
    p_expected bigint,
    p_ids uuid[],
    p_types text[],
    p_data text[],
    p_metadata text[]
) RETURNS TABLE ("position" bigint, tx_id bigint, version bigint, recorded_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_current bigint;
    v_last_tx bigint;
    v_tx bigint := pg_current_xact_id()::text::bigint;
BEGIN
    -- The row lock serializes appends to one stream only; other streams go on in parallel.
    SELECT s.version, s.last_tx_id INTO v_current, v_last_tx FROM {{schema}}.streams s
        WHERE s.stream_id = p_stream_id FOR UPDATE;
    IF NOT FOUND THEN
        IF p_expected IS NOT NULL AND p_expected <> 0 THEN
            RETURN QUERY SELECT NULL::bigint, NULL::bigint, 0::bigint, NULL::timestamptz;
            RETURN;
        END IF;
        INSERT INTO {{schema}}.streams (stream_id, version) VALUES (p_stream_id, 0)
            ON CONFLICT (stream_id) DO NOTHING;
        -- A concurrent creator may have won the insert: lock and read its row.
        SELECT s.version, s.last_tx_id INTO v_current, v_last_tx FROM {{schema}}.streams s
            WHERE s.stream_id = p_stream_id FOR UPDATE;
    END IF;
    IF p_expected IS NOT NULL AND v_current <> p_expected THEN
        RETURN QUERY SELECT NULL::bigint, NULL::bigint, v_current, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_last_tx > v_tx THEN
        -- A younger transaction appended to this stream first. Appending now would put this
        -- later version before that earlier one in the global order. A retry gets a new id.
        RAISE EXCEPTION 'stream % was appended to by a younger transaction', p_stream_id
            USING ERRCODE = 'serialization_failure';
    END IF;
    UPDATE {{schema}}.streams SET version = v_current + cardinality(p_ids), last_tx_id = v_tx
        WHERE stream_id = p_stream_id;
    RETURN QUERY
        INSERT INTO {{schema}}.events (id, stream_id, version, type, data, metadata)
        SELECT u.id, p_stream_id, v_current + u.ord, u.type, u.data::jsonb, u.metadata::jsonb
        FROM unnest(p_ids, p_types, p_data, p_metadata) WITH ORDINALITY
            AS u(id, type, data, metadata, ord)
        ORDER BY u.ord
        RETURNING events.position, events.tx_id, events.version, events.recorded_at;
END;
$$;
"""

POSTGRES_EVENTS_0002 = """\
-- A horizon that belongs to this store (docs/global-order.md, "The horizon").
--
-- Readers used to wait for the oldest transaction of the whole cluster (pg_snapshot_xmin):
-- any write transaction anywhere, a worker's read-model batch, a migration in another
-- database, held every reader of every store back. Now appenders announce themselves: each
-- appending transaction holds a shared transaction-level advisory lock on this store's key
-- (taken before its order key is chosen, held until it ends), and readers wait only for
-- the holders of that lock.
--
-- The order key (the events.tx_id column) of an appending transaction is chosen *after*
-- it announced itself:
-- - its own transaction id, when it had none yet (the usual case: the id is assigned right
--   after the lock);
-- - otherwise (it wrote something else first, so its id may be older than what readers
--   have passed) a fresh subtransaction id, assigned after the lock.
-- Every later append of the same transaction reuses that key (a transaction-local setting
-- remembers it; the setting and the lock both vanish with a rolled-back savepoint, and the
-- next append announces again).

-- This store's advisory lock key: (1886547818, hashtext of the quoted schema), as two int4.
CREATE FUNCTION {{schema}}.store_lock_key() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT hashtext('{{schema}}') & 2147483647 $$;

-- A 32-bit xid (as pg_locks shows it) widened to 64 bits next to a 64-bit reference that is
-- within 2^31 of it (every live transaction id is).
CREATE FUNCTION {{schema}}.widen_xid(p_xid xid, p_reference bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_reference + ((p_xid::text::bigint - (p_reference & 4294967295)
        + 6442450944) % 4294967296) - 2147483648
$$;

-- The horizon: no event with an order key below it can still commit, and every committed
-- one is visible to any snapshot taken after this statement. One statement: its snapshot
-- (taken first) gives xmax, then pg_locks is read; read events with a later statement.
--   least(xmax of this snapshot,
--         the oldest transaction id of each appender holding the lock,
--         this snapshot's xmin if an appender shows no transaction id yet: the instant
--         between its lock and its id, where the id may already exist unseen)
CREATE FUNCTION {{schema}}.horizon() RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    WITH snapshot AS (SELECT pg_current_snapshot() AS s),
    locks AS MATERIALIZED (
        SELECT locktype, database, classid, objid, objsubid, virtualtransaction,
               transactionid, granted
        FROM pg_locks WHERE locktype IN ('advisory', 'transactionid')
    ),
    appenders AS (
        SELECT a.virtualtransaction,
               (SELECT min({{schema}}.widen_xid(t.transactionid,
                           pg_snapshot_xmax((SELECT s FROM snapshot))::text::bigint))
                FROM locks t
                WHERE t.locktype = 'transactionid'
                  AND t.virtualtransaction = a.virtualtransaction) AS oldest
        FROM locks a
        WHERE a.locktype = 'advisory' AND a.granted AND a.objsubid = 2
          AND a.classid = 1886547818 AND a.objid = {{schema}}.store_lock_key()::oid
          AND a.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    )
    SELECT least(
        pg_snapshot_xmax((SELECT s FROM snapshot))::text::bigint,
        (SELECT min(oldest) FROM appenders),
        CASE WHEN EXISTS (SELECT FROM appenders WHERE oldest IS NULL)
             THEN pg_snapshot_xmin((SELECT s FROM snapshot))::text::bigint END
    )
$$;

-- This transaction's order key: announce the transaction (once) and choose its key (once),
-- before anything else of the append is written.
CREATE FUNCTION {{schema}}.order_key(p_stream_id text) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_setting text := 'projectionist.order_key_' || {{schema}}.store_lock_key();
    v_key bigint := nullif(current_setting(v_setting, true), '')::bigint;
    v_had_id boolean;
    v_sub xid;
BEGIN
    IF v_key IS NOT NULL THEN
        RETURN v_key;  -- announced earlier in this transaction: the lock is still held
    END IF;
    v_had_id := pg_current_xact_id_if_assigned() IS NOT NULL;
    PERFORM pg_advisory_xact_lock_shared(1886547818, {{schema}}.store_lock_key());
    IF NOT v_had_id THEN
        v_key := pg_current_xact_id()::text::bigint;  -- assigned now, after the lock
    ELSE
        -- A subtransaction (the block with an EXCEPTION clause) gets its own id at its first
        -- write, after the lock: younger than every id assigned before, so no reader has
        -- passed it. The write is the stream's row, which the append locks anyway.
        BEGIN
            INSERT INTO {{schema}}.streams AS s (stream_id, version) VALUES (p_stream_id, 0)
                ON CONFLICT (stream_id) DO UPDATE SET version = s.version
                RETURNING s.xmin INTO v_sub;
        EXCEPTION WHEN OTHERS THEN
            RAISE;
        END;
        v_key := {{schema}}.widen_xid(v_sub, pg_current_xact_id()::text::bigint);
    END IF;
    PERFORM set_config(v_setting, v_key::text, true);
    RETURN v_key;
END;
$$;

CREATE OR REPLACE FUNCTION {{schema}}.append_events(
    p_stream_id text,
    p_expected bigint,
    p_ids uuid[],
    p_types text[],
    p_data text[],
    p_metadata text[]
) RETURNS TABLE ("position" bigint, tx_id bigint, version bigint, recorded_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_current bigint;
    v_last_tx bigint;
    -- Announce first: locking the stream's row below already assigns a transaction id.
    v_tx bigint := {{schema}}.order_key(p_stream_id);
BEGIN
    -- The row lock serializes appends to one stream only; other streams go on in parallel.
    SELECT s.version, s.last_tx_id INTO v_current, v_last_tx FROM {{schema}}.streams s
        WHERE s.stream_id = p_stream_id FOR UPDATE;
    IF NOT FOUND THEN
        IF p_expected IS NOT NULL AND p_expected <> 0 THEN
            RETURN QUERY SELECT NULL::bigint, NULL::bigint, 0::bigint, NULL::timestamptz;
            RETURN;
        END IF;
        INSERT INTO {{schema}}.streams (stream_id, version) VALUES (p_stream_id, 0)
            ON CONFLICT (stream_id) DO NOTHING;
        -- A concurrent creator may have won the insert: lock and read its row.
        SELECT s.version, s.last_tx_id INTO v_current, v_last_tx FROM {{schema}}.streams s
            WHERE s.stream_id = p_stream_id FOR UPDATE;
    END IF;
    IF p_expected IS NOT NULL AND v_current <> p_expected THEN
        RETURN QUERY SELECT NULL::bigint, NULL::bigint, v_current, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_last_tx > v_tx THEN
        -- A younger transaction appended to this stream first. Appending now would put this
        -- later version before that earlier one in the global order. A retry gets a new key.
        RAISE EXCEPTION 'stream % was appended to by a younger transaction', p_stream_id
            USING ERRCODE = 'serialization_failure';
    END IF;
    UPDATE {{schema}}.streams SET version = v_current + cardinality(p_ids), last_tx_id = v_tx
        WHERE stream_id = p_stream_id;
    RETURN QUERY
        INSERT INTO {{schema}}.events (tx_id, id, stream_id, version, type, data, metadata)
        SELECT v_tx, u.id, p_stream_id, v_current + u.ord, u.type, u.data::jsonb,
               u.metadata::jsonb
        FROM unnest(p_ids, p_types, p_data, p_metadata) WITH ORDINALITY
            AS u(id, type, data, metadata, ord)
        ORDER BY u.ord
        RETURNING events.position, events.tx_id, events.version, events.recorded_at;
END;
$$;
"""

SQLITE_EVENTS_0001 = """\
-- projectionist event store, SQLite. SQLite runs one write transaction at a time, so the
-- autoincrement position commits in order and is a gap-free global order by itself.

CREATE TABLE streams (
    stream_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL CHECK (version >= 0)
) WITHOUT ROWID;

CREATE TABLE events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    UNIQUE (stream_id, version)
);

CREATE INDEX events_type ON events (type, position);
"""

SQLITE_EVENTS_0002 = """\
-- The PostgreSQL store's own horizon (appenders announce themselves, readers wait only for
-- them). SQLite runs one write transaction at a time, so positions already commit in order
-- and nothing changes here: this number keeps both backends' schema versions in step.
SELECT 1;
"""

POSTGRES_CHECKPOINTS_TABLE = """
    CREATE TABLE IF NOT EXISTS {{schema}}.projection_checkpoints (
        name text PRIMARY KEY,
        version integer NOT NULL,
        tx_id bigint NOT NULL,
        position bigint NOT NULL,
        events_processed bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )
"""

SQLITE_CHECKPOINTS_TABLE = """
    CREATE TABLE IF NOT EXISTS projection_checkpoints (
        name TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        tx_id INTEGER NOT NULL,
        position INTEGER NOT NULL,
        events_processed INTEGER NOT NULL,
        updated_at TEXT NOT NULL
    )
"""

# operations._TABLES: {prefix} is a quoted schema and a dot (or nothing), {serial} below.
OPERATIONS_TABLES = """
CREATE TABLE IF NOT EXISTS {prefix}projection_leases (
    unit TEXT PRIMARY KEY,
    projection TEXT NOT NULL,
    owner TEXT,
    token BIGINT NOT NULL DEFAULT 0,
    expires_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    state TEXT,
    events_per_second DOUBLE PRECISION,
    last_batch_seconds DOUBLE PRECISION,
    errors BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    reported_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS {prefix}projection_workers (
    worker_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS {prefix}projection_faults (
    unit TEXT PRIMARY KEY,
    projection TEXT NOT NULL,
    version BIGINT NOT NULL,
    position TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    stream_version BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    error TEXT NOT NULL,
    traceback TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    failed_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS {prefix}projection_dead_letters (
    id {serial},
    projection TEXT NOT NULL,
    unit TEXT NOT NULL,
    version BIGINT NOT NULL,
    position TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    stream_version BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    error TEXT NOT NULL,
    traceback TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    failed_at DOUBLE PRECISION NOT NULL
)
"""
# fmt: on

OPERATIONS_SERIAL = {
    "postgres": "BIGSERIAL PRIMARY KEY",
    "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
}

POSTGRES_EVENT_MIGRATIONS = [
    (1, "0001_initial.sql", POSTGRES_EVENTS_0001),
    (2, "0002_store_horizon.sql", POSTGRES_EVENTS_0002),
]
SQLITE_EVENT_MIGRATIONS = [
    (1, "0001_initial.sql", SQLITE_EVENTS_0001),
    (2, "0002_store_horizon.sql", SQLITE_EVENTS_0002),
]


def operations_statements(dialect: str, prefix: str = "") -> list[str]:
    """operations.table_statements of that release."""
    script = OPERATIONS_TABLES.format(serial=OPERATIONS_SERIAL[dialect], prefix=prefix)
    return [statement for statement in script.split(";") if statement.strip()]


def sqlite_statements(script: str) -> list[str]:
    """That release's split of a SQLite migration into statements."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]
