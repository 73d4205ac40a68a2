"""PostgreSQL read models: the read-model store and its transactions, in one schema.

A store works in the event store's schema, or in a side schema (a blue/green build, a
verification) that puts itself in front of the base schema on the ``search_path``.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import asyncpg

from ...errors import ConfigurationError
from ...events import Position
from ...identifiers import quote_identifier
from ...migrations import READ_MODELS, apply_migrations
from ...readmodel import (
    Checkpoint,
    CheckpointConflictError,
    ReadModelStore,
    ReadModelTransaction,
    SideSchemas,
)
from .bulk import COPY_THRESHOLD, POSTGRES_FEATURES, copy_upsert
from .connections import Connection
from .errors import translate_statement_errors
from .migrating import MigrationSession
from .side_schemas import PostgresSideSchemas

_CHECKPOINT_SELECT = "SELECT name, version, tx_id, position, events_processed, updated_at FROM"
TranslateErrors = Callable[[str], contextlib.AbstractContextManager[None]]
"""The event store's error translation, given what is being done."""


def _rows_changed(status: str) -> int:
    """``"UPDATE 3"`` -> 3; statements without a count -> 0."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class PostgresReadModelTransaction(ReadModelTransaction):
    """A read-model transaction on one pooled connection; statements' driver errors arrive
    as projectionist errors (see ``errors.translate_statement_errors``)."""

    dialect = "postgres"
    sql = POSTGRES_FEATURES

    def __init__(self, connection: Connection, quoted_schema: str) -> None:
        self.connection = connection
        self._schema = quoted_schema
        self._table = f"{quoted_schema}.projection_checkpoints"

    async def execute(self, sql: str, *args: object) -> int:
        if self._queued:
            await self.flush()
        with translate_statement_errors(self._schema):
            return _rows_changed(await self.connection.execute(sql, *args))

    async def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        if self._queued:
            await self.flush()
        with translate_statement_errors(self._schema):
            await self.connection.executemany(sql, rows)

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        if self._queued:
            await self.flush()
        with translate_statement_errors(self._schema):
            return [tuple(row) for row in await self.connection.fetch(sql, *args)]

    async def bulk_upsert(
        self,
        table: str,
        key: Sequence[str],
        columns: Sequence[str],
        rows: Sequence[Sequence[object]],
        *,
        shape: str = "",
    ) -> None:
        if self._queued:
            await self.flush()
        if len(rows) < COPY_THRESHOLD:  # a live batch: one pipelined upsert beats COPY's trips
            await super().bulk_upsert(table, key, columns, rows, shape=shape)
            return
        with translate_statement_errors(self._schema):
            await copy_upsert(self.connection, self._schema, table, key, columns, rows, shape)

    async def load_checkpoint(self, name: str, *, lock: bool = False) -> Checkpoint | None:
        row = await self.connection.fetchrow(
            f"{_CHECKPOINT_SELECT} {self._table} WHERE name = $1{' FOR UPDATE' if lock else ''}",
            name,
        )
        return None if row is None else _checkpoint_from_row(row)

    async def save_checkpoint(
        self, name: str, version: int, expected: Position | None, new: Position, processed: int
    ) -> None:
        if expected is None:
            status = await self.connection.execute(
                f"INSERT INTO {self._table} (name, version, tx_id, position, events_processed) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
                name, version, new.tx, new.seq, processed,
            )  # fmt: skip
        else:
            status = await self.connection.execute(
                f"UPDATE {self._table} SET version = $2, tx_id = $3, position = $4, "
                "events_processed = events_processed + $5, updated_at = now() "
                "WHERE name = $1 AND tx_id = $6 AND position = $7",
                name, version, new.tx, new.seq, processed, expected.tx, expected.seq,
            )  # fmt: skip
        if _rows_changed(status) != 1:
            raise CheckpointConflictError(
                f"projection {name!r}: another runner moved the checkpoint first"
            )

    async def lock_projection(self, name: str) -> None:
        await self.connection.execute(
            "SELECT pg_advisory_xact_lock(hashtext('projectionist.projection.' || $1))",
            f"{self._table}.{name}",
        )

    async def delete_checkpoint(self, name: str) -> None:
        await self.execute(f"DELETE FROM {self._table} WHERE name = $1", name)

    async def drop_tables(self, tables: Sequence[str]) -> None:
        # Qualified: resolved through the search path, a table not (yet) in our schema
        # would be a user's table of that name in ``public``.
        for table in tables:
            await self.connection.execute(
                f"DROP TABLE IF EXISTS {self._schema}.{quote_identifier(table)}"
            )


class PostgresReadModelStore(ReadModelStore):
    """Read models and checkpoints in a PostgreSQL schema.

    Unqualified table names in handlers resolve in that schema first (the store's
    connections set ``search_path`` to it, then ``public``).
    """

    dialect = "postgres"

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        quoted_schema: str,
        translate_errors: TranslateErrors,
        base: str | None = None,
    ) -> None:
        self._pool = pool
        self._q = quoted_schema
        self._translate_errors = translate_errors
        self._base = base
        self._idle_ms = 0
        self._owner_label: str | None = None
        self._begin = self._begin_sql()

    def _begin_sql(self) -> str:
        begin = "BEGIN; SET LOCAL synchronous_commit = off"
        if self._idle_ms:
            begin += f"; SET LOCAL idle_in_transaction_session_timeout = {self._idle_ms}"
        if self._owner_label:  # hex digits after a fixed prefix: safe as a literal
            # Put in front of the session's own name (kept, shown after it) for this
            # transaction: end_stuck_transactions finds the owner's transactions by it.
            begin += (
                "; SELECT set_config('application_name', "
                f"'{self._owner_label}' || current_setting('application_name'), true)"
            )
        # Handlers' unqualified tables land in the store's schema, whatever a pooled session
        # was left with. A side schema (a blue/green build, a verification) puts itself
        # first on the path: the operations tables resolve to the base behind it.
        behind = "" if self._base is None else f"{self._base}, "
        return begin + f"; SET LOCAL search_path = {self._q}, {behind}public"

    def guard_transactions(self, owner: str, idle_seconds: float) -> None:
        if not idle_seconds > 0:
            raise ConfigurationError(
                f"the idle transaction limit must be positive, not {idle_seconds!r}"
            )
        self._idle_ms = max(1, round(idle_seconds * 1000))
        self._owner_label = owner_label(owner)
        self._begin = self._begin_sql()

    async def end_stuck_transactions(self, owner: str, older_than: float) -> int:
        with self._translate_errors("ending stuck transactions"):
            async with self._pool().acquire() as connection:
                ended: int = await connection.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                    "FROM pg_stat_activity WHERE datname = current_database() "
                    "AND starts_with(application_name, $1) AND pid <> pg_backend_pid() "
                    "AND xact_start < clock_timestamp() - make_interval(secs => $2)",
                    owner_label(owner),
                    float(older_than),
                )
        return ended

    def in_schema(self, schema: str) -> PostgresReadModelStore:
        """The same database, with read models and checkpoints in ``schema`` (a side schema
        such as a blue/green build); the base schema stays on the path behind it."""
        side = PostgresReadModelStore(
            self._pool, quote_identifier(schema), self._translate_errors, base=self._q
        )
        side._idle_ms, side._owner_label = self._idle_ms, self._owner_label
        side._begin = side._begin_sql()
        return side

    @property
    def quoted_schema(self) -> str:
        return self._q

    def side_schemas(self) -> SideSchemas:
        return PostgresSideSchemas(self)

    @contextlib.asynccontextmanager
    async def scratch(self, label: str) -> AsyncIterator[ReadModelStore]:
        digest = hashlib.md5(label.encode(), usedforsecurity=False).hexdigest()[:16]
        side = self.in_schema(f"pj_scratch_{digest}")  # short, whatever the label
        drop = f"DROP SCHEMA IF EXISTS {side.quoted_schema} CASCADE"
        with self._translate_errors("preparing a scratch schema"):
            async with self._pool().acquire() as connection:
                await connection.execute(drop)
        await side.apply_schema()
        try:
            yield side
        finally:
            with self._translate_errors("dropping a scratch schema"):
                async with self._pool().acquire() as connection:
                    await connection.execute(drop)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[ReadModelTransaction]:
        # Driver errors of the engine's own statements (checkpoints, a lost connection)
        # become projectionist errors; a handler's failure arrives as a HandlerError already.
        with self._translate_errors("projecting"):
            async with self._pool().acquire() as connection:
                # Commit without waiting for the WAL flush: a server crash can lose the last
                # read-model commits, but rows and checkpoint together, so the projection
                # re-applies those batches; it never double-applies or skips. Appends (and
                # inline projections, in the append's transaction) stay fully durable.
                await connection.execute(self._begin)
                try:
                    tx = PostgresReadModelTransaction(connection, self._q)
                    yield tx
                    await tx.flush()  # writes queued after the last statement
                except BaseException:
                    try:
                        await connection.execute("ROLLBACK")
                    except Exception:  # noqa: BLE001 - keep the original error
                        # It cannot roll back (dead, or busy with a cancelled command):
                        # close it rather than return it to the pool in that state.
                        with contextlib.suppress(Exception):
                            connection.terminate()
                    raise
                await connection.execute("COMMIT")

    async def apply_schema(self) -> None:
        """Apply the ``read_models`` migrations (a side schema: see ``_apply_side_schema``)."""
        if self._base is not None:
            await self._apply_side_schema(self._base)
            return
        with self._translate_errors("applying the read-model schema"):
            async with self._pool().acquire() as connection:
                await apply_migrations(MigrationSession(connection, self._q), (READ_MODELS,))

    async def _apply_side_schema(self, base: str) -> None:
        """A side schema holds only checkpoints, in a table shaped like the base schema's
        (which the read_models track keeps): it is dropped or swapped in, never migrated.
        It has no operations tables, so that the side's search_path finds the base's."""
        with self._translate_errors("preparing a side schema"):
            async with self._pool().acquire() as connection, connection.transaction():
                # Builders of one side schema queue here rather than collide on CREATE.
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('projectionist.side.' || $1))",
                    self._q,
                )
                await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {self._q}")
                await connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._q}.projection_checkpoints "
                    f"(LIKE {base}.projection_checkpoints INCLUDING ALL)"
                )

    async def checkpoints(self) -> dict[str, Checkpoint]:
        with self._translate_errors("reading checkpoints"):
            async with self._pool().acquire() as connection:
                rows = await connection.fetch(
                    f"{_CHECKPOINT_SELECT} {self._q}.projection_checkpoints"
                )
        return {row["name"]: _checkpoint_from_row(row) for row in rows}


def owner_label(owner: str) -> str:
    """The ``application_name`` of an owner's transactions: short (names are cut at 63
    bytes) and made of hex digits, whatever the worker id holds."""
    return (
        "projectionist-worker-"
        + hashlib.md5(owner.encode(), usedforsecurity=False).hexdigest()[:16]
    )


def _checkpoint_from_row(row: asyncpg.Record) -> Checkpoint:
    return Checkpoint(
        name=row["name"],
        version=row["version"],
        position=Position(row["tx_id"], row["position"]),
        events_processed=row["events_processed"],
        updated_at=row["updated_at"],
    )
