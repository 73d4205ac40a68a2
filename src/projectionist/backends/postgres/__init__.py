"""The PostgreSQL backend (asyncpg): event store, read-model store, their SQL and errors.

``event_store`` holds the EventStore, ``statements`` its SQL text, ``read_models`` the
ReadModelStore and its transactions, ``errors`` the translation of driver errors,
``migrating`` the migration runner's session, ``notifications`` LISTEN/NOTIFY,
``table_source`` the rows of any table as events, ``message_db`` the messages of a
Message DB.
"""

from .connections import Connection
from .event_store import DEFAULT_SCHEMA, PostgresEventStore
from .message_db import MessageDbSource
from .read_models import PostgresReadModelStore, PostgresReadModelTransaction, owner_label
from .statements import STORE_LOCK_CLASS
from .table_source import ColumnMap, PostgresTableSource, prepare_sql
from .transactions import PostgresTransaction

__all__ = [
    "DEFAULT_SCHEMA",
    "STORE_LOCK_CLASS",
    "ColumnMap",
    "Connection",
    "MessageDbSource",
    "PostgresEventStore",
    "PostgresReadModelStore",
    "PostgresReadModelTransaction",
    "PostgresTableSource",
    "PostgresTransaction",
    "owner_label",
    "prepare_sql",
]
