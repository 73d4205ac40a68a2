-- projectionist read-model tables, SQLite.
--
-- The checkpoints and the operations tables (leases, workers, faults, dead letters) live in
-- the read-model database, so a batch writes its rows, its checkpoint, its lease check and
-- its dead letters in one transaction. Written with IF NOT EXISTS: a database made by a
-- release that created these tables from code is adopted as it is (same shapes), not failed.
-- Times of the operations tables are epoch seconds from the database's clock; checkpoint
-- times are ISO 8601 text written by the store.

CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    tx_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    events_processed INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS projection_leases (
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

CREATE TABLE IF NOT EXISTS projection_workers (
    worker_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE IF NOT EXISTS projection_faults (
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

CREATE TABLE IF NOT EXISTS projection_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
);
