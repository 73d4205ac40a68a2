-- projectionist event store, PostgreSQL. {{schema}} is the configured schema, quoted.
--
-- The global order is the pair (tx_id, position): tx_id is the id of the appending
-- transaction. Readers only see events whose transaction is older than the oldest
-- transaction still running (pg_snapshot_xmin), so no event can later appear before a
-- position a reader has already passed. See docs/global-order.md.

CREATE TABLE {{schema}}.streams (
    stream_id text PRIMARY KEY,
    version bigint NOT NULL CHECK (version >= 0)
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
BEGIN
    -- The row lock serializes appends to one stream only; other streams go on in parallel.
    SELECT s.version INTO v_current FROM {{schema}}.streams s
        WHERE s.stream_id = p_stream_id FOR UPDATE;
    IF NOT FOUND THEN
        IF p_expected IS NOT NULL AND p_expected <> 0 THEN
            RETURN QUERY SELECT NULL::bigint, NULL::bigint, 0::bigint, NULL::timestamptz;
            RETURN;
        END IF;
        INSERT INTO {{schema}}.streams (stream_id, version) VALUES (p_stream_id, 0)
            ON CONFLICT (stream_id) DO NOTHING;
        -- A concurrent creator may have won the insert: lock and read its row.
        SELECT s.version INTO v_current FROM {{schema}}.streams s
            WHERE s.stream_id = p_stream_id FOR UPDATE;
    END IF;
    IF p_expected IS NOT NULL AND v_current <> p_expected THEN
        RETURN QUERY SELECT NULL::bigint, NULL::bigint, v_current, NULL::timestamptz;
        RETURN;
    END IF;
    UPDATE {{schema}}.streams SET version = v_current + cardinality(p_ids)
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
