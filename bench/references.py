"""Hand-written yardsticks on PostgreSQL: what a careful engineer writes without the library.

Each reads the store's ``events`` table directly with a bare keyset query (the data set is
loaded before the run, so no horizon is needed: nothing commits while they read), and each
builds its own copy of a read model that the driver compares row for row with the state
projection's. None of them is gap-safe on a live store; they are the speed to beat.

- ``hand_written_coalesced``: per page of 10k events, one SELECT of the touched keys, the
  fold in Python (``fold_plain``, the state projection's evolve logic), binary COPY into a
  temporary table and one upsert, the checkpoint in the same transaction.
- ``bare_read``: the store's event columns in keyset pages of 10k, rows only.
- ``hand_batched_sql``: the handler projection's per-event statements, 1,000 events per
  transaction, each statement executed on its own (issue 14's "same SQL batched by hand per
  transaction"); with ``grouped=True`` (``hand_grouped_sql``) consecutive identical
  statements go as one ``executemany``, what ``tx.queue`` does for the library's handlers.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import asyncpg
import orjson

from bench.orders_model import (
    ORDER_TYPES,
    SETUP,
    PlainEvent,
    fold_plain,
    initial_plain,
    statement_for,
)

Result = dict[str, Any]
PAGE = 10_000
KEYSET = (
    "SELECT tx_id, position, stream_id, type, data FROM events "
    "WHERE (tx_id, position) > ($1, $2) AND type = ANY($3::text[]) "
    "ORDER BY tx_id, position LIMIT $4"
)
HAND_TABLE = (
    "CREATE TABLE {t} (order_id TEXT PRIMARY KEY, customer_id TEXT, day TEXT, status TEXT, "
    "items BIGINT, total_cents BIGINT, lines JSONB)"
)
HAND_UPSERT = (
    "INSERT INTO {t} SELECT * FROM hand_stage ON CONFLICT (order_id) DO UPDATE SET "
    "customer_id = excluded.customer_id, day = excluded.day, status = excluded.status, "
    "items = excluded.items, total_cents = excluded.total_cents, lines = excluded.lines"
)
CHECKPOINT = "UPDATE hand_checkpoint SET tx_id = $2, position = $3 WHERE name = $1"


async def _connect(dsn: str, schema: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={"search_path": schema})


async def _checkpoint_table(connection: asyncpg.Connection, name: str) -> None:
    await connection.execute(
        "CREATE TABLE IF NOT EXISTS hand_checkpoint "
        "(name TEXT PRIMARY KEY, tx_id BIGINT NOT NULL, position BIGINT NOT NULL)"
    )
    await connection.execute("INSERT INTO hand_checkpoint VALUES ($1, 0, 0)", name)


# -- the hand-written coalesced projector ------------------------------------------------------


async def hand_written_coalesced(dsn: str, schema: str, table: str) -> Result:
    connection = await _connect(dsn, schema)
    try:
        await connection.execute(HAND_TABLE.format(t=table))
        await _checkpoint_table(connection, table)
        await connection.execute(
            f"CREATE TEMPORARY TABLE hand_stage (LIKE {table}) ON COMMIT DELETE ROWS"
        )
        started = time.perf_counter()
        count, after = 0, (0, 0)
        while rows := await connection.fetch(KEYSET, *after, ORDER_TYPES, PAGE):
            after = (rows[-1][0], rows[-1][1])
            async with connection.transaction():
                await _fold_page(connection, table, rows)
                await connection.execute(CHECKPOINT, table, *after)
            count += len(rows)
        seconds = time.perf_counter() - started
    finally:
        await connection.close()
    return {"events": count, "seconds": seconds}


async def _fold_page(connection: asyncpg.Connection, table: str, rows: list[Any]) -> None:
    keys = list(dict.fromkeys(row[2] for row in rows))
    states: dict[str, dict[str, Any]] = {
        row[0]: {"customer_id": row[1], "day": row[2], "status": row[3], "items": row[4],
                 "total_cents": row[5], "lines": orjson.loads(row[6])}
        for row in await connection.fetch(
            "SELECT order_id, customer_id, day, status, items, total_cents, lines "
            f"FROM {table} WHERE order_id = ANY($1::text[])", keys)
    }  # fmt: skip
    for _, _, key, type_, data in rows:
        state = states.get(key)
        if state is None:
            state = states[key] = initial_plain()
        fold_plain(state, type_, orjson.loads(data))
    records = [
        (key, s["customer_id"], s["day"], s["status"], s["items"], s["total_cents"],
         orjson.dumps(s["lines"]).decode())
        for key, s in ((key, states[key]) for key in keys)
    ]  # fmt: skip
    await connection.copy_records_to_table("hand_stage", records=records)
    await connection.execute(HAND_UPSERT.format(t=table))


# -- bare reads --------------------------------------------------------------------------------

BARE_ALL = (
    "SELECT position, tx_id, id, stream_id, version, type, data, metadata, recorded_at "
    "FROM events WHERE (tx_id, position) > ($1, $2) ORDER BY tx_id, position LIMIT $3"
)
BARE_TYPE = (
    "SELECT position, tx_id, id, stream_id, version, type, data, metadata, recorded_at "
    "FROM events WHERE (tx_id, position) > ($1, $2) AND type = $4 "
    "ORDER BY tx_id, position LIMIT $3"
)


async def bare_read(connection: asyncpg.Connection, type_: str | None = None) -> Result:
    """Every event (or every event of ``type_``) in keyset pages of 10k: the rows, as asyncpg
    returns them; the count and the last position, so the driver can check they match."""
    started = time.perf_counter()
    count, after = 0, (0, 0)
    sql, extra = (BARE_ALL, []) if type_ is None else (BARE_TYPE, [type_])
    while rows := await connection.fetch(sql, *after, PAGE, *extra):
        after = (rows[-1][1], rows[-1][0])
        count += len(rows)
    return {"events": count, "seconds": time.perf_counter() - started, "last": list(after)}


# -- the handler's SQL, batched by hand --------------------------------------------------------


async def hand_batched_sql(
    dsn: str, schema: str, table: str, batch: int = 1000, *, grouped: bool = False
) -> Result:
    connection = await _connect(dsn, schema)
    try:
        for sql in SETUP:
            await connection.execute(sql.format(t=table))
        await _checkpoint_table(connection, table)
        started = time.perf_counter()
        count, after = 0, (0, 0)
        while rows := await connection.fetch(KEYSET, *after, ORDER_TYPES, batch):
            after = (rows[-1][0], rows[-1][1])
            statements = [
                (sql.format(t=table), args)
                for row in rows
                for sql, args in statement_for(PlainEvent(row[2], row[3], orjson.loads(row[4])),
                                               table)
            ]  # fmt: skip
            async with connection.transaction():
                if grouped:
                    for sql, group in itertools.groupby(statements, key=lambda s: s[0]):
                        await connection.executemany(sql, [args for _, args in group])
                else:
                    for sql, args in statements:
                        await connection.execute(sql, *args)
                await connection.execute(CHECKPOINT, table, *after)
            count += len(rows)
        seconds = time.perf_counter() - started
    finally:
        await connection.close()
    return {"events": count, "seconds": seconds}
