"""A projector run as a child process by test_projector_crash.py, to be killed with SIGKILL.

    python -m tests.faults.projector_child URL [--kill-after-commit N | --step]

opens an Application with ``ledger``, runs ``setup()``, prints ``catching-up`` (the parent
times its kills from that line), brings the projection up to the head with
``run_until_caught_up()``, prints ``caught-up TX/SEQ`` and exits 0.

With ``--step`` it prints ``committed`` after each read-model commit once caught up with its
set-up, and waits for a line on stdin before it goes on: the parent kills it on progress
(after a chosen number of batches), never on a clock, and it can never run ahead to the head.

With ``--kill-after-commit N`` it sends itself SIGKILL the moment its N-th read-model
transaction has committed: a kill at a commit boundary, the instant after the rows and the
checkpoint of a batch are durable, which a kill from outside at a random moment rarely hits.

``ledger`` is deliberately not idempotent: every handler increments counters, so applying any
event twice (or losing one) changes the read model, and only a checkpoint that commits
atomically with the batch's rows survives being killed at an arbitrary moment. Besides the
counters, each per-stream row counts ``regressions``: events whose version is not above the
last version it recorded for that stream, which only a replayed event can produce.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence

from projectionist import (
    Application,
    Projection,
    ReadModelStore,
    ReadModelTransaction,
    RecordedEvent,
)
from tests.faults.stepping import step_after_commits

LEDGER_KEYS = {"ledger_totals": "type", "ledger_accounts": "stream_id", "ledger_notes": "stream_id"}
"""Each read-model table with its primary key, to read tables back in a stable order."""
SIGNED = {"Deposited": 1, "Withdrawn": -1}
"""Event types with a per-event handler, and the sign of their amount in the balance."""
NOTED = "Noted"
"""The event type with a batch handler."""
IGNORED = "Audited"
"""An event type the projection does not handle: read past, never applied."""
READY = "catching-up"
DONE = "caught-up"

ledger = Projection("ledger", tables=LEDGER_KEYS, batch_size=200)


@ledger.setup
async def _create(tx: ReadModelTransaction) -> None:
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS ledger_totals (type TEXT PRIMARY KEY, "
        "n BIGINT NOT NULL, total BIGINT NOT NULL)"
    )
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS ledger_accounts (stream_id TEXT PRIMARY KEY, "
        "seen BIGINT NOT NULL, balance BIGINT NOT NULL, last_version BIGINT NOT NULL, "
        "regressions BIGINT NOT NULL)"
    )
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS ledger_notes (stream_id TEXT PRIMARY KEY, "
        "notes BIGINT NOT NULL, chars BIGINT NOT NULL)"
    )
    # Seed the counter rows; a second setup leaves them alone.
    await tx.executemany(
        "INSERT INTO ledger_totals VALUES ($1, 0, 0) ON CONFLICT (type) DO NOTHING",
        [(type_,) for type_ in (*SIGNED, NOTED)],
    )


@ledger.on(*SIGNED)
async def _money(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    amount = int(event.data["amount"])
    await tx.execute(
        "UPDATE ledger_totals SET n = n + 1, total = total + $2 WHERE type = $1",
        event.type,
        amount,
    )
    await tx.execute(
        "INSERT INTO ledger_accounts VALUES ($1, 1, $2, $3, 0) ON CONFLICT (stream_id) "
        "DO UPDATE SET seen = ledger_accounts.seen + 1, "
        "balance = ledger_accounts.balance + excluded.balance, "
        "regressions = ledger_accounts.regressions + "
        "CASE WHEN excluded.last_version <= ledger_accounts.last_version THEN 1 ELSE 0 END, "
        "last_version = excluded.last_version",
        event.stream_id, SIGNED[event.type] * amount, event.version,
    )  # fmt: skip


@ledger.on_batch(NOTED)
async def _notes(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
    # One row of arguments per event (a stream may appear several times): the increments
    # must add up per event, so nothing is folded in memory.
    await tx.executemany(
        "INSERT INTO ledger_notes VALUES ($1, 1, $2) ON CONFLICT (stream_id) "
        "DO UPDATE SET notes = ledger_notes.notes + 1, "
        "chars = ledger_notes.chars + excluded.chars",
        [(event.stream_id, len(event.data["text"])) for event in events],
    )
    await tx.execute(
        "UPDATE ledger_totals SET n = n + $2, total = total + $3 WHERE type = $1",
        NOTED,
        len(events),
        sum(len(event.data["text"]) for event in events),
    )


def kill_after_commits(read_models: ReadModelStore, commits: int) -> None:
    """SIGKILL this process as soon as the ``commits``-th transaction of ``read_models`` has
    committed (the runner and ``setup()`` open theirs through this store object)."""
    transaction = read_models.transaction
    committed = 0

    @contextlib.asynccontextmanager
    async def counted() -> AsyncIterator[ReadModelTransaction]:
        nonlocal committed
        async with transaction() as tx:
            yield tx
        committed += 1
        if committed == commits:
            os.kill(os.getpid(), signal.SIGKILL)

    read_models.transaction = counted  # type: ignore[method-assign]


async def project(url: str, kill_after_commit: int | None = None, step: bool = False) -> None:
    async with Application(url, [ledger]) as app:
        if kill_after_commit is not None:
            kill_after_commits(app.read_models, kill_after_commit)
        await app.setup()
        if step:
            step_after_commits(app.read_models)
        print(READY, flush=True)
        await app.run_until_caught_up()
        checkpoint = await app.read_models.checkpoint(ledger.name)
        assert checkpoint is not None
        print(DONE, checkpoint.position, flush=True)


def main(argv: Sequence[str]) -> int:
    if len(argv) == 1:
        asyncio.run(project(argv[0]))
    elif len(argv) == 2 and argv[1] == "--step":
        asyncio.run(project(argv[0], step=True))
    elif len(argv) == 3 and argv[1] == "--kill-after-commit" and argv[2].isdigit():
        asyncio.run(project(argv[0], int(argv[2])))
    else:
        print(
            "usage: python -m tests.faults.projector_child URL [--kill-after-commit N | --step]",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
