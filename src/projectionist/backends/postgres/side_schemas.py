"""Side schemas on PostgreSQL: blue/green builds beside the live read models, swapped in by
``ALTER TABLE ... SET SCHEMA`` in one transaction, the old tables retired for a while.

Readers see the old read model or the new one, never an empty or half-built one: ``SET
SCHEMA`` waits for running reads, and later reads find the new table by name. A retired
schema's comment says until when it is kept and which base schema it belongs to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...identifiers import quote_identifier
from ...readmodel import ReadModelStore, ReadModelTransaction, SideSchemas

if TYPE_CHECKING:
    from .read_models import PostgresReadModelStore


class PostgresSideSchemas(SideSchemas):
    """The side schemas of one PostgreSQL read-model store's database."""

    def __init__(self, store: PostgresReadModelStore) -> None:
        self._store = store

    @property
    def base(self) -> str:
        return self._store.quoted_schema

    def side(self, schema: str) -> ReadModelStore:
        return self._store.in_schema(schema)

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
        retired, built = quote_identifier(retire_to), quote_identifier(side)
        # The base store's transactions put its schema first on the path; every table moved
        # is named with its schema all the same, never found through the path.
        base = str(await tx.fetchval("SELECT current_schema()"))
        live = quote_identifier(base)
        await tx.execute(f"CREATE SCHEMA IF NOT EXISTS {retired}")
        for table in tables:
            name = quote_identifier(table)
            if await _table_in(tx, base, table):
                await tx.execute(f"ALTER TABLE {live}.{name} SET SCHEMA {retired}")
            await tx.execute(f"ALTER TABLE {built}.{name} SET SCHEMA {live}")
        await tx.execute(
            f"INSERT INTO {live}.projection_checkpoints "
            f"SELECT * FROM {built}.projection_checkpoints"
        )
        await tx.execute(f"DROP SCHEMA {built} CASCADE")
        note = f"drop after {retire_until:.0f} base {base} {label}".replace("'", "''")
        await tx.execute(f"COMMENT ON SCHEMA {retired} IS '{note}'")

    async def drop_retired(self, prefix: str, now: float) -> list[str]:
        dropped = []
        async with self._store.transaction() as tx:
            base = await tx.fetchval("SELECT current_schema()")
            # Every worker looks for retired schemas: one at a time per base schema, so a
            # second one lists after the first dropped (its statements see that commit).
            await tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('projectionist.retired.' || $1::text))",
                base,
            )
            rows = await tx.fetch(
                "SELECT nspname, obj_description(oid, 'pg_namespace') FROM pg_namespace "
                "WHERE starts_with(nspname, $1)",
                prefix,
            )
            for schema, comment in rows:
                words = (comment or "").split()
                ours = words[:2] == ["drop", "after"] and words[3:5] == ["base", str(base)]
                if ours and float(words[2]) <= now:  # only this base schema's
                    await tx.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(schema)} CASCADE")
                    dropped.append(schema)
        return dropped


async def _table_in(tx: ReadModelTransaction, schema: str, table: str) -> bool:
    found = await tx.fetchval(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 "
        "AND table_name = $2",
        schema,
        table,
    )
    return bool(found)
