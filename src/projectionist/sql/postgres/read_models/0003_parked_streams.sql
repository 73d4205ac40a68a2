-- Streams parked by a unit under on_error='park' (issue 15): the unit's later events of
-- such a stream go to projection_dead_letters behind the one that failed, in order, until
-- 'dead-letters retry' applies them and removes the row. Written in the batch's own
-- transaction, like the letters. position is that of the event that parked the stream.
-- The index serves the letters of one stream of one unit, in order (their ids).

CREATE TABLE {{schema}}.projection_parked_streams (
    unit TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    projection TEXT NOT NULL,
    position TEXT NOT NULL,
    parked_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (unit, stream_id)
);

CREATE INDEX projection_dead_letters_by_stream
    ON {{schema}}.projection_dead_letters (unit, stream_id, id);
