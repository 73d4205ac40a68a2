"""A Redis projection built on increments only, so any batch applied twice or lost shows.

``make_ledger(store)`` is used by the target tests and by the crash test's child process.
Per event type: ``P:ledger_totals`` (hash ``TYPE:n`` and ``TYPE:total``, HINCRBY); per
account stream: ``P:ledger_accounts:STREAM`` (hash: ``seen``, ``balance`` by HINCRBY,
``last_version`` by HSET, an absolute value and so replay-safe) and its balance in the sorted
set ``P:ledger_rank`` (ZINCRBY); notes, by a batch handler: ``P:ledger_notes:STREAM``
(``notes`` and ``chars`` by HINCRBY). Only the checkpoint, written in the same EXEC, makes the
increments exactly once.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from projectionist import NewEvent, ReadModelTransaction, RecordedEvent
from projectionist.targets.redis import RedisProjection, RedisReadModelStore, as_redis

SIGNED = {"Deposited": 1, "Withdrawn": -1}
NOTED = "Noted"
IGNORED = "Audited"
TABLES = ("ledger_totals", "ledger_accounts", "ledger_notes", "ledger_rank")

Snapshot = dict[str, Any]


def make_ledger(store: RedisReadModelStore, *, batch_size: int = 200) -> RedisProjection:
    ledger = RedisProjection("ledger", store, tables=TABLES, batch_size=batch_size)

    @ledger.on(*SIGNED)
    async def money(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        redis_tx = as_redis(tx)
        pipe = redis_tx.pipeline
        amount = SIGNED[event.type] * int(event.data["amount"])
        pipe.hincrby(redis_tx.key("ledger_totals"), f"{event.type}:n", 1)
        pipe.hincrby(
            redis_tx.key("ledger_totals"), f"{event.type}:total", int(event.data["amount"])
        )
        account = redis_tx.key("ledger_accounts", event.stream_id)
        pipe.hincrby(account, "seen", 1)
        pipe.hincrby(account, "balance", amount)
        pipe.hset(account, "last_version", event.version)
        pipe.zincrby(redis_tx.key("ledger_rank"), amount, event.stream_id)

    @ledger.on_batch(NOTED)
    async def notes(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        redis_tx = as_redis(tx)
        pipe = redis_tx.pipeline
        for event in events:
            key = redis_tx.key("ledger_notes", event.stream_id)
            pipe.hincrby(key, "notes", 1)
            pipe.hincrby(key, "chars", len(event.data["text"]))
        pipe.hincrby(redis_tx.key("ledger_totals"), f"{NOTED}:n", len(events))
        total = sum(len(event.data["text"]) for event in events)
        pipe.hincrby(redis_tx.key("ledger_totals"), f"{NOTED}:total", total)

    return ledger


class Expected:
    """What the ledger must hold after every event applied exactly once."""

    def __init__(self) -> None:
        self.events = 0
        self.handled = 0
        self.versions: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self.accounts: dict[str, dict[str, int]] = {}
        self.notes: dict[str, dict[str, int]] = {}

    def add(self, stream_id: str, event: NewEvent) -> None:
        self.events += 1
        self.versions[stream_id] += 1
        if event.type == IGNORED:
            return
        self.handled += 1
        if event.type == NOTED:
            size = len(event.data["text"])
            self.totals[f"{NOTED}:n"] += 1
            self.totals[f"{NOTED}:total"] += size
            note = self.notes.setdefault(stream_id, {"notes": 0, "chars": 0})
            note["notes"] += 1
            note["chars"] += size
            return
        amount = event.data["amount"]
        self.totals[f"{event.type}:n"] += 1
        self.totals[f"{event.type}:total"] += amount
        account = self.accounts.setdefault(stream_id, {"seen": 0, "balance": 0})
        account["seen"] += 1
        account["balance"] += SIGNED[event.type] * amount
        account["last_version"] = self.versions[stream_id]

    def snapshot(self) -> Snapshot:
        return {
            "totals": {field: str(value) for field, value in sorted(self.totals.items())},
            "accounts": {
                stream: {field: str(value) for field, value in sorted(values.items())}
                for stream, values in sorted(self.accounts.items())
            },
            "notes": {
                stream: {field: str(value) for field, value in sorted(values.items())}
                for stream, values in sorted(self.notes.items())
            },
            "rank": sorted(
                ((stream, float(values["balance"])) for stream, values in self.accounts.items()),
                key=lambda item: (item[1], item[0]),
            ),
        }


async def read_ledger(client: aioredis.Redis, store: RedisReadModelStore) -> Snapshot:
    """The ledger as stored, in the shape of ``Expected.snapshot()``."""

    async def hashes(table: str) -> dict[str, dict[str, str]]:
        prefix = store.key(table, "")
        found = {}
        async for key in client.scan_iter(match=store.key(table, "*"), count=1000):
            found[key.removeprefix(prefix)] = dict(sorted((await client.hgetall(key)).items()))
        return dict(sorted(found.items()))

    totals = await client.hgetall(store.key("ledger_totals"))
    return {
        "totals": dict(sorted(totals.items())),
        "accounts": await hashes("ledger_accounts"),
        "notes": await hashes("ledger_notes"),
        "rank": await client.zrange(store.key("ledger_rank"), 0, -1, withscores=True),
    }


MIX = {"Deposited": 3, "Withdrawn": 2, NOTED: 4, IGNORED: 1}


def history(
    seed: int, streams: int, appends_per_stream: int, append_size: int
) -> list[tuple[str, list[NewEvent]]]:
    """Appends in order (streams take turns, so they interleave), the same for one seed."""
    rng = random.Random(seed)
    types, weights = list(MIX), list(MIX.values())
    appends = []
    for _ in range(appends_per_stream):
        for stream in range(streams):
            events = []
            for type_ in rng.choices(types, weights, k=append_size):
                if type_ == NOTED:
                    data: dict[str, Any] = {"text": "n" * rng.randrange(1, 40)}
                else:
                    data = {"amount": rng.randrange(1, 10_000)}
                events.append(NewEvent(type_, data))
            appends.append((f"account-{stream:04d}", events))
    return appends


def expected_of(appends: Sequence[tuple[str, list[NewEvent]]]) -> Expected:
    expected = Expected()
    for stream_id, events in appends:
        for event in events:
            expected.add(stream_id, event)
    return expected
