"""Wake-ups for readers: a generation counter that waiters can await without losing a change."""

from __future__ import annotations

import asyncio


class ChangeSignal:
    """Wakes readers when new events may exist.

    A reader takes ``token`` *before* it looks for events, then waits with that token: a
    change that lands between the look and the wait still wakes it, so no wake-up is lost.
    """

    def __init__(self) -> None:
        self._generation = 0
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def token(self) -> int:
        return self._generation

    def notify(self) -> None:
        self._generation += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, token: int, timeout: float) -> bool:
        """Return True once a change newer than ``token`` happened, False on timeout."""
        if self._generation != token:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(waiter)
        return True
