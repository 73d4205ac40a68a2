"""The read-model contract: where projections write, and where their checkpoints live.

A projection's handlers and the engine's checkpoint write share one ReadModelTransaction, so
rows and checkpoint commit together or not at all. The read-model store is the event store's
own database unless you give another one: the checkpoint always lives with the read model.
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from .errors import ConfigurationError, InvalidInputError, ProjectionistError
from .events import Position
from .identifiers import quote_identifier


class CheckpointConflictError(ProjectionistError):
    """Another runner moved the projection's checkpoint first; this batch was rolled back."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a projection has come, as stored with its read model."""

    name: str
    version: int
    position: Position
    events_processed: int
    updated_at: datetime


# -- SQL features and bulk writes (what differs between SQL databases, said by the backend) ---

FullText = Literal["tsvector", "fts5"]
"""A database's full-text search engine: PostgreSQL's ``tsvector``, SQLite's FTS5."""


@dataclass(frozen=True, slots=True)
class SqlFeatures:
    """The few pieces of SQL that differ between the databases, as the backend states them.

    The engine writes one statement for every SQL backend and splices these in, instead of
    asking which database it talks to.
    """

    document_type: str
    """Column type of a JSON document (``JSONB`` on PostgreSQL, ``TEXT`` on SQLite)."""
    document_as_text: str
    """Appended to a document column to read it as JSON text (``::text``, or nothing)."""
    clock: str
    """The database's current time in epoch seconds (the clock's, not the transaction's)."""
    take_or_skip: str
    """Appended to a SELECT of one row: lock it for an update, skipping it if it is locked."""
    share_with_takers: str
    """Appended to a SELECT of one row: keep it from being taken until the commit."""
    one_of_texts: str
    """A condition ``{column}`` is one of the texts in parameter ``{param}`` (see text_list)."""
    texts_as_json: bool
    """Whether that parameter is a JSON array's text (else a list of strings)."""
    table_columns: str
    """A query of the columns of table ``$1`` in the read models' own schema, in order: rows
    of (name, whether it is part of the primary key); no rows when the table does not exist."""
    full_text: FullText | None = None
    """The full-text search engine, if the database has one."""

    def is_one_of(self, column: str, param: str) -> str:
        """SQL: ``column`` (already quoted) is one of the texts bound to ``param`` (``$1``)."""
        return self.one_of_texts.format(column=column, param=param)

    def text_list(self, values: Sequence[str]) -> object:
        """The argument to bind for ``is_one_of``."""
        return orjson.dumps(list(values)).decode() if self.texts_as_json else list(values)


def upsert_sql(table: str, key: Sequence[str], columns: Sequence[str], source: str) -> str:
    """``INSERT INTO table (key..., columns...) <source> ON CONFLICT (key...) DO UPDATE``.

    Identifiers are validated and quoted; ``source`` is ``VALUES (...)`` or a ``SELECT``.
    """
    keys = [quote_identifier(name) for name in key]
    values = [quote_identifier(name) for name in columns]
    if not keys:
        raise InvalidInputError("an upsert needs at least one key column")
    conflict = "DO NOTHING"
    if values:
        conflict = "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in values)
    return (
        f"INSERT INTO {quote_identifier(table)} ({', '.join(keys + values)}) {source} "
        f"ON CONFLICT ({', '.join(keys)}) {conflict}"
    )


def values_marks(count: int) -> str:
    """``VALUES ($1, ..., $count)``."""
    return "VALUES (" + ", ".join(f"${n}" for n in range(1, count + 1)) + ")"


class ReadModelTransaction(abc.ABC):
    """An open transaction on the read model's database.

    SQL uses PostgreSQL's ``$1, $2`` placeholders on every backend (SQLite gets them
    translated), so one projection runs unchanged on both. ``connection`` is the driver's own
    connection (asyncpg or aiosqlite) inside the transaction, for anything else.
    """

    dialect: str
    """``"postgres"`` or ``"sqlite"``: for the rare statement that must differ."""
    connection: Any
    replaying: bool = False
    """True while the engine replays history into this transaction: a rebuild, a blue/green
    build, ``verify`` or a partial replay (including the events that arrive meanwhile).
    False for a runner's catch-up and live batches and for inline appends. For the rare
    handler that must know; effects outside the read model belong in a reactor
    (docs/side-effects.md), which no replay runs."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: object) -> int:
        """Run one statement; return the number of rows it changed (when the driver says)."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        """Run one statement for each row of arguments, in one round trip where possible."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """All result rows as tuples."""

    async def fetchval(self, sql: str, *args: object) -> Any:
        """The first column of the first row, or None."""
        rows = await self.fetch(sql, *args)
        return rows[0][0] if rows else None

    # -- queued writes -----------------------------------------------------------------------

    _queued: list[tuple[str, tuple[object, ...]]] | None = None

    def queue(self, sql: str, *args: object) -> None:
        """Run a write later, without waiting for it: the fast way for per-event SQL.

        Queued statements are sent, in order, before this transaction's next statement
        (``execute``, ``executemany``, ``fetch``, ``fetchval``, ``bulk_upsert``) and when a
        projection's handlers for the batch have run; consecutive ones with the same SQL
        text go as one ``executemany`` (one round trip on PostgreSQL). So a handler always
        reads its own writes through ``tx``; before using ``tx.connection`` directly, call
        ``await tx.flush()``. An error of a queued statement surfaces when it is sent, and
        the runner then applies the batch one event at a time to name the failing event.
        There is no row count: use ``execute`` when you need one.
        """
        if not isinstance(sql, str):
            raise InvalidInputError(f"queue takes SQL text, not {type(sql).__name__}")
        if self._queued is None:
            self._queued = []
        self._queued.append((sql, args))

    async def flush(self) -> None:
        """Send the queued writes now (see ``queue``)."""
        queued, self._queued = self._queued, None
        if not queued:
            return
        for sql, run in itertools.groupby(queued, key=lambda statement: statement[0]):
            rows = [args for _, args in run]
            if len(rows) == 1:
                await self.execute(sql, *rows[0])
            else:
                await self.executemany(sql, rows)

    # -- used by the engine -----------------------------------------------------------------

    @abc.abstractmethod
    async def load_checkpoint(self, name: str, *, lock: bool = False) -> Checkpoint | None:
        """The stored checkpoint of ``name``; with ``lock``, other runners wait for our commit."""

    @abc.abstractmethod
    async def save_checkpoint(
        self, name: str, version: int, expected: Position | None, new: Position, processed: int
    ) -> None:
        """Move the checkpoint from ``expected`` (None: create it) to ``new``.

        Raises CheckpointConflictError when the stored position is not ``expected``.
        """

    async def checkpoint_versions(self) -> dict[str, int]:
        """Every stored checkpoint's name and version (e.g. to spot another partitioning)."""
        rows = await self.fetch("SELECT name, version FROM projection_checkpoints")
        return {row[0]: int(row[1]) for row in rows}

    @abc.abstractmethod
    async def lock_projection(self, name: str) -> None:
        """Hold a lock on ``name`` until the transaction ends (set-up and resets queue on it)."""

    @abc.abstractmethod
    async def delete_checkpoint(self, name: str) -> None:
        """Forget the checkpoint of ``name`` (before a rebuild)."""

    @abc.abstractmethod
    async def drop_tables(self, tables: Sequence[str]) -> None:
        """Drop the given (validated) tables if they exist."""

    # -- SQL features and bulk writes --------------------------------------------------------

    @property
    def sql(self) -> SqlFeatures:
        """The SQL that differs on this database (a SQL backend sets it)."""
        raise ConfigurationError(f"{type(self).__name__} is not a SQL database's transaction")

    async def bulk_upsert(
        self,
        table: str,
        key: Sequence[str],
        columns: Sequence[str],
        rows: Sequence[Sequence[object]],
        *,
        shape: str = "",
    ) -> None:
        """Insert ``rows`` (values of ``key`` then ``columns``, in order) into ``table``,
        replacing the rows of keys that exist, in this transaction.

        Identifiers are validated and quoted, values are parameters. ``shape`` names the
        table's current column types (a projection's version): a backend that keeps a
        staging table per target (PostgreSQL's COPY path) keeps one per shape. This
        default is one pipelined upsert; a backend overrides it with something faster.
        """
        del shape  # no staging here
        if not rows:
            return
        source = values_marks(len(key) + len(columns))
        await self.executemany(upsert_sql(table, key, columns, source), rows)


class ReadModelStore(abc.ABC):
    """A database that holds read models and their checkpoints."""

    dialect: str

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[ReadModelTransaction]:
        """A transaction: commits when the block ends, rolls back on an exception."""

    @abc.abstractmethod
    async def apply_schema(self) -> None:
        """Create the checkpoint table if it is missing (idempotent)."""

    @abc.abstractmethod
    async def checkpoints(self) -> dict[str, Checkpoint]:
        """Every stored checkpoint by projection name."""

    def guard_transactions(self, owner: str, idle_seconds: float) -> None:
        """Transactions of this store now belong to ``owner`` (a worker): have the database
        end one that stays idle (no statement running) longer than ``idle_seconds``, rolling
        it back and releasing its locks, so a paused or frozen owner blocks nobody for long;
        and mark them so that ``end_stuck_transactions(owner, ...)`` can find them. Only where
        the database can do it (PostgreSQL); a no-op elsewhere."""
        del (
            owner,
            idle_seconds,
        )  # SQLite and Redis have no such limit: a paused writer is waited for

    async def end_stuck_transactions(self, owner: str, older_than: float) -> int:
        """End the open transactions of ``owner`` (see ``guard_transactions``) that began more
        than ``older_than`` seconds ago; return how many. A worker calls it for the owner of
        an expired lease whose row is still locked: a process stopped in the middle of a
        statement is not idle, so no idle limit ends its transaction. 0 where unsupported."""
        del owner, older_than
        return 0

    def side_schemas(self) -> SideSchemas | None:
        """Side schemas of this store's database (blue/green builds), or None where the
        database has none (SQLite, memory, Redis): callers ask, then build or don't."""
        return None

    def scratch(self, label: str) -> AbstractAsyncContextManager[ReadModelStore]:
        """An empty read-model store of the same kind, removed on exit (``verify`` rebuilds
        into it): a side schema on PostgreSQL, a temporary database file on SQLite."""
        raise ConfigurationError(
            f"{type(self).__name__} has no scratch space: verify and rebuild into a scratch "
            "store need a SQL read-model store"
        )

    async def checkpoint(self, name: str) -> Checkpoint | None:
        """The stored checkpoint of one projection, or None."""
        async with self.transaction() as tx:
            return await tx.load_checkpoint(name)


class SideSchemas(abc.ABC):
    """Whole read models built in side schemas of the store's database, beside the live
    ones, then swapped in by moving their tables in one transaction (blue/green builds).

    What is built where and when to swap is the caller's logic; this says how the database
    does it. Schema names are given unquoted; they are validated identifiers.
    """

    @property
    @abc.abstractmethod
    def base(self) -> str:
        """Names the store's own schema uniquely in the database (PostgreSQL: its quoted
        name): side schemas' names are derived from it, so that applications in other
        schemas have side schemas of their own."""

    @abc.abstractmethod
    def side(self, schema: str) -> ReadModelStore:
        """A store on the same database whose read models and checkpoints live in ``schema``
        (its ``apply_schema()`` creates it); the operations tables stay the base store's."""

    @abc.abstractmethod
    async def swap_in(
        self,
        tx: ReadModelTransaction,
        side: str,
        tables: Sequence[str],
        *,
        retire_to: str,
        retire_until: float,
        label: str,
    ) -> None:
        """In ``tx``, a transaction of the base store: move those of ``tables`` that exist in
        the base schema to the schema ``retire_to``, move ``side``'s into the base schema,
        copy ``side``'s checkpoints into the base's (the caller deleted the old ones) and
        drop ``side``. The retired schema remembers ``retire_until`` (seconds since the
        epoch) and ``label`` (what it held) for ``drop_retired``."""

    @abc.abstractmethod
    async def drop_retired(self, prefix: str, now: float) -> list[str]:
        """Drop this base's retired schemas whose names start with ``prefix`` and whose
        ``retire_until`` is not after ``now``; return their names."""
