"""Read models on Redis: values, the checkpoint in the same EXEC, conflicts, rebuilds, status,
lost connections. The event store is an SQLite file; Redis is the real server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from projectionist import (
    START,
    Application,
    BackendError,
    ConfigurationError,
    HandlerError,
    NewEvent,
    Position,
    Projection,
    ProjectionVersionError,
    ReadModelTransaction,
    RecordedEvent,
    StoreUnavailableError,
)
from projectionist.readmodel import CheckpointConflictError
from projectionist.targets.redis import RedisProjection, RedisReadModelStore, as_redis
from tests.targets.conftest import REDIS_URL
from tests.targets.redis_ledger import expected_of, history, make_ledger, read_ledger

SMALL = history(seed=11, streams=20, appends_per_stream=5, append_size=10)  # 1,000 events


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


async def append_all(app: Application, appends: list[tuple[str, list[NewEvent]]]) -> Position:
    position = START
    for stream_id, events in appends:
        position = (await app.store.append(stream_id, events)).position
    return position


async def test_values_and_checkpoint_after_catch_up(
    tmp_path: Path, redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    ledger = make_ledger(redis_store, batch_size=97)
    async with Application(sqlite_url(tmp_path), [ledger]) as app:
        await app.setup()
        head = await append_all(app, SMALL)
        await app.run_until_caught_up()
        expected = expected_of(SMALL)
        assert await read_ledger(redis_client, redis_store) == expected.snapshot()
        checkpoint = await redis_store.checkpoint("ledger")
        assert checkpoint is not None
        assert (checkpoint.position, checkpoint.events_processed) == (head, expected.handled)
        stored = await redis_client.hgetall(redis_store.checkpoint_key("ledger"))
        assert stored["seq"] == str(head.seq) and stored["version"] == "1"
        assert await redis_client.smembers(redis_store.index_key) == {"ledger"}
        assert await redis_store.checkpoints() == {"ledger": checkpoint}
        # Nothing is left locked or watched behind.
        assert not await redis_client.exists(redis_store.lock_key("ledger"))


async def test_writes_and_checkpoint_appear_together_at_exec(
    redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    async with redis_store.transaction() as tx:
        await tx.lock_projection("p")
        await tx.save_checkpoint("p", 1, None, START, 0)
    key = redis_store.key("p", "x")
    async with redis_store.transaction() as tx:
        assert await tx.load_checkpoint("p", lock=True) is not None
        as_redis(tx).pipeline.hset(key, "a", "1")
        await tx.save_checkpoint("p", 1, START, Position(0, 5), 5)
        # Queued, not applied: another client sees neither the row nor the new checkpoint.
        assert await redis_client.hgetall(key) == {}
        assert (await redis_client.hgetall(redis_store.checkpoint_key("p")))["seq"] == "0"
    assert await redis_client.hgetall(key) == {"a": "1"}
    checkpoint = await redis_store.checkpoint("p")
    assert checkpoint is not None and checkpoint.position == Position(0, 5)
    assert checkpoint.events_processed == 5


async def test_a_raising_handler_leaves_neither_writes_nor_checkpoint(
    tmp_path: Path, redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    ledger = make_ledger(redis_store, batch_size=50)
    poison = RedisProjection("poisoned", redis_store, batch_size=50)

    @poison.on("Deposited", "Withdrawn")
    async def count(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        redis_tx = as_redis(tx)
        redis_tx.pipeline.hincrby(redis_tx.key("poisoned"), "n", 1)
        if event.stream_id == "account-0003" and (event.version or 0) > 20:
            raise RuntimeError("bad event")

    async with Application(sqlite_url(tmp_path), [ledger, poison]) as app:
        await app.setup()
        await append_all(app, SMALL)
        await app.runner("ledger").run_until_caught_up()
        with pytest.raises(HandlerError, match="bad event") as raised:
            await app.runner("poisoned").run_until_caught_up()
        failed_at = raised.value.event
        assert isinstance(failed_at, RecordedEvent)
        checkpoint = await redis_store.checkpoint("poisoned")
        assert checkpoint is not None and checkpoint.position < failed_at.position
        # Exactly the events up to the checkpoint were counted: the failed batch left nothing.
        batch = await app.store.read_all(START, limit=10_000, types=["Deposited", "Withdrawn"])
        counted = sum(1 for event in batch.events if event.position <= checkpoint.position)
        stored = await redis_client.hget(redis_store.key("poisoned"), "n")
        assert int(stored or 0) == counted == checkpoint.events_processed
        # The other projection on the same store is untouched by the failure.
        assert await read_ledger(redis_client, redis_store) == expected_of(SMALL).snapshot()


async def test_a_transaction_that_raises_is_discarded(
    redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    async with redis_store.transaction() as tx:
        await tx.lock_projection("p")
        await tx.save_checkpoint("p", 1, None, START, 0)

    async def failing_batch() -> None:
        async with redis_store.transaction() as tx:
            await tx.load_checkpoint("p", lock=True)
            as_redis(tx).pipeline.set(redis_store.key("p", "x"), "1")
            await tx.save_checkpoint("p", 1, START, Position(0, 9), 9)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await failing_batch()
    assert not await redis_client.exists(redis_store.key("p", "x"))
    checkpoint = await redis_store.checkpoint("p")
    assert checkpoint is not None and checkpoint.position == START


async def test_concurrent_transactions_conflict_and_apply_once(
    redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    async with redis_store.transaction() as tx:
        await tx.lock_projection("p")
        await tx.save_checkpoint("p", 1, None, START, 0)
    key = redis_store.key("p")
    first_read = asyncio.Event()
    second_done = asyncio.Event()

    async def batch(wait_for: asyncio.Event | None) -> None:
        async with redis_store.transaction() as tx:
            await tx.load_checkpoint("p", lock=True)
            first_read.set()
            if wait_for is not None:
                await wait_for.wait()  # the other one commits meanwhile
            as_redis(tx).pipeline.hincrby(key, "n", 1)
            await tx.save_checkpoint("p", 1, START, Position(0, 1), 1)

    async def second() -> None:
        await first_read.wait()
        await batch(None)
        second_done.set()

    results = await asyncio.gather(batch(second_done), second(), return_exceptions=True)
    assert isinstance(results[0], CheckpointConflictError) and results[1] is None
    assert await redis_client.hget(key, "n") == "1"

    # A stale expected position is refused before anything is queued.
    async def stale_batch() -> None:
        async with redis_store.transaction() as tx:
            await tx.load_checkpoint("p", lock=True)
            await tx.save_checkpoint("p", 1, START, Position(0, 2), 1)

    with pytest.raises(CheckpointConflictError, match="expected 0/0, found 0/1"):
        await stale_batch()


async def test_two_runners_on_one_projection_never_double_apply(
    tmp_path: Path,
    redis_store: RedisReadModelStore,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="projectionist")
    appends = history(seed=5, streams=30, appends_per_stream=4, append_size=25)  # 3,000
    ledger = make_ledger(redis_store, batch_size=40)
    url = sqlite_url(tmp_path)
    async with Application(url, [ledger]) as first, Application(url, [ledger]) as second:
        await first.setup()
        await second.setup()
        await append_all(first, appends[: len(appends) // 2])
        # Runners, not app.run(): workers would share the projection through a lease.
        runners = [app.runner("ledger") for app in (first, second)]
        runs = [asyncio.create_task(runner.run()) for runner in runners]
        await append_all(first, appends[len(appends) // 2 :])
        head = await first.store.last_committed()
        await first.wait_for("ledger", head, timeout=60)
        for runner in runners:
            runner.stop()
        await asyncio.gather(*runs)
        expected = expected_of(appends)
        assert await read_ledger(redis_client, redis_store) == expected.snapshot()
        checkpoint = await redis_store.checkpoint("ledger")
        assert checkpoint is not None and checkpoint.events_processed == expected.handled
    conflicts = [r for r in caplog.records if r.__dict__.get("action") == "checkpoint_conflict"]
    assert conflicts, "the runners never raced: the conflict path was not exercised"


async def test_rebuild_deletes_its_keys_and_replays(
    tmp_path: Path, redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    ledger = make_ledger(redis_store, batch_size=100)
    async with Application(sqlite_url(tmp_path), [ledger]) as app:
        await app.setup()
        head = await append_all(app, SMALL)
        await app.run_until_caught_up()
        # Damage the read model, and keep keys outside its tables that must survive.
        await redis_client.hset(redis_store.key("ledger_accounts", "account-0001"), "seen", 999)
        await redis_client.hset(redis_store.key("ledger_accounts", "ghost"), "seen", 1)
        await redis_client.set(redis_store.key("ledger_accountsx"), "other table")
        await redis_client.set(f"{redis_store.prefix}-other:ledger_totals", "other prefix")
        progress: list[tuple[int, int]] = []
        assert await app.rebuild("ledger", lambda done, total: progress.append((done, total)))
        assert progress[-1] == (len(SMALL) * 10, len(SMALL) * 10)
        assert await read_ledger(redis_client, redis_store) == expected_of(SMALL).snapshot()
        assert await redis_client.get(redis_store.key("ledger_accountsx")) == "other table"
        assert await redis_client.get(f"{redis_store.prefix}-other:ledger_totals")
        checkpoint = await redis_store.checkpoint("ledger")
        assert checkpoint is not None
        assert (checkpoint.position, checkpoint.events_processed) == (
            head,
            expected_of(SMALL).handled,
        )
    await redis_client.unlink(f"{redis_store.prefix}-other:ledger_totals")


async def test_rebuild_of_a_large_read_model_deletes_every_key(
    tmp_path: Path, redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    """More keys than one UNLINK chunk and one SCAN page: all of them go."""
    ledger = make_ledger(redis_store)
    async with Application(sqlite_url(tmp_path), [ledger]) as app:
        await app.setup()
        pipe = redis_client.pipeline(transaction=False)
        for n in range(2500):
            pipe.hset(redis_store.key("ledger_notes", f"stale-{n}"), "notes", 1)
        await pipe.execute()
        await app.rebuild("ledger")
        stale = [
            k async for k in redis_client.scan_iter(match=redis_store.key("ledger_notes", "*"))
        ]
        assert stale == []


async def test_version_change_requires_rebuild(
    tmp_path: Path, redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    async with Application(sqlite_url(tmp_path), [make_ledger(redis_store)]) as app:
        await app.setup()
        await append_all(app, SMALL[:10])
        await app.run_until_caught_up()
    newer = make_ledger(redis_store)
    newer.version = 2
    async with Application(sqlite_url(tmp_path), [newer]) as app:
        with pytest.raises(ProjectionVersionError, match="rebuild"):
            await app.setup()
        assert await app.rebuild("ledger") == 100
        await app.setup()
        checkpoint = await redis_store.checkpoint("ledger")
        assert checkpoint is not None and checkpoint.version == 2
        assert await read_ledger(redis_client, redis_store) == expected_of(SMALL[:10]).snapshot()


async def test_status_shows_position_and_lag(
    tmp_path: Path, redis_store: RedisReadModelStore
) -> None:
    sql_side = Projection("sql_side", tables=[])

    @sql_side.on("Deposited")
    async def nothing(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        pass

    async with Application(sqlite_url(tmp_path), [make_ledger(redis_store), sql_side]) as app:
        await app.store.apply_schema()
        statuses = {s.name: s for s in await app.status()}
        assert statuses["ledger"].state == "not set up"
        await app.setup()
        await append_all(app, SMALL[:10])
        statuses = {s.name: s for s in await app.status()}
        assert statuses["ledger"].state == "stopped" and statuses["ledger"].lag == 100
        assert statuses["ledger"].position == START
        await app.run_until_caught_up()
        head = await app.store.head()
        status = {s.name: s for s in await app.status()}["ledger"]
        assert (status.position, status.head, status.lag, status.state) == (
            head,
            head,
            0,
            "stopped",  # no worker runs it
        )
        assert status.events_processed == expected_of(SMALL[:10]).handled
        # The SQL projection's checkpoint stays in SQLite, the Redis one only in Redis.
        assert set(await app.read_models.checkpoints()) == {"sql_side"}
        assert set(await redis_store.checkpoints()) == {"ledger"}


async def test_killed_redis_connections_are_retried(
    tmp_path: Path,
    redis_store: RedisReadModelStore,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="projectionist")
    appends = history(seed=3, streams=20, appends_per_stream=10, append_size=10)  # 2,000
    ledger = make_ledger(redis_store, batch_size=20)
    name = f"projectionist:{redis_store.prefix}"
    async with Application(sqlite_url(tmp_path), [ledger], poll_interval=0.05) as app:
        await app.setup()
        running = asyncio.create_task(app.run())
        kills = 0
        for start in range(0, len(appends), 10):
            await append_all(app, appends[start : start + 10])
            await asyncio.sleep(0.15)  # the runner reconnects (after its backoff) and goes on
            for client in await redis_client.client_list():
                if client["name"] == name:  # only this test's store's connections
                    kills += await redis_client.client_kill_filter(_id=client["id"])
        head = await app.store.last_committed()
        await app.wait_for("ledger", head, timeout=60)
        app.stop()
        await running  # it never gave up
    assert kills >= 10
    retries = [r for r in caplog.records if r.__dict__.get("action") == "transient_retry"]
    assert len(retries) >= 5, [r.getMessage() for r in retries]
    expected = expected_of(appends)
    assert await read_ledger(redis_client, redis_store) == expected.snapshot()
    checkpoint = await redis_store.checkpoint("ledger")
    assert checkpoint is not None and checkpoint.events_processed == expected.handled


async def test_bad_configurations_are_refused(redis_store: RedisReadModelStore) -> None:
    with pytest.raises(ConfigurationError, match="key prefix"):
        RedisReadModelStore(REDIS_URL, prefix="a*b")
    with pytest.raises(ConfigurationError, match="redis://"):
        RedisReadModelStore("postgresql://x/y")
    with pytest.raises(ConfigurationError, match="RedisReadModelStore"):
        RedisProjection("p", object())  # type: ignore[arg-type]
    inline = Projection("inline_one", kind="inline")
    inline.read_models = redis_store
    with pytest.raises(ConfigurationError, match="inline"):
        Application("memory://", [inline])
    with pytest.raises(ConfigurationError, match="not open"):
        _ = RedisReadModelStore(REDIS_URL).client
    async with redis_store.transaction() as tx:
        with pytest.raises(ConfigurationError, match=r"tx\.pipeline"):
            await tx.execute("SELECT 1")
        with pytest.raises(ConfigurationError, match=r"tx\.pipeline"):
            await tx.fetch("SELECT 1")


async def test_sql_handlers_and_redis_handlers_do_not_mix(
    tmp_path: Path, redis_store: RedisReadModelStore
) -> None:
    misplaced = Projection("misplaced")

    @misplaced.on("Deposited")
    async def write(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        as_redis(tx).pipeline.set("x", "1")

    async with Application(sqlite_url(tmp_path), [misplaced]) as app:
        await app.setup()
        await app.store.append("a", [NewEvent("Deposited", {"amount": 1})])
        with pytest.raises(HandlerError, match="RedisReadModelStore"):
            await app.run_until_caught_up()


async def test_unreachable_redis_says_what_is_wrong(tmp_path: Path) -> None:
    store = RedisReadModelStore("redis://127.0.0.1:1/0", prefix="nowhere")
    with pytest.raises(StoreUnavailableError, match="no Redis server answers at that address"):
        await store.open()
    app = Application(sqlite_url(tmp_path), [make_ledger(store)])
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1:1"):
        await app.open()
    with pytest.raises(ConfigurationError, match="not open"):
        _ = app.store  # the failed open closed what it had opened


async def test_rebuild_while_a_runner_follows_live(
    tmp_path: Path, redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    """The reset takes the projection's lock: the running runner's batches wait or conflict,
    then follow the rebuilt checkpoint; every event is counted once in the end."""
    appends = history(seed=9, streams=20, appends_per_stream=6, append_size=10)  # 1,200
    ledger = make_ledger(redis_store, batch_size=30)
    async with Application(sqlite_url(tmp_path), [ledger], poll_interval=0.05) as app:
        await app.setup()
        await append_all(app, appends[:60])
        running = asyncio.create_task(app.run())
        rebuilding = asyncio.create_task(app.rebuild("ledger"))
        await append_all(app, appends[60:])
        await rebuilding
        await app.wait_for("ledger", await app.store.last_committed(), timeout=60)
        app.stop()
        await running
        expected = expected_of(appends)
        assert await read_ledger(redis_client, redis_store) == expected.snapshot()
        checkpoint = await redis_store.checkpoint("ledger")
        assert checkpoint is not None and checkpoint.events_processed == expected.handled


async def test_a_handler_losing_its_connection_is_transient(
    tmp_path: Path, redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    """A handler's own read on a dropped connection surfaces as StoreUnavailableError (which
    a running projection retries), not as a HandlerError that would stop it."""
    reader = RedisProjection("reader", redis_store)
    killed: list[int] = []

    @reader.on("Deposited")
    async def read_then_count(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        rtx = as_redis(tx)
        if not killed:  # once: drop the connection this handler reads on, then read
            own = await rtx.client.client_id()
            killed.append(await redis_client.client_kill_filter(_id=str(own)))
        await rtx.client.get(rtx.key("reader", "anything"))
        rtx.pipeline.hincrby(rtx.key("reader"), "n", 1)

    async with Application(sqlite_url(tmp_path), [reader]) as app:
        await app.setup()
        await app.store.append("a", [NewEvent("Deposited", {"amount": n}) for n in range(3)])
        with pytest.raises(StoreUnavailableError, match="ConnectionError"):
            await app.run_until_caught_up()
        assert killed == [1]
        checkpoint = await redis_store.checkpoint("reader")
        assert checkpoint is not None and checkpoint.position == START  # nothing applied
        await app.run_until_caught_up()  # the next attempt reconnects
        assert await redis_client.hget(redis_store.key("reader"), "n") == "3"


async def test_a_command_failing_inside_exec_is_reported_as_applied(
    tmp_path: Path, redis_store: RedisReadModelStore, redis_client: aioredis.Redis
) -> None:
    """Redis cannot roll back a command that fails at EXEC time (WRONGTYPE): the error says
    the batch's other commands and its checkpoint were applied, so a rebuild is needed."""
    wrong = RedisProjection("wrong", redis_store)

    @wrong.on("Deposited")
    async def count(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        rtx = as_redis(tx)
        rtx.pipeline.hincrby(rtx.key("wrong", "text"), "n", 1)  # the key holds a string
        rtx.pipeline.incr(rtx.key("wrong", "counter"))

    async with Application(sqlite_url(tmp_path), [wrong]) as app:
        await app.setup()
        await redis_client.set(redis_store.key("wrong", "text"), "a string")
        head = (await app.store.append("a", [NewEvent("Deposited", {"amount": 1})])).position
        with pytest.raises(BackendError, match="applied the others and the checkpoint") as error:
            await app.run_until_caught_up()
        assert "WRONGTYPE" in str(error.value)
        assert await redis_client.get(redis_store.key("wrong", "counter")) == "1"
        checkpoint = await redis_store.checkpoint("wrong")
        assert checkpoint is not None and checkpoint.position == head
        await redis_client.unlink(redis_store.key("wrong", "text"))
        await app.rebuild("wrong")  # repaired: the counter is counted from zero again
        assert await redis_client.get(redis_store.key("wrong", "counter")) == "1"
        assert await redis_client.hget(redis_store.key("wrong", "text"), "n") == "1"
