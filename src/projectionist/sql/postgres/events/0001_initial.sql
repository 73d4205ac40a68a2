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
