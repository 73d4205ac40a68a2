"""The SQLite backend (aiosqlite): event store, read-model store, their SQL and errors.

``event_store`` holds the EventStore, ``database`` the one connection and its
transactions, ``statements`` the SQL, ``read_models`` the ReadModelStore and its
transactions, ``errors`` the translation of driver errors, ``migrating`` the migration
runner's session.
"""

from .database import SqliteDatabase, sqlite_path
from .event_store import SqliteEventStore
from .read_models import SqliteReadModelStore, SqliteReadModelTransaction
from .statements import to_sqlite_placeholders

__all__ = [
    "SqliteDatabase",
    "SqliteEventStore",
    "SqliteReadModelStore",
    "SqliteReadModelTransaction",
    "sqlite_path",
    "to_sqlite_placeholders",
]
