"""PostgreSQL wake-ups survive a killed LISTEN connection.

The reader polls only every 60 seconds, so a wait that ends within seconds was woken by a
notification (or by the listener's reconnect). Its LISTEN backend is found in pg_stat_activity
by the channel, which names the test's own schema, and killed with pg_terminate_backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from projectionist import NewEvent, create_store
from projectionist.backends.postgres import PostgresEventStore
from tests.conftest import PG_DSN

LISTENER_TIMEOUT = 10.0  # seconds to wait for a (new) LISTEN backend
WAKE_WITHIN = 5.0  # seconds an append may take to wake a waiting reader
QUIET = 0.3  # seconds a waiter must stay asleep while nothing was appended


@dataclass
class Setup:
    reader: PostgresEventStore
    writer: PostgresEventStore
    admin: asyncpg.Connection
    reader_pid: int
    writer_pid: int

    async def kill_reader_listener(self) -> int:
        """Terminate the reader's LISTEN backend; return the pid of its replacement."""
        killed = self.reader_pid
        assert await self.admin.fetchval("SELECT pg_terminate_backend($1)", killed)
        self.reader_pid = await wait_for_listener(
            self.admin, self.reader.channel, exclude={killed, self.writer_pid}
        )
        gone = await self.admin.fetchval(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", killed
        )
        assert gone, f"backend {killed} survived pg_terminate_backend"
        return self.reader_pid


async def listeners(admin: asyncpg.Connection, channel: str) -> set[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND query = $1",
        f'LISTEN "{channel}"',
    )
    return {row["pid"] for row in rows}


async def wait_for_listener(admin: asyncpg.Connection, channel: str, exclude: set[int]) -> int:
    """The pid of the one LISTEN backend on ``channel`` not in ``exclude``, once it exists."""
    deadline = time.monotonic() + LISTENER_TIMEOUT
    while True:
        new = await listeners(admin, channel) - exclude
        if new:
            assert len(new) == 1, f"expected one new listener on {channel}, found {new}"
            return new.pop()
        assert time.monotonic() < deadline, f"no new listener on {channel} within 10 s"
        await asyncio.sleep(0.02)


async def open_store(schema: str, *, poll_interval: float = 1.0) -> PostgresEventStore:
    store = create_store(PG_DSN, schema=schema, poll_interval=poll_interval)
    assert isinstance(store, PostgresEventStore)
    await store.open()
    return store


@pytest.fixture
async def setup(pg_schema: str) -> AsyncIterator[Setup]:
    admin = await asyncpg.connect(PG_DSN)
    reader = await open_store(pg_schema, poll_interval=60)
    writer: PostgresEventStore | None = None
    try:
        await reader.apply_schema()
        # Open the writer only once the reader listens: the first listener is the reader's.
        reader_pid = await wait_for_listener(admin, reader.channel, exclude=set())
        writer = await open_store(pg_schema)
        writer_pid = await wait_for_listener(admin, writer.channel, exclude={reader_pid})
        yield Setup(reader, writer, admin, reader_pid, writer_pid)
    finally:
        if writer is not None:
            await writer.close()
        await reader.close()
        await admin.close()


async def append_one(writer: PostgresEventStore, n: int) -> None:
    await writer.append("reconnect-test", [NewEvent("Appended", {"n": n})])


async def assert_append_wakes(setup: Setup, waiter: asyncio.Task[bool], n: int) -> None:
    """``waiter`` is asleep; an append must wake it with True within WAKE_WITHIN seconds."""
    await asyncio.sleep(QUIET)
    assert not waiter.done(), "the reader woke up although nothing was appended"
    started = time.monotonic()
    await append_one(setup.writer, n)
    woke = await asyncio.wait_for(waiter, LISTENER_TIMEOUT + 1)
    elapsed = time.monotonic() - started
    assert woke, "wait_for_events timed out: the notification never arrived"
    assert elapsed < WAKE_WITHIN, f"woke only after {elapsed:.2f} s"


async def test_wake_up_works_before_and_after_the_listen_connection_is_killed(
    setup: Setup,
) -> None:
    reader = setup.reader

    before = await reader.head()
    waiter = asyncio.create_task(reader.wait_for_events(before, timeout=10))
    await assert_append_wakes(setup, waiter, 1)

    old_pid = setup.reader_pid
    new_pid = await setup.kill_reader_listener()
    assert new_pid != old_pid

    after_kill = await reader.head()
    assert after_kill > before
    waiter = asyncio.create_task(reader.wait_for_events(after_kill, timeout=10))
    await assert_append_wakes(setup, waiter, 2)


async def test_reader_blocked_while_its_listener_is_killed_still_wakes(setup: Setup) -> None:
    reader = setup.reader
    head = await reader.head()
    waiter = asyncio.create_task(reader.wait_for_events(head, timeout=10))
    await asyncio.sleep(QUIET)
    assert not waiter.done()

    await setup.kill_reader_listener()
    # The reconnect wakes the reader to look, but there is nothing new: it must sleep on.
    await assert_append_wakes(setup, waiter, 1)


async def test_append_while_the_listener_is_down_is_not_lost(setup: Setup) -> None:
    """A notification sent while the reader is disconnected is lost; the reconnect makes up."""
    reader = setup.reader
    head = await reader.head()
    waiter = asyncio.create_task(reader.wait_for_events(head, timeout=10))
    await asyncio.sleep(QUIET)
    assert not waiter.done()

    killed = setup.reader_pid
    assert await setup.admin.fetchval("SELECT pg_terminate_backend($1)", killed)
    started = time.monotonic()
    await append_one(setup.writer, 1)  # before the reader's listener is back (0.1 s backoff)
    woke = await asyncio.wait_for(waiter, LISTENER_TIMEOUT + 1)
    elapsed = time.monotonic() - started
    assert woke
    assert elapsed < WAKE_WITHIN, f"woke only after {elapsed:.2f} s"
    await wait_for_listener(setup.admin, reader.channel, exclude={killed, setup.writer_pid})
