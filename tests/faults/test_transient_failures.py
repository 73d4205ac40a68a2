"""A running projection survives its database connections being killed, applying every
event exactly once: transient failures are retried with backoff, from the last commit."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from projectionist import Application
from projectionist.errors import BackendError, HandlerError, StoreUnavailableError
from projectionist.transient import is_transient
from tests.conftest import PG_DSN, settle
from tests.engine.projections import ledger, ledger_rows, money


async def _kill(application_name: str) -> int:
    admin = await asyncpg.connect(PG_DSN)
    try:
        return int(
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name LIKE '%' || $1",  # a worker's transaction prefixes it
                application_name,
            )
        )
    finally:
        await admin.close()


async def test_runner_survives_killed_connections(
    pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="projectionist")
    victim = f"{PG_DSN}?schema={pg_schema}&application_name=victim_{pg_schema}"
    async with (
        Application(f"{PG_DSN}?schema={pg_schema}", [ledger(batch_size=7)]) as writer,
        Application(victim, [ledger(batch_size=7)], poll_interval=0.1) as worker,
    ):
        await writer.setup()
        running = asyncio.create_task(worker.run())

        def retries() -> int:
            return sum(getattr(r, "action", "") == "transient_retry" for r in caplog.records)

        # A kill can land while the runner holds no connection; keep going (bounded) until
        # several have hit it mid-work, so the retry path is surely exercised.
        killed = rounds = 0
        while rounds < 20 or (retries() < 3 and rounds < 80):
            for stream in range(5):
                await writer.store.append(f"account-{rounds}-{stream}", money(stream, 6))
            await asyncio.sleep(0.05)
            killed += await _kill(f"victim_{pg_schema}")
            rounds += 1
        await settle(writer.store)
        await worker.wait_for("ledger", await writer.store.last_committed(), timeout=60)
        assert not running.done(), "the runner must not die of a lost connection"
        worker.stop()
        await asyncio.wait_for(running, 10)
        assert killed >= 20
        assert retries() >= 3, "the kills must have hit the runner, or this test proves nothing"
        async with writer.read_models.transaction() as tx:
            seen, totals = await ledger_rows(tx)
        expected = [e for r in range(rounds) for s in range(5) for e in money(s, 6)]
        assert len(seen) == sum(1 for e in expected if e.type != "Ignored")  # type: ignore[arg-type]
        assert sum(row[1] for row in totals) == sum(  # type: ignore[attr-defined]
            1 for e in expected if e.type in ("Deposited", "Withdrawn")
        )


def test_transient_errors_are_told_apart() -> None:
    lost = StoreUnavailableError("gone")
    assert is_transient(lost)
    assert is_transient(HandlerError("p", None, "failed").with_traceback(None)) is False
    wrapped = HandlerError("p", None, "failed")
    wrapped.__cause__ = lost
    assert is_transient(wrapped)
    serialization = BackendError("x")
    serialization.__cause__ = type("E", (Exception,), {"sqlstate": "40001"})()
    assert is_transient(serialization)
    constraint = BackendError("x")
    constraint.__cause__ = type("E", (Exception,), {"sqlstate": "23505"})()
    assert not is_transient(constraint)
    assert not is_transient(ValueError("a bug in a handler"))
