-- The units each live worker can run (issue 12): the fair share of a unit is computed over
-- the workers that can run it, not over every live worker (workers of another application,
-- or of an older release in a rolling deploy, share the database but not the projections).
-- A worker writes its rows with its heartbeat; they are removed with its projection_workers
-- row (a graceful stop, or forgotten by the others after it stopped beating).
-- lease_seconds is the worker's own lease: it is live while its heartbeat is younger than
-- that (NULL for a row written by an older release: the reader's default applies).

CREATE TABLE {{schema}}.projection_worker_units (
    worker_id TEXT NOT NULL,
    unit TEXT NOT NULL,
    projection TEXT NOT NULL,
    PRIMARY KEY (worker_id, unit)
);

ALTER TABLE {{schema}}.projection_workers ADD COLUMN lease_seconds DOUBLE PRECISION;
