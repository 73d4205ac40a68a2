"""Bulk import: ``store.import_events`` vs a bare binary COPY of the same rows, and SQLite.

Deterministic data: N events (default 200,000) over about 20,000 streams, interleaved as
another system's log would hold them. PostgreSQL: the import (validation, per-batch plan,
stream locks, binary COPY into ``events``, the streams' bookkeeping) against a bare
``copy_records_to_table`` of the same rows (JSON encoded in the timed part too) into a
plain table of the same columns, without keys or indexes: the floor of any import. The
ratio is import events/s over COPY events/s (target >= 0.5x). The imported rows are then
read back in global order and compared with the input, row for row. SQLite: events/s.

Run: ``make bench-import`` or ``python bench/import_events.py --events 200000``.
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
from projectionist.importing import ImportedEvent

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


async def bare_copy(schema: str, events: list[ImportedEvent]) -> float:
    """Seconds for one binary COPY of the rows into a plain table of the same columns."""
    connection = await asyncpg.connect(DSN)
    try:
        await connection.execute(
            f'CREATE TABLE "{schema}".plain (tx_id bigint, id uuid, stream_id text, '
            "version bigint, type text, data jsonb, metadata jsonb, recorded_at timestamptz)"
        )
        started = time.perf_counter()
        records = [
            (1, e.id, e.stream_id, e.version, e.type, orjson.dumps(e.data).decode(),
             orjson.dumps(e.metadata).decode(), e.recorded_at)
            for e in events
        ]  # fmt: skip
        await connection.copy_records_to_table("plain", records=records, schema_name=schema)
        return time.perf_counter() - started
    finally:
        await connection.close()


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


async def postgres(events: list[ImportedEvent], batch_size: int) -> dict[str, object]:
    schema = f"bench_import_{os.getpid()}"
    store = create_store(DSN, schema=schema)
    try:
        async with store:
            await store.apply_schema()
            report = await store.import_events(events, batch_size=batch_size)
        copy_seconds = await bare_copy(schema, events)
        await verify(schema, events)
    finally:
        connection = await asyncpg.connect(DSN)
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()
    imported = round(len(events) / report.seconds)
    copied = round(len(events) / copy_seconds)
    return {
        "scenario": "import_events.postgres",
        "events": len(events),
        "streams": report.streams,
        "batch_size": batch_size,
        "seconds": round(report.seconds, 3),
        "events_per_s": imported,
        "bare_copy_events_per_s": copied,
        "ratio_vs_bare_copy": round(imported / copied, 2),
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


async def main(count: int, streams: int, batch_size: int) -> list[dict[str, object]]:
    events = generate(count, streams)
    return [await postgres(events, batch_size), await sqlite(events, batch_size)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--streams", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    args = parser.parse_args()
    pg, lite = asyncio.run(main(args.events, args.streams, args.batch_size))
    print(
        f"PostgreSQL import: {pg['events_per_s']:,} events/s; bare binary COPY of the same rows: "
        f"{pg['bare_copy_events_per_s']:,} events/s; ratio {pg['ratio_vs_bare_copy']}x "
        f"(target >= 0.5x); rows verified\nSQLite import: {lite['events_per_s']:,} events/s\n"
    )
    for line in (pg, lite):
        print(json.dumps(line))
    sys.stdout.flush()
