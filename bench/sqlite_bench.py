"""The SQLite pair: the state projection on a SQLite store vs a hand-written SQLite projector.

Both run on one store file under a temporary directory, loaded from the same generator as
the PostgreSQL data set (``bench.dataset.load_sqlite``). The hand-written one uses the
standard library's ``sqlite3`` (what a hand-written projector uses): per page of 10k events
of the order types, one SELECT of the touched keys, the fold (``fold_plain``), one
``executemany`` upsert and the checkpoint, in one transaction.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import orjson

from bench.orders_model import ORDER_TYPES, fold_plain, initial_plain, state_projection
from projectionist import START, Application

Result = dict[str, Any]
PAGE = 10_000
_TYPES = ", ".join("?" * len(ORDER_TYPES))
KEYSET = (
    f"SELECT position, stream_id, type, data FROM events WHERE position > ? "
    f"AND type IN ({_TYPES}) ORDER BY position LIMIT ?"
)
UPSERT = (
    "INSERT INTO {t} VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (order_id) DO UPDATE SET "
    "customer_id = excluded.customer_id, day = excluded.day, status = excluded.status, "
    "items = excluded.items, total_cents = excluded.total_cents, lines = excluded.lines"
)


async def sqlite_state(path: str) -> Result:
    """The state projection, as in the PostgreSQL scenario, on the SQLite store."""
    async with Application(f"sqlite:///{path}", [state_projection()]) as app:
        await app.setup()
        total = await app.store.count_after(START)
        started = time.perf_counter()
        await app.run_until_caught_up()
        seconds = time.perf_counter() - started
    return {"events": total, "seconds": seconds}


def sqlite_hand_written(path: str, table: str = "order_summary_hand") -> Result:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")  # as the store's own connections
        connection.execute(
            f"CREATE TABLE {table} (order_id TEXT PRIMARY KEY, customer_id TEXT, day TEXT, "
            "status TEXT, items INTEGER, total_cents INTEGER, lines TEXT)"
        )
        connection.execute("CREATE TABLE hand_checkpoint (name TEXT PRIMARY KEY, position INT)")
        connection.execute("INSERT INTO hand_checkpoint VALUES (?, 0)", (table,))
        started = time.perf_counter()
        count, after = 0, 0
        while rows := connection.execute(KEYSET, (after, *ORDER_TYPES, PAGE)).fetchall():
            after = rows[-1][0]
            connection.execute("BEGIN IMMEDIATE")
            _fold_page(connection, table, rows)
            connection.execute(
                "UPDATE hand_checkpoint SET position = ? WHERE name = ?", (after, table)
            )
            connection.execute("COMMIT")
            count += len(rows)
        seconds = time.perf_counter() - started
    finally:
        connection.close()
    return {"events": count, "seconds": seconds}


def _fold_page(connection: sqlite3.Connection, table: str, rows: list[Any]) -> None:
    keys = list(dict.fromkeys(row[1] for row in rows))
    loaded = connection.execute(
        "SELECT order_id, customer_id, day, status, items, total_cents, lines "
        f"FROM {table} WHERE order_id IN (SELECT value FROM json_each(?))",
        (orjson.dumps(keys).decode(),),
    )
    states: dict[str, dict[str, Any]] = {
        row[0]: {"customer_id": row[1], "day": row[2], "status": row[3], "items": row[4],
                 "total_cents": row[5], "lines": orjson.loads(row[6])}
        for row in loaded
    }  # fmt: skip
    for _, key, type_, data in rows:
        state = states.get(key)
        if state is None:
            state = states[key] = initial_plain()
        fold_plain(state, type_, orjson.loads(data))
    connection.executemany(
        UPSERT.format(t=table),
        [(key, s["customer_id"], s["day"], s["status"], s["items"], s["total_cents"],
          orjson.dumps(s["lines"]).decode()) for key, s in ((k, states[k]) for k in keys)],
    )  # fmt: skip
