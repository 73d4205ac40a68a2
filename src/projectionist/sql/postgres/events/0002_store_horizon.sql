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
