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
