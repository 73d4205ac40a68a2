"""Project the "account" category of a Message DB into a read model of balances.

Run: ``.venv/bin/python examples/message_db_source.py [MESSAGE_DB_URL]`` (or set
``MESSAGE_DB_URL``; default ``postgresql://postgres@127.0.0.1:5432/message_store``), against
a database with Message DB installed. ``READ_MODELS_URL`` names the read models' database
(default: the SQLite file ``read_models.db``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid

import asyncpg

from projectionist import Application, Projection, ReadModelTransaction, RecordedEvent
from projectionist.backends.postgres import MessageDbSource

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/message_store"
MESSAGE_DB_URL = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MESSAGE_DB_URL", DEFAULT_URL)
READ_MODELS_URL = os.environ.get("READ_MODELS_URL", "sqlite:///read_models.db")

balances = Projection("balances", tables=["balances"])


@balances.setup
async def create(tx: ReadModelTransaction) -> None:
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, amount BIGINT NOT NULL)"
    )


async def add(tx: ReadModelTransaction, account: str, amount: int) -> None:
    await tx.execute(
        "INSERT INTO balances (account, amount) VALUES ($1, $2) ON CONFLICT (account) "
        "DO UPDATE SET amount = balances.amount + excluded.amount",
        *(account, amount),
    )


@balances.on("Deposited")
async def deposited(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    await add(tx, event.stream_id, event.data["amount"])


@balances.on("Withdrawn")
async def withdrawn(event: RecordedEvent, tx: ReadModelTransaction) -> None:
    await add(tx, event.stream_id, -event.data["amount"])


async def write_messages(url: str) -> None:
    """What your own writers do: always through write_message (it takes the category's
    lock, which keeps the order safe to follow), with Message DB's schema on the path."""
    connection = await asyncpg.connect(url, server_settings={"search_path": "message_store,public"})
    try:
        for stream, type_, amount in [
            ("account-1", "Deposited", 100),
            ("account-2", "Deposited", 5),
            ("account-1", "Withdrawn", 30),
        ]:
            await connection.execute(
                "SELECT write_message($1, $2, $3, $4::jsonb)",
                *(str(uuid.uuid4()), stream, type_, json.dumps({"amount": amount})),
            )
    finally:
        await connection.close()


async def main() -> None:
    await write_messages(MESSAGE_DB_URL)
    source = MessageDbSource(MESSAGE_DB_URL, ["account"])
    async with (
        source,
        Application(source=source, read_models=READ_MODELS_URL, projections=[balances]) as app,
    ):
        await app.setup()
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            rows = await tx.fetch("SELECT account, amount FROM balances ORDER BY account")
    print([tuple(row) for row in rows])


if __name__ == "__main__":
    asyncio.run(main())
