"""JetStreamSource over a real NATS JetStream: following into PostgreSQL and Redis exactly once,
SIGKILLed projectors, partitions, lost history, the mapping, bad input and the example."""

from __future__ import annotations

import asyncio
import contextlib
import random
import runpy
import shutil
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import orjson
import pytest
import redis.asyncio as aioredis
from nats.js.api import ConsumerInfo, StreamConfig

from projectionist import (
    Application,
    BackendError,
    ConfigurationError,
    InvalidInputError,
    ReadModelTransaction,
    RecordedEvent,
    StoreUnavailableError,
)
from projectionist.backends.nats import (
    EVENT_ID_NAMESPACE,
    JetStreamDecodeError,
    JetStreamHistoryLostError,
    JetStreamSource,
    MessageMap,
)
from projectionist.events import START, Position
from projectionist.factory import open_read_models
from projectionist.partitions import Partition
from projectionist.targets.redis import RedisProjection, RedisReadModelStore, as_redis
from tests.conftest import PG_DSN
from tests.faults.projector_child import DONE, READY
from tests.faults.stepping import finish_child, kill_after_batches, spawn_child
from tests.sources.jetstream_child import BATCH_SIZE
from tests.sources.jetstream_support import (
    NATS_URL,
    SIGNED,
    NatsStream,
    StreamMaker,
    expected_of,
    ledger_projection,
    read_ledger,
    require_nats,
)
from tests.targets.conftest import REDIS_URL

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0


def source_of(jet_stream: NatsStream, **options: object) -> JetStreamSource:
    options.setdefault("poll_interval", 0.05)
    return JetStreamSource(NATS_URL, jet_stream.name, **options)  # type: ignore[arg-type]


# -- following into PostgreSQL and Redis ------------------------------------------------------


async def test_an_application_follows_the_stream_into_postgres_exactly_once(
    jet_stream: NatsStream, pg_schema: str
) -> None:
    rng = random.Random(1)
    await jet_stream.publish_money(rng, 300)
    source = source_of(jet_stream)
    ledger = ledger_projection()
    read_models = f"{PG_DSN}?schema={pg_schema}"
    async with (
        source,
        Application(source=source, read_models=read_models, projections=[ledger]) as app,
    ):
        await app.setup()
        await app.run_until_caught_up()
        running = asyncio.ensure_future(app.run())
        try:
            await jet_stream.publish_money(rng, 200)  # followed while running, woken by publish
            await app.wait_for(ledger.name, await source.head(), timeout=TIMEOUT)
        finally:
            app.stop()
            await asyncio.wait_for(running, TIMEOUT)
        async with app.read_models.transaction() as tx:
            followed = await read_ledger(tx)
        assert followed == expected_of(jet_stream.ledger)
        assert len(jet_stream.ledger.applied) == 500 and jet_stream.ledger.duplicates > 50
        assert await app.rebuild(ledger.name) == len(jet_stream.ledger.applied)
        async with app.read_models.transaction() as tx:
            assert await read_ledger(tx) == followed
        [status] = await app.status()
        assert status.lag == 0


def redis_ledger(store: RedisReadModelStore) -> RedisProjection:
    ledger = RedisProjection("jet_redis", store, tables=["applied", "balance"], batch_size=40)

    @ledger.on(*SIGNED)
    async def apply(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        redis_tx = as_redis(tx)
        amount = SIGNED[event.type] * int(event.data["amount"])
        redis_tx.pipeline.hincrby(redis_tx.key("applied"), str(event.position.seq), 1)
        redis_tx.pipeline.hincrby(redis_tx.key("balance"), event.stream_id, amount)

    return ledger


async def test_a_redis_read_model_gets_every_message_once(
    jet_stream: NatsStream,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(2)
    await jet_stream.publish_money(rng, 400)
    source = source_of(jet_stream)
    store = RedisReadModelStore(REDIS_URL, prefix=redis_prefix)
    ledger = redis_ledger(store)
    read_models = f"sqlite:///{tmp_path / 'rm.db'}"
    async with (
        source,
        Application(source=source, read_models=read_models, projections=[ledger]) as app,
    ):
        await app.setup()
        await app.run_until_caught_up()
        await jet_stream.publish_money(rng, 100)
        await app.run_until_caught_up()
        client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            applied = await client.hgetall(store.key("applied"))
            balances = await client.hgetall(store.key("balance"))
        finally:
            await client.aclose()
    expected_applied, expected_balances = expected_of(jet_stream.ledger)
    assert {int(k): int(v) for k, v in applied.items()} == expected_applied
    assert {k: int(v) for k, v in balances.items()} == expected_balances


# -- SIGKILL ----------------------------------------------------------------------------------

KILLS = 6


async def spawn(jet_stream: str, read_models: str, *options: str) -> asyncio.subprocess.Process:
    return await spawn_child("tests.sources.jetstream_child", jet_stream, read_models, *options)


finish = finish_child


async def test_projectors_sigkilled_while_messages_arrive_apply_each_message_once(
    jet_stream: NatsStream, pg_schema: str
) -> None:
    rng = random.Random(3)
    read_models = f"{PG_DSN}?schema={pg_schema}"
    await jet_stream.publish_money(rng, 600)
    moved: list[int] = []  # messages the checkpoint moved in each killed child's life
    for kill in range(KILLS):
        before = await checkpoint_of(read_models)
        process = await spawn(jet_stream.name, read_models, "--step")
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
        assert line.decode().strip() == READY, line
        # Messages keep arriving while the child projects; the kill comes on progress.
        publishing = asyncio.ensure_future(jet_stream.publish_money(rng, 60))
        batches = rng.randint(1, 600 // BATCH_SIZE // KILLS)
        await kill_after_batches(process, batches, go_on=kill % 2 == 0, timeout=TIMEOUT)
        await finish(process, f"child {kill + 1}")
        await publishing
        assert process.returncode == -signal.SIGKILL
        after = await checkpoint_of(read_models)
        assert before <= after < Position(0, max(jet_stream.ledger.applied)), (
            "caught up: kill sooner"
        )
        moved.append(after.seq - before.seq)
    assert sum(1 for m in moved if m > 0) >= KILLS // 2, f"most kills hit no progress: {moved}"

    last = await spawn(jet_stream.name, read_models)
    out = await finish(last, "the last child")
    assert last.returncode == 0 and out.split()[:2] == [READY, DONE], out
    head = max(jet_stream.ledger.applied)
    assert out.split()[2] == str(Position(0, head)), out

    source = source_of(jet_stream)
    ledger = ledger_projection()
    async with (
        source,
        Application(source=source, read_models=read_models, projections=[ledger]) as app,
    ):
        async with app.read_models.transaction() as tx:
            crashed = await read_ledger(tx)
        assert crashed == expected_of(jet_stream.ledger), "a message was applied twice or lost"
        assert await app.rebuild(ledger.name) == len(jet_stream.ledger.applied)
        async with app.read_models.transaction() as tx:
            assert await read_ledger(tx) == crashed, "differs from a clean rebuild"


async def checkpoint_of(read_models_url: str) -> Position:
    async with open_read_models(read_models_url) as read_models:
        await read_models.apply_schema()  # (idempotent: the children apply it too)
        checkpoint = await read_models.checkpoint("jet_ledger")
    return START if checkpoint is None else checkpoint.position


# -- partitions -------------------------------------------------------------------------------


async def test_two_partition_units_together_apply_every_message_once(
    jet_stream: NatsStream, pg_schema: str
) -> None:
    await jet_stream.publish_money(random.Random(4), 300)
    source = source_of(jet_stream)
    ledger = ledger_projection(partitions=2)
    read_models = f"{PG_DSN}?schema={pg_schema}"
    async with (
        source,
        Application(source=source, read_models=read_models, projections=[ledger]) as app,
    ):
        await app.setup()
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            assert await read_ledger(tx) == expected_of(jet_stream.ledger)
        halves = [await source.count_after(START, Partition(i, 2)) for i in (0, 1)]
        assert sum(halves) == len(jet_stream.ledger.applied) and all(halves)
        seen: list[int] = []
        for index in (0, 1):
            batch = await source.read_all(partition=Partition(index, 2), limit=1000)
            assert all(Partition(index, 2).holds(e.stream_id) for e in batch.events)
            seen.extend(e.position.seq for e in batch.events)
        assert sorted(seen) == sorted(jet_stream.ledger.applied)


# -- reading: the mapping, filters, pages, head and counts ------------------------------------


async def publish(jet_stream: NatsStream, subject: str, data: bytes, **headers: str) -> int:
    ack = await jet_stream.js.publish(f"{jet_stream.name}.{subject}", data, headers=headers or None)
    return ack.seq


async def test_fields_come_from_headers_or_from_the_subject(jet_stream: NatsStream) -> None:
    event_id = uuid.uuid4()
    headers = {
        "Projectionist-Stream": "order-1",
        "Projectionist-Type": "Placed",
        "Projectionist-Version": "3",
        "Nats-Msg-Id": str(event_id),
        "Trace": "t-1",
    }
    await publish(jet_stream, "orders.order-1", b'{"a": 1}', **headers)
    await publish(jet_stream, "orders.order-2.Shipped", b"", **{"Nats-Msg-Id": "not-a-uuid"})
    async with source_of(jet_stream) as source:
        first, second = (await source.read_all()).events
    assert (first.id, first.stream_id, first.type, first.version) == (
        event_id, "order-1", "Placed", 3,
    )  # fmt: skip
    assert first.data == {"a": 1}
    assert first.metadata == {"Nats-Msg-Id": str(event_id), "Trace": "t-1"}
    assert first.position == Position(0, 1) and first.recorded_at.tzinfo is not None
    assert (second.stream_id, second.type, second.version, second.data) == (
        f"{jet_stream.name}.orders.order-2.Shipped", "Shipped", None, {},
    )  # fmt: skip
    assert second.id == uuid.uuid5(EVENT_ID_NAMESPACE, f"{jet_stream.name}/2")
    mapping = MessageMap(stream_token=2, decode=lambda data: {"raw": data.decode()})
    async with source_of(jet_stream, mapping=mapping) as source:
        again = (await source.read_all(Position(0, 1))).events[0]
    assert (again.stream_id, again.data, again.id) == ("order-2", {"raw": ""}, second.id)


async def test_filters_pages_head_counts_and_subjects(jet_stream: NatsStream) -> None:
    for n in range(30):
        kind = ("a", "b", "c")[n % 3]
        await publish(jet_stream, f"{kind}.s{n % 4}", orjson.dumps({"n": n}))
    async with source_of(
        jet_stream, subjects=[f"{jet_stream.name}.a.*", f"{jet_stream.name}.b.>"]
    ) as source:
        assert await source.head() == Position(0, 29)  # the last message on a or b
        assert await source.count_after(START) == 20
        assert await source.count_after(Position(0, 15)) == 10
        backlog = await source.backlog(Position(0, 15))
        assert (backlog.events, backlog.estimated) == (10, False) and backlog.oldest
        everything = await source.read_all(limit=100)
        assert [e.data["n"] for e in everything.events] == [n for n in range(30) if n % 3 < 2]
        assert everything.checkpoint == Position(0, 30)  # the c message at 30 was scanned
        kept = await source.read_all(types=["s1"], limit=100)
        assert [e.data["n"] for e in kept.events] == [
            n for n in range(30) if n % 3 < 2 and n % 4 == 1
        ]
        assert kept.checkpoint == Position(0, 30)
        paged: list[int] = []
        after = START
        while (batch := await source.read_all(after, limit=7, max_bytes=30)).checkpoint > after:
            assert len(batch.events) <= 7
            paged.extend(e.data["n"] for e in batch.events)
            after = batch.checkpoint
        assert paged == [e.data["n"] for e in everything.events]
        assert await source.read_all(after) == type(everything)([], after)
    async with source_of(jet_stream) as whole:
        assert await whole.head() == Position(0, 30)
        assert await whole.count_after(START) == 30


async def test_a_follower_is_woken_by_a_publish(jet_stream: NatsStream) -> None:
    async with source_of(jet_stream, poll_interval=30.0) as source:  # no polling to speak of
        waiting = asyncio.ensure_future(source.wait_for_events(START, timeout=TIMEOUT))
        await asyncio.sleep(0)
        await publish(jet_stream, "x.y", b"{}")
        assert await asyncio.wait_for(waiting, 10)  # long before the poll interval


async def consumers_on(jet_stream: NatsStream) -> int:
    return (await jet_stream.js.stream_info(jet_stream.name)).state.consumer_count or 0


async def test_a_reader_that_goes_on_reuses_its_consumer_and_close_removes_them(
    jet_stream: NatsStream,
) -> None:
    for n in range(40):
        await publish(jet_stream, "e.x", orjson.dumps({"n": n}))
    async with source_of(jet_stream) as source:
        after, seen = START, list[int]()
        for _ in range(4):
            batch = await source.read_all(after, limit=10)
            seen.extend(e.data["n"] for e in batch.events)
            after = batch.checkpoint
        assert seen == list(range(40)) and await consumers_on(jet_stream) == 1
        again = await source.read_all(Position(0, 5), limit=3)  # another reader elsewhere
        assert [e.data["n"] for e in again.events] == [5, 6, 7]
        assert await consumers_on(jet_stream) == 2
    assert await consumers_on(jet_stream) == 0  # nothing is left on the server


async def test_a_consumer_removed_on_the_server_is_replaced(jet_stream: NatsStream) -> None:
    for n in range(20):
        await publish(jet_stream, "e.x", orjson.dumps({"n": n}))
    async with source_of(jet_stream, request_timeout=2.0) as source:
        first = await source.read_all(limit=10)
        [info] = [c async for c in consumer_infos(jet_stream)]
        await jet_stream.js.delete_consumer(jet_stream.name, info.name)  # as inactivity would
        rest = await source.read_all(first.checkpoint, limit=100)
    assert [e.data["n"] for e in first.events + rest.events] == list(range(20))


async def test_a_cursor_idle_for_long_is_replaced_before_the_server_drops_it(
    jet_stream: NatsStream,
) -> None:
    for n in range(10):
        await publish(jet_stream, "e.x", orjson.dumps({"n": n}))
    async with source_of(jet_stream, consumer_idle=0.5) as source:
        first = await source.read_all(limit=4)
        await asyncio.sleep(0.6)  # past half the inactivity limit: the server may drop it
        rest = await source.read_all(first.checkpoint, limit=100)
    assert [e.data["n"] for e in first.events + rest.events] == list(range(10))


async def consumer_infos(jet_stream: NatsStream) -> AsyncIterator[ConsumerInfo]:
    for info in await jet_stream.js.consumers_info(jet_stream.name):
        yield info


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def start_server(port: int, store: Path) -> asyncio.subprocess.Process:
    """A NATS server of this test's own (so it can be killed), answering on ``port``."""
    if shutil.which("nats-server") is None:
        pytest.fail("nats-server is not installed (apt-get install nats-server)", pytrace=False)
    process = await asyncio.create_subprocess_exec(
        *("nats-server", "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return process
        await asyncio.sleep(0.05)
    process.kill()
    pytest.fail(f"nats-server on port {port} did not answer", pytrace=False)


async def test_a_server_restart_fails_reads_clearly_then_they_go_on(tmp_path: Path) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    server = await start_server(port, tmp_path)
    try:
        client = await nats.connect(url)
        await client.jetstream().add_stream(StreamConfig(name="RESTART", subjects=["r.>"]))
        for n in range(20):
            await client.jetstream().publish("r.x", orjson.dumps({"n": n}))
        await client.close()
        source = JetStreamSource(url, "RESTART", request_timeout=1.0)
        async with source:
            first = await source.read_all(limit=10)
            server.kill()  # on progress: after the first page
            await server.wait()
            with pytest.raises(StoreUnavailableError, match="RESTART"):
                await source.read_all(first.checkpoint)
            server = await start_server(port, tmp_path)  # the stream is on disk
            rest = None
            for _ in range(50):  # until the client has reconnected
                with contextlib.suppress(StoreUnavailableError):
                    rest = await source.read_all(first.checkpoint, limit=100)
                    break
            assert rest is not None, "reads did not recover after the restart"
        assert [e.data["n"] for e in first.events + rest.events] == list(range(20))
    finally:
        server.kill()
        await server.wait()


# -- lost history -----------------------------------------------------------------------------


async def test_reading_past_dropped_messages_says_which_are_gone(
    make_jet_stream: StreamMaker,
) -> None:
    jet_stream = await make_jet_stream(max_msgs=10)
    for n in range(5):
        await publish(jet_stream, "e.x", orjson.dumps({"n": n}))
    async with source_of(jet_stream) as source:
        batch = await source.read_all(limit=5)
        assert batch.checkpoint == Position(0, 5)
        for n in range(5, 25):
            await publish(jet_stream, "e.x", orjson.dumps({"n": n}))
        with pytest.raises(JetStreamHistoryLostError, match="messages 6 to 15") as lost:
            await source.read_all(batch.checkpoint)  # the reader went on: 6..15 dropped
        assert (lost.value.first_lost, lost.value.last_lost) == (6, 15)
        with pytest.raises(JetStreamHistoryLostError, match=r"messages 1 to 15 .* starts at 16"):
            await source.read_all(START)  # a rebuild from the start says so too
    async with source_of(jet_stream, accept_truncated_history=True) as accepting:
        read = await accepting.read_all(START, limit=100)
    assert [e.position.seq for e in read.events] == list(range(16, 26))


async def test_a_checkpoint_beyond_a_recreated_stream_is_refused(jet_stream: NatsStream) -> None:
    await publish(jet_stream, "e.x", b"{}")
    async with source_of(jet_stream) as source:
        with pytest.raises(BackendError, match=r"past the last message of .* created again"):
            await source.read_all(Position(0, 40))


# -- bad input --------------------------------------------------------------------------------


async def test_bad_urls_missing_streams_and_arguments_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="nats://host:port"):
        JetStreamSource("http://127.0.0.1:4222", "S")
    with pytest.raises(ConfigurationError, match="invalid NATS URL"):
        JetStreamSource("nats://127.0.0.1:99999", "S")
    with pytest.raises(InvalidInputError, match="stream name"):
        JetStreamSource(NATS_URL, "a.b")
    with pytest.raises(InvalidInputError, match="overlap"):
        JetStreamSource(NATS_URL, "S", subjects=["a.*", "a.b"])
    with pytest.raises(InvalidInputError, match="invalid"):
        JetStreamSource(NATS_URL, "S", subjects=["a.>.b"])
    with pytest.raises(ConfigurationError, match="type_header"):
        JetStreamSource(NATS_URL, "S", mapping=MessageMap(type_header="bad header"))
    unreachable = JetStreamSource("nats://user:s3cret@127.0.0.1:1", "S")
    assert "s3cret" not in unreachable.url
    with pytest.raises(StoreUnavailableError, match="cannot connect") as refused:
        await unreachable.open()
    assert "s3cret" not in str(refused.value)
    await require_nats()
    missing = JetStreamSource(NATS_URL, f"MISSING_{uuid.uuid4().hex[:8]}")
    with pytest.raises(StoreUnavailableError, match="has no stream"):
        await missing.open()
    with pytest.raises(ConfigurationError, match="not open"):
        await missing.read_all()


async def test_arguments_of_reads_are_validated(jet_stream: NatsStream) -> None:
    async with source_of(jet_stream) as source:
        with pytest.raises(InvalidInputError):
            await source.read_all(limit=0)
        with pytest.raises(InvalidInputError):
            await source.read_all((0, 1))  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            await source.read_all(max_bytes=0)
        with pytest.raises(InvalidInputError):
            await source.count_after(START, Partition(2, 2))


async def test_a_message_that_does_not_decode_is_named(jet_stream: NatsStream) -> None:
    await publish(jet_stream, "e.x", b"{}")
    bad = await publish(jet_stream, "e.x", b"not json")
    await publish(jet_stream, "e.y", b"{}", **{"Projectionist-Version": "minus one"})
    async with source_of(jet_stream) as source:
        with pytest.raises(JetStreamDecodeError, match=f"message {bad} .*does not decode") as err:
            await source.read_all()
        assert err.value.seq == bad
        with pytest.raises(JetStreamDecodeError, match="Projectionist-Version"):
            await source.read_all(Position(0, bad))
        assert len((await source.read_all(limit=1)).events) == 1  # before it: fine


# -- the example ------------------------------------------------------------------------------


async def test_the_example_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await require_nats()
    stream_name = f"EXAMPLE_{uuid.uuid4().hex[:8]}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NATS_URL", NATS_URL)
    monkeypatch.setenv("EXAMPLE_STREAM", stream_name)
    script = REPO_ROOT / "examples" / "jetstream_source.py"
    await asyncio.to_thread(runpy.run_path, str(script), run_name="__main__")
    assert capsys.readouterr().out.splitlines()[-1] == "[('order-1', 12), ('order-2', 3)]"
    doc = (REPO_ROOT / "docs" / "sources" / "nats-jetstream.md").read_text("utf-8")
    assert script.read_text("utf-8") in doc, "the guide's example differs from the file"
