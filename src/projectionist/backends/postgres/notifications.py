"""LISTEN/NOTIFY for one PostgreSQL store: commits in one process wake readers in others.

Notifications only wake readers, who then query; a lost notification costs a poll
interval, never an event. Both loops run as background tasks while the store is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from ...store import ChangeSignal

logger = logging.getLogger("projectionist.store.postgres")

NOTIFY_BURST = 10
"""NOTIFYs that may go out at once after a quiet spell, before ``notify_interval`` paces them."""


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _: event.set()


class Pacer:
    """A token bucket: up to ``burst`` NOTIFYs at once, one per ``interval`` on average.

    Not "one per interval after the last": at a steady rate near one per interval, the
    round trip of each NOTIFY would add up until every commit waited most of an interval
    (appends at 100/s with a 10 ms interval waited 5 ms on average). The bucket absorbs
    that jitter and still caps the transaction ids NOTIFYs take.
    """

    def __init__(self, interval: float, burst: int = NOTIFY_BURST) -> None:
        self._interval = interval
        self._burst = float(burst)
        self._tokens = self._burst
        self._at = time.monotonic()

    def delay(self) -> float:
        """Take a token: the seconds to wait before the NOTIFY it pays for may go out."""
        if self._interval == 0:
            return 0.0
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) / self._interval)
        self._at = now
        self._tokens -= 1
        return max(0.0, -self._tokens * self._interval)


class Notifier:
    """Listens on ``channel`` (waking ``changes``) and sends the NOTIFYs commits request."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        pool: Callable[[], asyncpg.Pool],
        changes: ChangeSignal,
        notify_sql: str,
    ) -> None:
        self.channel = channel
        self._dsn = dsn
        self._pool = pool
        self._changes = changes
        self._notify_sql = notify_sql
        self._requested = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []

    def start(self, schema: str, notify_interval: float, poll_interval: float) -> None:
        self._background = [
            asyncio.create_task(self._listen_forever(), name=f"projectionist-listen-{schema}"),
            asyncio.create_task(
                self._notify_forever(notify_interval, poll_interval),
                name=f"projectionist-notify-{schema}",
            ),
        ]

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background = []

    def request(self) -> None:
        """Ask for a NOTIFY soon (after a commit)."""
        self._requested.set()

    async def _listen_forever(self) -> None:
        """Keep one connection LISTENing; reconnect with backoff when it dies.

        Every (re)connect also wakes readers, since notifications sent while disconnected
        are lost.
        """
        backoff = 0.1
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                connection.add_termination_listener(_setter(lost))
                await connection.add_listener(self.channel, self._on_notification)
                logger.debug("listening", extra={"action": "listen_start", "channel": self.channel})
                self._changes.notify()
                backoff = 0.1
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 10)
                    if not lost.is_set():  # a half-open TCP connection never reports loss
                        await connection.fetchval("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: reconnect
                logger.warning(
                    "listen connection failed: %s",
                    exc,
                    extra={"action": "listen_failed", "channel": self.channel},
                )
            finally:
                if connection is not None and not connection.is_closed():
                    connection.terminate()
            self._changes.notify()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _on_notification(self, *_: Any) -> None:
        self._changes.notify()

    async def _notify_forever(self, notify_interval: float, poll_interval: float) -> None:
        """A commit after a quiet spell is announced at once; a steady stream of commits
        shares at most one NOTIFY per ``notify_interval`` on average (``Pacer``), and the
        commits made while one is sent or paced share the next. A NOTIFY is a transaction
        of its own and takes a transaction id: the pace bounds them, whatever the append rate."""
        pacer = Pacer(notify_interval)
        while True:
            await self._requested.wait()
            delay = pacer.delay()
            if delay:
                await asyncio.sleep(delay)
            self._requested.clear()  # commits from here on ask for the next NOTIFY
            try:
                async with self._pool().acquire() as connection:
                    # One round trip, and no wait for a WAL flush: a NOTIFY is delivered at
                    # commit whether or not the commit record reached the disk.
                    await connection.execute(self._notify_sql)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - readers still poll
                logger.warning(
                    "notify failed: %s",
                    exc,
                    extra={"action": "notify_failed", "channel": self.channel},
                )
                await asyncio.sleep(poll_interval)
