"""The read-model contract, run against every read-model store: memory, SQLite, PostgreSQL and
Redis, as the event store's contract suite runs against every event store.

What the engine relies on: a checkpoint moves by compare-and-set in the transaction of the
rows; an exception or a conflict keeps neither; ``lock_projection`` makes a second locker
wait; ``drop_tables`` forgets a read model; ``scratch`` is an empty store of the same kind.
Rows are written the way each kind's handlers write them (SQL, or a Redis pipeline).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from projectionist import ProjectionistError, create_store
from projectionist.errors import (
    BackendError,
    MalformedStatementError,
    MissingTableError,
    TransactionConflictError,
    TransientBackendError,
)
from projectionist.events import Position
from projectionist.readmodel import (
    CheckpointConflictError,
    ReadModelStore,
    ReadModelTransaction,
    SideSchemas,
)
from projectionist.targets.redis import RedisReadModelStore, as_redis
from projectionist.transient import is_transient
from tests.conftest import PG_DSN, new_schema_name, require_postgres, store_url
from tests.targets.conftest import REDIS_URL, delete_prefix, require_redis

KINDS = ["memory", "sqlite", "postgres", "redis"]
TABLE = "contract_rows"
P1, P2, P3 = Position(1, 1), Position(2, 2), Position(3, 3)


@dataclass
class Rows:
    """How a handler of this kind writes a row, and how a test reads them back."""

    write: Callable[[ReadModelTransaction, str, int], Awaitable[None]]
    read: Callable[[ReadModelStore], Awaitable[dict[str, int]]]


_CREATE = f"CREATE TABLE IF NOT EXISTS {TABLE} (k TEXT PRIMARY KEY, v BIGINT)"


async def _sql_write(tx: ReadModelTransaction, key: str, value: int) -> None:
    await tx.execute(_CREATE)
    await tx.execute(f"INSERT INTO {TABLE} VALUES ($1, $2)", key, value)


async def _sql_read(store: ReadModelStore) -> dict[str, int]:
    async with store.transaction() as tx:
        await tx.execute(_CREATE)  # a dropped table reads as empty
        rows = await tx.fetch(f"SELECT k, v FROM {TABLE}")
    return {str(k): int(v) for k, v in rows}


async def _redis_write(tx: ReadModelTransaction, key: str, value: int) -> None:
    redis_tx = as_redis(tx)
    redis_tx.pipeline.hset(redis_tx.key(TABLE), key, value)


async def _redis_read(store: ReadModelStore) -> dict[str, int]:
    assert isinstance(store, RedisReadModelStore)
    found = await store.client.hgetall(store.key(TABLE))
    return {_text(k): int(v) for k, v in found.items()}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _write_and_move(
    read_models: ReadModelStore,
    rows: Rows,
    key: str,
    expected: Position | None,
    new: Position,
    *,
    then_fail: bool = False,
) -> None:
    """One batch: read the checkpoint, write a row, move the checkpoint (then maybe fail)."""
    async with read_models.transaction() as tx:
        await tx.load_checkpoint("p")
        await rows.write(tx, key, 1)
        await tx.save_checkpoint("p", 1, expected, new, 1)
        if then_fail:
            raise ZeroDivisionError


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def read_models(kind: str, tmp_path: Path) -> AsyncIterator[ReadModelStore]:
    """An open read-model store of the kind, its schema applied, removed afterwards."""
    if kind == "redis":
        async for store in _redis_store():
            yield store
        return
    schema = None
    if kind == "postgres":
        await require_postgres()
        schema = new_schema_name()
    async with create_store(store_url(kind, tmp_path, schema)) as host:
        await host.apply_schema()
        yield host.read_models()
        if schema is not None:
            async with host.read_models().transaction() as tx:
                await tx.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def _redis_store() -> AsyncIterator[ReadModelStore]:
    await require_redis()
    prefix = f"test-{new_schema_name()}"
    async with RedisReadModelStore(REDIS_URL, prefix=prefix) as store:
        await store.apply_schema()
        yield store
    await delete_prefix(prefix)


@pytest.fixture
def rows(kind: str) -> Rows:
    if kind == "redis":
        return Rows(_redis_write, _redis_read)
    return Rows(_sql_write, _sql_read)


async def test_a_checkpoint_is_created_then_moved_by_compare_and_set(
    read_models: ReadModelStore, rows: Rows
) -> None:
    async with read_models.transaction() as tx:
        assert await tx.load_checkpoint("p") is None
        await rows.write(tx, "a", 1)
        await tx.save_checkpoint("p", 1, None, P1, 1)
    async with read_models.transaction() as tx:
        assert (await tx.load_checkpoint("p")).position == P1  # type: ignore[union-attr]
        await rows.write(tx, "b", 2)
        await tx.save_checkpoint("p", 1, P1, P2, 1)
    checkpoint = await read_models.checkpoint("p")
    assert checkpoint is not None
    assert (checkpoint.name, checkpoint.version, checkpoint.position) == ("p", 1, P2)
    assert checkpoint.events_processed == 2
    assert await rows.read(read_models) == {"a": 1, "b": 2}


async def test_a_stale_expected_position_conflicts_and_keeps_nothing(
    read_models: ReadModelStore, rows: Rows
) -> None:
    async with read_models.transaction() as tx:
        await tx.save_checkpoint("p", 1, None, P1, 1)
    with pytest.raises(CheckpointConflictError):
        await _write_and_move(read_models, rows, "lost", P2, P3)
    with pytest.raises(CheckpointConflictError):  # "create" over an existing one
        await _write_and_move(read_models, rows, "lost", None, P3)
    assert (await read_models.checkpoint("p")).position == P1  # type: ignore[union-attr]
    assert "lost" not in await rows.read(read_models)


async def test_of_two_transactions_moving_one_checkpoint_exactly_one_wins(
    read_models: ReadModelStore, rows: Rows
) -> None:
    """Where transactions run at once (PostgreSQL, Redis) the second to commit conflicts;
    where they are serialized (SQLite, memory) the second sees the moved checkpoint and
    conflicts. Either way one wins, and the loser keeps nothing."""
    async with read_models.transaction() as tx:
        await tx.save_checkpoint("p", 1, None, P1, 1)

    async def move(key: str, new: Position) -> bool:
        try:
            await _write_and_move(read_models, rows, key, P1, new)
        except CheckpointConflictError:
            return False
        return True

    other: asyncio.Task[bool] | None = None
    try:
        async with read_models.transaction() as slow:
            await slow.load_checkpoint("p")
            other = asyncio.ensure_future(move("other", P2))
            await asyncio.wait([other], timeout=0.3)  # let it commit first where it can
            await rows.write(slow, "slow", 1)
            await slow.save_checkpoint("p", 1, P1, P3, 1)
        slow_won = True
    except CheckpointConflictError:
        slow_won = False
    assert other is not None
    other_won = await asyncio.wait_for(other, timeout=30)
    assert [slow_won, other_won].count(True) == 1
    winner, position = ("slow", P3) if slow_won else ("other", P2)
    assert (await read_models.checkpoint("p")).position == position  # type: ignore[union-attr]
    assert await rows.read(read_models) == {winner: 1}


async def test_an_exception_in_the_block_keeps_neither_rows_nor_checkpoint(
    read_models: ReadModelStore, rows: Rows
) -> None:
    with pytest.raises(ZeroDivisionError):
        await _write_and_move(read_models, rows, "a", None, P1, then_fail=True)
    assert await read_models.checkpoint("p") is None
    assert await rows.read(read_models) == {}


async def test_checkpoints_are_listed_with_versions_and_deleted(
    read_models: ReadModelStore,
) -> None:
    async with read_models.transaction() as tx:  # checkpoints are read before any write
        assert await tx.load_checkpoint("p") is None
        assert await tx.load_checkpoint("q#0/2") is None
        await tx.save_checkpoint("p", 1, None, P1, 1)
        await tx.save_checkpoint("q#0/2", 3, None, P2, 2)
    assert sorted(await read_models.checkpoints()) == ["p", "q#0/2"]
    async with read_models.transaction() as tx:
        assert await tx.checkpoint_versions() == {"p": 1, "q#0/2": 3}
        await tx.load_checkpoint("p")
        await tx.delete_checkpoint("p")
    assert list(await read_models.checkpoints()) == ["q#0/2"]
    assert await read_models.checkpoint("p") is None


async def test_a_locked_projection_makes_a_second_locker_wait_for_the_commit(
    read_models: ReadModelStore,
) -> None:
    holder_committed = asyncio.Event()
    seen_by_waiter: list[Position | None] = []

    async def wait_for_the_lock() -> None:
        async with read_models.transaction() as tx:
            await tx.lock_projection("p")
            assert holder_committed.is_set(), "the lock was granted while still held"
            checkpoint = await tx.load_checkpoint("p", lock=True)
            seen_by_waiter.append(None if checkpoint is None else checkpoint.position)

    waiter: asyncio.Task[None] | None = None
    async with read_models.transaction() as tx:
        await tx.lock_projection("p")
        await tx.save_checkpoint("p", 1, None, P1, 1)
        waiter = asyncio.ensure_future(wait_for_the_lock())
        await asyncio.sleep(0.3)  # time for the waiter to try; it must not get the lock
        assert not waiter.done()
        holder_committed.set()
    await asyncio.wait_for(waiter, timeout=30)
    assert seen_by_waiter == [P1]


async def test_drop_tables_forgets_a_read_model_and_ignores_missing_ones(
    read_models: ReadModelStore, rows: Rows
) -> None:
    async with read_models.transaction() as tx:
        await rows.write(tx, "a", 1)
    async with read_models.transaction() as tx:
        await tx.drop_tables([TABLE, "never_created"])
    assert await rows.read(read_models) == {}
    async with read_models.transaction() as tx:  # and it can be built again
        await rows.write(tx, "b", 2)
    assert await rows.read(read_models) == {"b": 2}


async def test_scratch_is_an_empty_store_of_the_same_kind_removed_on_exit(
    read_models: ReadModelStore, rows: Rows, kind: str
) -> None:
    async with read_models.transaction() as tx:
        await tx.load_checkpoint("p")
        await rows.write(tx, "outside", 1)
        await tx.save_checkpoint("p", 1, None, P1, 1)
    if kind == "redis":  # Redis has no scratch space: a clear error, nothing touched
        with pytest.raises(ProjectionistError, match="scratch"):
            async with read_models.scratch("verify"):
                pass
        assert await rows.read(read_models) == {"outside": 1}
        return
    async with read_models.scratch("verify") as scratch:
        assert type(scratch) is type(read_models)
        assert await scratch.checkpoints() == {}
        assert await rows.read(scratch) == {}
        async with scratch.transaction() as tx:
            await tx.load_checkpoint("p")
            await rows.write(tx, "inside", 2)
            await tx.save_checkpoint("p", 1, None, P2, 1)
        assert await rows.read(scratch) == {"inside": 2}
    assert await rows.read(read_models) == {"outside": 1}
    assert (await read_models.checkpoint("p")).position == P1  # type: ignore[union-attr]


async def test_side_schemas_are_a_capability_of_postgresql_only(
    read_models: ReadModelStore, kind: str
) -> None:
    assert (read_models.side_schemas() is not None) == (kind == "postgres")


async def _schema_exists(read_models: ReadModelStore, schema: str) -> bool:
    async with read_models.transaction() as tx:
        found = await tx.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema)
    return bool(found)


async def _drop_retired_by_two_at_once(sides: SideSchemas, retired: str) -> list[str]:
    """Two workers' ``drop_retired`` at the same moment: a reader holds the retired table,
    so both have come as far as they can before either may drop it."""
    holder = await asyncpg.connect(PG_DSN)
    try:
        holder_tx = holder.transaction()
        await holder_tx.start()
        await holder.execute(f'LOCK TABLE "{retired}".{TABLE} IN ACCESS SHARE MODE')
        both = asyncio.gather(*(sides.drop_retired(retired, now=100.0) for _ in range(2)))
        for _ in range(1500):  # until both wait (on the table, or on each other)
            waiting = await holder.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted")
            if waiting >= 2:
                break
            await asyncio.sleep(0.02)
        await holder_tx.rollback()
        found = await asyncio.wait_for(both, timeout=60)
    finally:
        await holder.close()
    return sorted(schema for dropped in found for schema in dropped)


@pytest.mark.parametrize("kind", ["postgres"])
async def test_a_side_stores_tables_and_checkpoints_are_swapped_in_in_one_transaction(
    read_models: ReadModelStore, rows: Rows
) -> None:
    sides = read_models.side_schemas()
    assert sides is not None
    side_name, retired = f"{new_schema_name()}_side", f"{new_schema_name()}_retired"
    await _write_and_move(read_models, rows, "old", None, P1)
    side = sides.side(side_name)
    await side.apply_schema()
    await _write_and_move(side, rows, "new", None, P2)
    assert await rows.read(read_models) == {"old": 1}  # the build stays beside the live one
    try:
        async with read_models.transaction() as tx:
            await tx.delete_checkpoint("p")
            await sides.swap_in(
                tx, side_name, [TABLE], retire_to=retired, retire_until=100.0, label="test v1"
            )
        assert await rows.read(read_models) == {"new": 1}
        assert (await read_models.checkpoint("p")).position == P2  # type: ignore[union-attr]
        assert not await _schema_exists(read_models, side_name)
        assert await sides.drop_retired(retired, now=99.0) == []  # its grace period runs
        assert await _schema_exists(read_models, retired)
        # Every worker looks at once: the schema is dropped once, nobody fails.
        assert await _drop_retired_by_two_at_once(sides, retired) == [retired]
        assert not await _schema_exists(read_models, retired)
    finally:
        async with read_models.transaction() as tx:
            for schema in (side_name, retired):
                await tx.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- bulk writes and driver errors (SQL kinds) ---------------------------------------------------

SQL_KINDS = ["memory", "sqlite", "postgres"]
BULK = "contract_bulk"
_CREATE_BULK = f"CREATE TABLE {BULK} (k TEXT PRIMARY KEY, label TEXT, n BIGINT)"
ODD = 'it\'s "quoted"; -- not SQL \\ ünïcødé ✓ 🚀'
ABOVE_COPY_THRESHOLD = 250  # PostgreSQL COPYs from 100 rows on


async def _bulk_rows(store: ReadModelStore) -> dict[str, tuple[str, int]]:
    async with store.transaction() as tx:
        rows = await tx.fetch(f"SELECT k, label, n FROM {BULK}")
    return {str(k): (str(label), int(n)) for k, label, n in rows}


async def _bulk_write(store: ReadModelStore, rows: list[tuple[str, str, int]]) -> None:
    async with store.transaction() as tx:
        await tx.bulk_upsert(BULK, ["k"], ["label", "n"], rows, shape="v1")


@pytest.mark.parametrize("kind", SQL_KINDS)
async def test_bulk_upsert_inserts_then_replaces_rows_of_existing_keys(
    read_models: ReadModelStore,
) -> None:
    async with read_models.transaction() as tx:
        await tx.execute(_CREATE_BULK)
        await tx.bulk_upsert(BULK, ["k"], ["label", "n"], [])  # nothing to write: a no-op
    assert await _bulk_rows(read_models) == {}
    await _bulk_write(read_models, [("a", ODD, 1), ("b", "plain", 2), (ODD, "odd key", 3)])
    await _bulk_write(read_models, [("b", "again", 20), ("c", "new", 30), (ODD, ODD, 40)])
    await _bulk_write(read_models, [])
    assert await _bulk_rows(read_models) == {
        "a": (ODD, 1),
        "b": ("again", 20),
        "c": ("new", 30),
        ODD: (ODD, 40),
    }


@pytest.mark.parametrize("kind", SQL_KINDS)
async def test_bulk_upsert_of_many_rows_twice_in_one_transaction(
    read_models: ReadModelStore,
) -> None:
    many = [(f"k{i:04}", f"{ODD} {i}", i) for i in range(ABOVE_COPY_THRESHOLD)]
    async with read_models.transaction() as tx:
        await tx.execute(_CREATE_BULK)
    await _bulk_write(read_models, many)
    assert await _bulk_rows(read_models) == {k: (label, n) for k, label, n in many}
    # A replay writes batch after batch in one transaction: overlapping keys, then a delete
    # that a later batch must not undo.
    shifted = [(f"k{i:04}", "second", -i) for i in range(100, 100 + ABOVE_COPY_THRESHOLD)]
    third = [(f"k{i:04}", "third", i) for i in range(300, 300 + ABOVE_COPY_THRESHOLD)]
    async with read_models.transaction() as tx:
        await tx.bulk_upsert(BULK, ["k"], ["label", "n"], shifted, shape="v1")
        await tx.execute(f"DELETE FROM {BULK} WHERE k = $1", "k0200")
        await tx.bulk_upsert(BULK, ["k"], ["label", "n"], third, shape="v1")
    expected = {k: (label, n) for k, label, n in many + shifted + third}
    del expected["k0200"]
    assert await _bulk_rows(read_models) == expected


@pytest.mark.parametrize("kind", SQL_KINDS)
async def test_bulk_upsert_refuses_unsafe_identifiers(read_models: ReadModelStore) -> None:
    async with read_models.transaction() as tx:
        await tx.execute(_CREATE_BULK)
        for table, key, columns in [
            (f"{BULK}; DROP TABLE x", ["k"], ["n"]),
            (BULK, ['k" OR 1=1'], ["n"]),
            (BULK, ["k"], ["N"]),
        ]:
            with pytest.raises(ProjectionistError, match="invalid"):
                await tx.bulk_upsert(table, key, columns, [("a", 1)])


@pytest.mark.parametrize("kind", SQL_KINDS)
async def test_a_missing_table_is_our_error_from_the_transaction(
    read_models: ReadModelStore,
) -> None:
    with pytest.raises(MissingTableError) as caught:
        async with read_models.transaction() as tx:
            await tx.fetch("SELECT k FROM contract_never_created")
    assert isinstance(caught.value, BackendError)
    assert caught.value.table == "contract_never_created"
    assert caught.value.__cause__ is not None  # the driver's error, kept
    assert not isinstance(caught.value.__cause__, ProjectionistError)
    with pytest.raises(MissingTableError):
        async with read_models.transaction() as tx:
            await tx.execute("DELETE FROM contract_never_created")


@pytest.mark.parametrize("kind", SQL_KINDS)
async def test_a_failing_statement_is_our_error_with_the_drivers_as_cause(
    read_models: ReadModelStore,
) -> None:
    with pytest.raises(MalformedStatementError):
        async with read_models.transaction() as tx:
            await tx.fetch("SELEC 1")
    async with read_models.transaction() as tx:
        await tx.execute(_CREATE_BULK)
    with pytest.raises(BackendError) as caught:
        async with read_models.transaction() as tx:
            await tx.executemany(f"INSERT INTO {BULK} VALUES ($1, $2, $3)", [("a", "", 1)] * 2)
    assert not is_transient(caught.value)  # a duplicate key stays a duplicate key
    assert not isinstance(caught.value.__cause__, ProjectionistError)


@pytest.mark.parametrize("kind", ["postgres"])
@pytest.mark.parametrize(
    ("sqlstate", "error", "transient"),
    [
        ("40001", TransactionConflictError, True),  # serialization failure
        ("40P01", TransactionConflictError, True),  # deadlock
        ("53300", TransientBackendError, True),  # too many connections
        ("57014", BackendError, False),  # a cancelled statement is not retried as is
        ("22012", BackendError, False),  # division by zero
    ],
)
async def test_postgres_failures_are_told_apart_by_our_error_types(
    read_models: ReadModelStore, sqlstate: str, error: type[Exception], transient: bool
) -> None:
    with pytest.raises(error) as caught:
        async with read_models.transaction() as tx:
            await tx.execute(
                f"DO $$ BEGIN RAISE EXCEPTION 'failing' USING ERRCODE = '{sqlstate}'; END $$"
            )
    assert is_transient(caught.value) is transient


@pytest.mark.parametrize("kind", SQL_KINDS)
async def test_queued_writes_are_sent_in_order_before_the_next_statement_and_at_commit(
    read_models: ReadModelStore,
) -> None:
    insert, update = (
        f"INSERT INTO {TABLE} VALUES ($1, $2)",
        f"UPDATE {TABLE} SET v = $2 WHERE k = $1",
    )
    async with read_models.transaction() as tx:
        await tx.execute(_CREATE)
        for key, value in [("a", 1), ("b", 2), ("c", 3)]:
            tx.queue(insert, key, value)  # one run: sent as one executemany
        tx.queue(update, "a", 10)
        tx.queue(insert, "d", 4)
        # A read sees every queued write before it, in order: the handler's own writes.
        assert await tx.fetch(f"SELECT k, v FROM {TABLE} ORDER BY k") == [
            ("a", 10), ("b", 2), ("c", 3), ("d", 4),
        ]  # fmt: skip
        tx.queue(update, "d", 40)
        tx.queue(f"DELETE FROM {TABLE} WHERE k = $1", "b")  # queued last: sent at the commit
    assert await _sql_read(read_models) == {"a": 10, "c": 3, "d": 40}


@pytest.mark.parametrize("kind", SQL_KINDS)
async def test_a_failing_queued_write_is_our_error_when_sent_and_keeps_nothing(
    read_models: ReadModelStore,
) -> None:
    async with read_models.transaction() as tx:
        await tx.execute(_CREATE)

    async def insert_twice() -> None:
        async with read_models.transaction() as tx:
            tx.queue(f"INSERT INTO {TABLE} VALUES ($1, $2)", "a", 1)
            tx.queue(f"INSERT INTO {TABLE} VALUES ($1, $2)", "a", 2)  # a duplicate key

    with pytest.raises(BackendError) as caught:
        await insert_twice()
    assert not isinstance(caught.value.__cause__, ProjectionistError)
    assert await _sql_read(read_models) == {}
    async with read_models.transaction() as tx:
        with pytest.raises(ProjectionistError, match="SQL text"):
            tx.queue(b"DELETE FROM x")  # type: ignore[arg-type]
