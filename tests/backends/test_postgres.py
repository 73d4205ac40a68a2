"""PostgreSQL specifics: schemas, migrations, concurrent schema application, visibility."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from projectionist import Application, NewEvent, TransactionConflictError, create_store
from projectionist.backends.postgres import PostgresEventStore
from projectionist.migrations import latest_version, load_migrations
from tests.conftest import PG_DSN, connect_other_database, new_schema_name, settle
from tests.engine.projections import ledger, ledger_rows, money


async def test_schemas_are_isolated(pg_schema: str) -> None:
    other = new_schema_name()
    try:
        async with (
            create_store(PG_DSN, schema=pg_schema) as first,
            create_store(f"{PG_DSN}?schema={other}") as second,
        ):
            await first.apply_schema()
            await second.apply_schema()
            await first.append("s", [NewEvent("A", {})])
            assert len(await first.read_stream("s")) == 1
            assert await second.read_stream("s") == []
    finally:
        connection = await asyncpg.connect(PG_DSN)
        await connection.execute(f'DROP SCHEMA IF EXISTS "{other}" CASCADE')
        await connection.close()


async def test_concurrent_schema_apply_is_safe(pg_schema: str) -> None:
    stores = [create_store(PG_DSN, schema=pg_schema) for _ in range(4)]
    for store in stores:
        await store.open()
    try:
        versions = await asyncio.gather(*(store.apply_schema() for store in stores))
        assert versions == [latest_version("postgres")] * 4
        connection = await asyncpg.connect(PG_DSN)
        rows = await connection.fetch(
            f'SELECT track, version FROM "{pg_schema}".projectionist_migrations'
        )
        await connection.close()
        assert sorted((r["track"], r["version"]) for r in rows) == [
            (track, m.version)
            for track in ("events", "read_models")
            for m in load_migrations("postgres", track)
        ]
    finally:
        for store in stores:
            await store.close()


async def test_events_of_an_open_transaction_hold_back_later_ones(pg_schema: str) -> None:
    """The heart of the gap-free order: a later commit is not exposed before an earlier one."""
    store = create_store(PG_DSN, schema=pg_schema)
    assert isinstance(store, PostgresEventStore)
    async with store:
        await store.apply_schema()
        slow = await asyncpg.connect(PG_DSN)
        try:
            transaction = slow.transaction()
            await transaction.start()
            early = await store.append_on(slow, "slow", [NewEvent("Early", {})])
            late = await store.append("fast", [NewEvent("Late", {})])
            assert late.position.seq > early.position.seq
            batch = await store.read_all()
            assert batch.events == [], "a later event must wait for the open earlier transaction"
            assert await store.head() < late.position
            await transaction.commit()
        finally:
            await slow.close()
        # Visible once no older transaction (e.g. the store's own NOTIFY) is still committing.
        assert await store.wait_for_events(early.position, timeout=5)
        batch = await store.read_all()
        assert [e.type for e in batch.events] == ["Early", "Late"]
        assert batch.checkpoint == late.position == await store.head()


async def test_rolled_back_transaction_leaves_no_event(pg_schema: str) -> None:
    store = create_store(PG_DSN, schema=pg_schema)
    assert isinstance(store, PostgresEventStore)
    async with store:
        await store.apply_schema()
        try:
            async with store.transaction() as tx:
                await tx.append("s", [NewEvent("A", {})])
                raise RuntimeError("business rule failed")
        except RuntimeError:
            pass
        assert await store.read_stream("s") == []
        async with store.transaction() as tx:
            await tx.append("s", [NewEvent("B", {})])
            await tx.connection.execute("SELECT 1")
        assert [e.type for e in await store.read_stream("s")] == ["B"]


async def test_filtered_read_is_index_driven(pg_schema: str) -> None:
    store = create_store(PG_DSN, schema=pg_schema)
    assert isinstance(store, PostgresEventStore)
    async with store:
        await store.apply_schema()
        for i in range(20):
            await store.append(f"s{i}", [NewEvent(f"T{n % 5}", {"n": n}) for n in range(500)])
        async with store.pool.acquire() as connection:
            await connection.execute(f'ANALYZE "{pg_schema}".events')
            rows = await connection.fetch(
                f"EXPLAIN {store._sql.read_all_types}", 0, 0, 10, 2**62, 2**62, ["T1"]
            )
        plan = "\n".join(row[0] for row in rows)
        assert "events_global_order" in plan, plan
        assert "Seq Scan" not in plan, plan
        # The wake-up check runs on every notification: it must stay an index lookup.
        async with store.pool.acquire() as connection:
            for sql, args in (
                (store._sql.head, [2**62]),
                (store._sql.head_held_back, [2**62]),
                (store._sql.last_committed, []),
                (store._sql.held_back_since, [2**62]),
                (store._sql.backlog, [0, 0, 10_000, 1, 0]),  # status: never a full count
            ):
                plan = "\n".join(r[0] for r in await connection.fetch(f"EXPLAIN {sql}", *args))
                assert "Seq Scan" not in plan, plan


async def test_global_order_keeps_each_stream_in_version_order(pg_schema: str) -> None:
    """An older transaction may not append a stream's next version after a younger one."""
    store = create_store(PG_DSN, schema=pg_schema)
    assert isinstance(store, PostgresEventStore)
    async with store:
        await store.apply_schema()
        older = await asyncpg.connect(PG_DSN)
        try:
            transaction = older.transaction()
            await transaction.start()
            await store.append_on(older, "other", [NewEvent("X", {})])  # takes its id first
            await store.append("s", [NewEvent("V", {"v": 1})])  # younger, commits version 1
            with pytest.raises(TransactionConflictError, match="retry the whole transaction"):
                await store.append_on(older, "s", [NewEvent("V", {"v": 2})])
            await transaction.rollback()
        finally:
            await older.close()
        await store.append("s", [NewEvent("V", {"v": 2})])  # the retry succeeds
        await settle(store)
        batch = await store.read_all()
        assert [(e.stream_id, e.version) for e in batch.events] == [("s", 1), ("s", 2)]


async def test_a_writer_that_appends_nothing_holds_no_reader_back(pg_schema: str) -> None:
    """Readers wait only for this store's appenders: an open write transaction in the same
    database or in another one (transaction ids are cluster-wide) delays nobody."""
    store = create_store(PG_DSN, schema=pg_schema)
    async with store:
        await store.apply_schema()
        blockers = [await asyncpg.connect(PG_DSN), await connect_other_database()]
        try:
            for blocker in blockers:
                await blocker.execute("BEGIN")
                await blocker.fetchval("SELECT pg_current_xact_id()")  # an open writer
            result = await store.append("s", [NewEvent("A", {})])
            assert await store.head() == result.position  # visible at once
            assert [e.type for e in (await store.read_all()).events] == ["A"]
            assert await store.held_back() is None
        finally:
            for blocker in blockers:
                await blocker.close()


async def test_a_transaction_that_wrote_before_appending_is_not_skipped(pg_schema: str) -> None:
    """A transaction whose id is older than events a reader has passed announces itself
    late; its events must still come after that reader's checkpoint (a fresh order key)."""
    store = create_store(PG_DSN, schema=pg_schema)
    assert isinstance(store, PostgresEventStore)
    async with store:
        await store.apply_schema()
        older = await asyncpg.connect(PG_DSN)
        try:
            await older.execute("BEGIN")
            old_id = int(await older.fetchval("SELECT pg_current_xact_id()::text"))
            passed = await store.append("young", [NewEvent("Young", {})])
            assert passed.position.tx > old_id
            first = await store.read_all()
            assert [e.type for e in first.events] == ["Young"]
            late = await store.append_on(older, "late", [NewEvent("Late", {})])
            again = await store.append_on(older, "late", [NewEvent("Later", {})])
            assert late.position > first.checkpoint, "a key below a passed checkpoint"
            assert again.position.tx == late.position.tx  # one key per transaction
            assert (await store.read_all(first.checkpoint)).events == []  # still open
            await older.execute("COMMIT")
        finally:
            await older.close()
        await settle(store)
        rest = await store.read_all(first.checkpoint)
        assert [e.type for e in rest.events] == ["Late", "Later"]


async def test_a_rolled_back_savepoint_announces_again(pg_schema: str) -> None:
    """The announcement (lock and remembered key) vanishes with a rolled-back savepoint;
    the next append of the transaction announces again, so readers still wait for it."""
    store = create_store(PG_DSN, schema=pg_schema)
    assert isinstance(store, PostgresEventStore)
    async with store:
        await store.apply_schema()
        connection = await asyncpg.connect(PG_DSN)
        try:
            await connection.execute("BEGIN")
            await connection.execute("SAVEPOINT s")
            await store.append_on(connection, "a", [NewEvent("Dropped", {})])
            await connection.execute("ROLLBACK TO SAVEPOINT s")
            passed = await store.append("b", [NewEvent("Other", {})])
            assert await store.head() == passed.position
            kept = await store.append_on(connection, "a", [NewEvent("Kept", {})])
            assert kept.position > passed.position
            assert await store.head() == passed.position  # held back by the open append
            held = await store.held_back()
            assert held is None  # nothing committed waits behind it yet
            await store.append("c", [NewEvent("Behind", {})])
            held = await store.held_back()
            assert held is not None and held.by is not None and "idle in transaction" in held.by
            await connection.execute("COMMIT")
        finally:
            await connection.close()
        await settle(store)
        batch = await store.read_all()
        assert [e.type for e in batch.events] == ["Other", "Kept", "Behind"]


async def test_rolled_back_transaction_wakes_readers_of_what_it_held_back(pg_schema: str) -> None:
    reader = create_store(PG_DSN, schema=pg_schema, poll_interval=60)
    writer = create_store(PG_DSN, schema=pg_schema)
    async with reader, writer:
        await reader.apply_schema()
        assert isinstance(writer, PostgresEventStore)
        head = await reader.head()
        waiting = asyncio.create_task(reader.wait_for_events(head, timeout=30))
        with contextlib.suppress(RuntimeError):
            async with writer.transaction() as tx:
                await tx.append("a", [NewEvent("X", {})])
                await writer.append("b", [NewEvent("Y", {})])
                raise RuntimeError("roll back")
        ended = time.monotonic()
        assert await asyncio.wait_for(waiting, 30) is True
        assert time.monotonic() - ended < 2
        await settle(reader)
        assert [e.stream_id for e in (await reader.read_all()).events] == ["b"]


async def test_appending_many_events_is_one_round_trip(pg_schema: str) -> None:
    store = create_store(PG_DSN, schema=pg_schema)
    assert isinstance(store, PostgresEventStore)
    statements: list[str] = []

    def log(query: asyncpg.connection.LoggedQuery) -> None:
        """asyncpg's query logger: called once for every statement sent to the server."""
        statements.append(query.query)

    async with store:
        await store.apply_schema()
        async with store.pool.acquire() as connection:
            # A first append lets asyncpg learn the statement's types (queries of its own).
            await store.append_on(connection, "warm", [NewEvent("A", {})])
            connection.add_query_logger(log)
            try:
                result = await store.append_on(
                    connection, "many", [NewEvent("A", {"n": n}) for n in range(200)]
                )
            finally:
                connection.remove_query_logger(log)
        assert result.version == 200
        assert len(statements) == 1, statements


# -- the store's schema, whatever the connection's search_path -------------------------------


@contextlib.asynccontextmanager
async def users_public_tables(name: str) -> AsyncIterator[asyncpg.Connection]:
    """A user's own tables in ``public`` named like the ledger ``name``'s, with a row each;
    yields a connection whose search_path is ``public`` (a user's own, not the store's)."""
    connection = await asyncpg.connect(PG_DSN, server_settings={"search_path": "public"})
    try:
        for table in (f"{name}_seen", f"{name}_totals"):
            await connection.execute(f"CREATE TABLE public.{table} (users TEXT)")
            await connection.execute(f"INSERT INTO public.{table} VALUES ('mine')")
        yield connection
    finally:
        for table in (f"{name}_seen", f"{name}_totals"):
            await connection.execute(f"DROP TABLE IF EXISTS public.{table}")
        await connection.close()


async def users_rows(connection: asyncpg.Connection, name: str) -> list[list[str]]:
    return [
        [row[0] for row in await connection.fetch(f"SELECT * FROM public.{table}")]
        for table in (f"{name}_seen", f"{name}_totals")
    ]


def unique_ledger_name() -> str:
    return f"own_{uuid.uuid4().hex[:10]}"


async def test_setting_up_an_inline_projection_leaves_a_same_named_public_table(
    pg_schema: str,
) -> None:
    """The rebuild of a new inline projection drops its tables in the store's schema only:
    a DROP resolved through the search path would drop the user's table in ``public``."""
    name = unique_ledger_name()
    async with users_public_tables(name) as connection:
        url = f"{PG_DSN}?schema={pg_schema}"
        async with Application(url, [ledger(name, kind="inline")]) as app:
            await app.setup()
            await app.store.append("account-1", money(1, 2))
            await app.rebuild(name)
        assert await users_rows(connection, name) == [["mine"], ["mine"]]
        seen = await connection.fetchval(f'SELECT count(*) FROM "{pg_schema}".{name}_seen')
        assert seen == 2


async def test_append_on_a_connection_of_another_search_path_writes_the_stores_schema(
    pg_schema: str,
) -> None:
    """Inline handlers write unqualified tables: they land in the store's schema, and the
    caller's own statements after the append, in its own transaction, see its path again."""
    name = unique_ledger_name()
    async with users_public_tables(name) as connection:
        url = f"{PG_DSN}?schema={pg_schema}"
        async with Application(url, [ledger(name, kind="inline")]) as app:
            await app.setup()
            await app.store.append_on(connection, "account-1", money(1, 1))  # autocommit
            async with connection.transaction():
                await connection.execute("SET LOCAL search_path = public, pg_catalog")
                await app.store.append_on(connection, "account-2", money(2, 2))
                path = await connection.fetchval("SELECT current_setting('search_path')")
                assert path == "public, pg_catalog"
                await connection.execute(f"INSERT INTO {name}_seen VALUES ('later')")
            assert await connection.fetchval("SELECT current_setting('search_path')") == "public"
            async with app.store.transaction() as tx:
                await tx.execute("SET LOCAL search_path = public")
                await tx.append("account-3", money(3, 1))
                assert await tx.fetchval("SELECT current_setting('search_path')") == "public"
            async with app.read_models.transaction() as rows:
                seen, totals = await ledger_rows(rows, name)
        assert len(seen) == 4 and len(totals) == 2  # type: ignore[arg-type]
        assert await users_rows(connection, name) == [["mine", "later"], ["mine"]]


async def test_a_side_schemas_tables_are_dropped_in_it_only(pg_schema: str) -> None:
    """A side store's teardown drops its own tables, never the base schema's of that name."""
    store = create_store(PG_DSN, schema=pg_schema)
    side_schema = new_schema_name()
    async with store:
        await store.apply_schema()
        base = store.read_models()
        async with base.transaction() as tx:
            await tx.execute("CREATE TABLE kept (n BIGINT)")
        side = base.in_schema(side_schema)  # type: ignore[attr-defined]
        try:
            await side.apply_schema()
            async with side.transaction() as tx:
                await tx.drop_tables(["kept"])
            async with base.transaction() as tx:
                assert await tx.fetchval("SELECT count(*) FROM kept") == 0
        finally:
            async with base.transaction() as tx:
                await tx.execute(f'DROP SCHEMA IF EXISTS "{side_schema}" CASCADE')
