"""Bulk import: ``store.import_events`` vs a binary COPY of the same rows, and SQLite.

Deterministic data: N events (default 200,000) over about 20,000 streams, interleaved as
another system's log would hold them. PostgreSQL: the import (validation, per-batch plan,
stream locks, binary COPY into ``events``, the streams' bookkeeping) against two references,
each one ``copy_records_to_table`` of the same rows (JSON encoded in the timed part too):

- the fair one, "COPY of the same rows" (issue 13, target >= 0.5x): straight into the
  ``events`` table of a store of its own (our schema, ``apply_schema()``, so the same columns,
  keys and indexes), without validation or streams bookkeeping: what a hand loader does;
- the bare one: into a plain table of the same columns without keys or indexes, the floor
  of any import into any table.

Each ratio is import events/s over COPY events/s. The imported rows are then read back in
global order and compared with the input, row for row. SQLite: events/s.

Run: ``make bench-import`` or ``python bench/import_events.py --events 200000``
(``--batch-size``, ``--streams``, ``--repeat`` runs it again and keeps each figure's best,
``--no-sqlite``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson

from projectionist import create_store
from projectionist.importing import DEFAULT_IMPORT_BATCH_SIZE, ImportedEvent

DSN = os.environ.get("PROJECTIONIST_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = datetime(2020, 1, 1, tzinfo=UTC)


def generate(count: int, streams: int, seed: int = 13) -> list[ImportedEvent]:
    """The same events for the same arguments: streams drawn at random, versions 1..n."""
    rng = random.Random(seed)
    versions: dict[str, int] = {}
    made = []
    for n in range(count):
        stream = f"account-{rng.randrange(streams)}"
        versions[stream] = versions.get(stream, 0) + 1
        made.append(
            ImportedEvent(
                stream,
                versions[stream],
                rng.choice(("Deposited", "Withdrawn", "Renamed")),
                {"amount": rng.randrange(1, 10_000), "note": f"n{n}", "tags": ["a", "b"]},
                {"source": "bench", "seq": n},
                uuid.UUID(int=rng.getrandbits(128), version=4),
                T0 + timedelta(milliseconds=n),
            )
        )
    return made


COLUMNS = ("tx_id", "id", "stream_id", "version", "type", "data", "metadata", "recorded_at")


async def timed_copy(schema: str, table: str, events: list[ImportedEvent]) -> float:
    """Seconds to encode the rows and COPY them (binary, one statement) into ``table``."""
    connection = await asyncpg.connect(DSN)
    try:
        started = time.perf_counter()
        records = [
            (1, e.id, e.stream_id, e.version, e.type, orjson.dumps(e.data).decode(),
             orjson.dumps(e.metadata).decode(), e.recorded_at)
            for e in events
        ]  # fmt: skip
        await connection.copy_records_to_table(
            table, records=records, columns=COLUMNS, schema_name=schema
        )
        return time.perf_counter() - started
    finally:
        await connection.close()


async def fair_copy(schema: str, events: list[ImportedEvent]) -> float:
    """Seconds for a hand loader's COPY into the events table of a store of its own."""
    async with create_store(DSN, schema=schema) as store:
        await store.apply_schema()
    return await timed_copy(schema, "events", events)


async def bare_copy(schema: str, events: list[ImportedEvent]) -> float:
    """Seconds for one binary COPY of the rows into a plain table of the same columns."""
    connection = await asyncpg.connect(DSN)
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        await connection.execute(
            f'CREATE TABLE "{schema}".plain (tx_id bigint, id uuid, stream_id text, '
            "version bigint, type text, data jsonb, metadata jsonb, recorded_at timestamptz)"
        )
    finally:
        await connection.close()
    return await timed_copy(schema, "plain", events)


async def verify(schema: str, events: list[ImportedEvent]) -> None:
    """The stored rows in global order equal the input, row for row."""
    connection = await asyncpg.connect(DSN)
    try:
        rows = await connection.fetch(
            f"SELECT id, stream_id, version, type, data::text, metadata::text, recorded_at "
            f'FROM "{schema}".events ORDER BY tx_id, position'
        )
    finally:
        await connection.close()
    assert len(rows) == len(events), (len(rows), len(events))
    for row, e in zip(rows, events, strict=True):
        expected = (e.id, e.stream_id, e.version, e.type, e.data, e.metadata, e.recorded_at)
        got = (*tuple(row)[:4], orjson.loads(row[4]), orjson.loads(row[5]), row[6])
        assert got == expected, (got, expected)


async def drop(*schemas: str) -> None:
    connection = await asyncpg.connect(DSN)
    try:
        for schema in schemas:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


async def postgres_once(events: list[ImportedEvent], batch_size: int) -> tuple[float, ...]:
    """Seconds of the import, the fair COPY and the bare COPY, each into a schema of its own."""
    schema = f"bench_import_{os.getpid()}"
    fair, bare = f"{schema}_fair", f"{schema}_bare"
    try:
        async with create_store(DSN, schema=schema) as store:
            await store.apply_schema()
            report = await store.import_events(events, batch_size=batch_size)
        await verify(schema, events)
        return report.seconds, await fair_copy(fair, events), await bare_copy(bare, events)
    finally:
        await drop(schema, fair, bare)


async def postgres(events: list[ImportedEvent], batch_size: int, repeat: int) -> dict[str, object]:
    runs = [await postgres_once(events, batch_size) for _ in range(repeat)]
    imported, fair, bare = (round(len(events) / min(column)) for column in zip(*runs, strict=True))
    return {
        "scenario": "import_events.postgres",
        "events": len(events),
        "streams": len({e.stream_id for e in events}),
        "batch_size": batch_size,
        "runs": repeat,
        "seconds": round(min(run[0] for run in runs), 3),
        "events_per_s": imported,
        "copy_events_per_s": fair,
        "ratio_vs_copy": round(imported / fair, 2),
        "bare_copy_events_per_s": bare,
        "ratio_vs_bare_copy": round(imported / bare, 2),
        "verified": True,
    }


async def sqlite(events: list[ImportedEvent], batch_size: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as directory:
        async with create_store(f"sqlite:///{Path(directory) / 'bench.db'}") as store:
            await store.apply_schema()
            report = await store.import_events(events, batch_size=batch_size)
            assert (await store.count_after(await store.head())) == 0
    return {
        "scenario": "import_events.sqlite",
        "events": len(events),
        "streams": report.streams,
        "batch_size": batch_size,
        "seconds": round(report.seconds, 3),
        "events_per_s": round(report.events_per_second),
    }


async def main(args: argparse.Namespace) -> list[dict[str, object]]:
    events = generate(args.events, args.streams)
    results = [await postgres(events, args.batch_size, args.repeat)]
    if not args.no_sqlite:
        results.append(await sqlite(events, args.batch_size))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--streams", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_IMPORT_BATCH_SIZE)
    parser.add_argument("--repeat", type=int, default=1, help="runs; each figure's best is kept")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()
    results = asyncio.run(main(args))
    pg = results[0]
    print(
        f"PostgreSQL import: {pg['events_per_s']:,} events/s; COPY of the same rows into an "
        f"events table of our schema: {pg['copy_events_per_s']:,} events/s, ratio "
        f"{pg['ratio_vs_copy']}x (target >= 0.5x); bare COPY into a table without keys or "
        f"indexes: {pg['bare_copy_events_per_s']:,} events/s, ratio {pg['ratio_vs_bare_copy']}x; "
        "rows verified"
    )
    for line in results[1:]:
        print(f"SQLite import: {line['events_per_s']:,} events/s")
    print()
    for line in results:
        print(json.dumps(line))
    sys.stdout.flush()
