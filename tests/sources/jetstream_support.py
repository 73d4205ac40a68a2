"""NATS for the JetStream source tests: the real server, a stream of its own per test, and the
ledger projection (PostgreSQL) that the tests and the SIGKILL child share.

NATS comes from PROJECTIONIST_TEST_NATS_URL (default nats://127.0.0.1:4222) and must run
with JetStream. When it cannot be reached, the tests fail saying how to start it; they never
skip. Every test makes a stream with a random name and deletes it at the end.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import nats
import nats.errors
import orjson
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from projectionist import Projection, ReadModelTransaction, RecordedEvent

NATS_URL = os.environ.get("PROJECTIONIST_TEST_NATS_URL", "nats://127.0.0.1:4222")
NATS_START_HINT = (
    "NATS with JetStream is not reachable at {url} ({error}). Start it with 'nats-server -js "
    "-a 127.0.0.1 -p 4222 -sd /tmp/projectionist-nats' (or 'make services'), or point "
    "PROJECTIONIST_TEST_NATS_URL at a server."
)
SIGNED = {"Deposited": 1, "Withdrawn": -1}
SUBJECT_OF = {"Deposited": "deposits", "Withdrawn": "withdrawals"}


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback: failures reach the test as exceptions."""


async def connect_nats() -> Client:
    try:
        client = await nats.connect(
            NATS_URL, connect_timeout=5, max_reconnect_attempts=1, error_cb=_quiet
        )
        await client.jetstream().account_info()
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        pytest.fail(NATS_START_HINT.format(url=NATS_URL, error=exc or type(exc)), pytrace=False)
    return client


async def require_nats() -> None:
    """Fail, saying how to start it, unless NATS with JetStream answers."""
    client = await connect_nats()
    await client.close()


@dataclass
class Ledger:
    """What was published (stored, not deduplicated away): seq -> (stream id, signed amount)."""

    applied: dict[int, tuple[str, int]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0

    def balances(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for stream_id, amount in self.applied.values():
            totals[stream_id] = totals.get(stream_id, 0) + amount
        return totals


@dataclass
class NatsStream:
    """A fresh JetStream stream NAME over subjects NAME.>, and a client to publish with."""

    name: str
    client: Client
    js: JetStreamContext
    ledger: Ledger = field(default_factory=Ledger)

    async def publish_money(self, rng: random.Random, count: int, streams: int = 10) -> None:
        """``count`` Deposited/Withdrawn messages on two subjects with the mapping headers;
        every fifth is published a second time with the same Nats-Msg-Id (the server drops
        it as a duplicate)."""
        for _ in range(count):
            stream_id = f"acct-{rng.randrange(streams)}"
            type_ = rng.choice(list(SIGNED))
            amount = rng.randint(1, 100)
            version = self.ledger.versions.get(stream_id, 0) + 1
            headers = {
                "Projectionist-Stream": stream_id,
                "Projectionist-Type": type_,
                "Projectionist-Version": str(version),
                "Nats-Msg-Id": str(uuid.uuid4()),
            }
            subject = f"{self.name}.{SUBJECT_OF[type_]}.{stream_id}"
            data = orjson.dumps({"amount": amount})
            for _ in range(2 if rng.random() < 0.2 else 1):
                ack = await self.js.publish(subject, data, headers=headers)
                if ack.duplicate:
                    self.ledger.duplicates += 1
                else:
                    self.ledger.applied[ack.seq] = (stream_id, SIGNED[type_] * amount)
            self.ledger.versions[stream_id] = version


def new_stream_name() -> str:
    return f"TEST_{uuid.uuid4().hex[:12]}"


@dataclass
class StreamMaker:
    client: Client
    made: list[str] = field(default_factory=list)

    async def __call__(self, **config: object) -> NatsStream:
        name = new_stream_name()
        stream_config = StreamConfig(name=name, subjects=[f"{name}.>"], **config)  # type: ignore[arg-type]
        await self.client.jetstream().add_stream(stream_config)
        self.made.append(name)
        return NatsStream(name, self.client, self.client.jetstream())


@pytest.fixture
async def make_jet_stream() -> AsyncIterator[StreamMaker]:
    """Makes fresh streams (``await make_jet_stream(max_msgs=10)``); deletes them after."""
    client = await connect_nats()
    maker = StreamMaker(client)
    yield maker
    for name in maker.made:
        await client.jetstream().delete_stream(name)
    await client.close()


@pytest.fixture
async def jet_stream(make_jet_stream: StreamMaker) -> NatsStream:
    return await make_jet_stream()


def ledger_projection(batch_size: int = 50, partitions: int = 1) -> Projection:
    """Per message: a row per stream sequence counting its applications (each must be 1),
    and a balance per account. Increments only: a message applied twice shows."""
    ledger = Projection(
        "jet_ledger",
        tables=["jet_applied", "jet_balances"],
        batch_size=batch_size,
        partitions=partitions,
    )

    @ledger.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS jet_applied (seq BIGINT PRIMARY KEY, "
            "stream TEXT NOT NULL, n BIGINT NOT NULL)"
        )
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS jet_balances (stream TEXT PRIMARY KEY, "
            "balance BIGINT NOT NULL)"
        )

    @ledger.on(*SIGNED)
    async def apply(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        await tx.execute(
            "INSERT INTO jet_applied VALUES ($1, $2, 1) ON CONFLICT (seq) "
            "DO UPDATE SET n = jet_applied.n + 1",
            *(event.position.seq, event.stream_id),
        )
        await tx.execute(
            "INSERT INTO jet_balances VALUES ($1, $2) ON CONFLICT (stream) "
            "DO UPDATE SET balance = jet_balances.balance + excluded.balance",
            *(event.stream_id, SIGNED[event.type] * int(event.data["amount"])),
        )

    return ledger


async def read_ledger(tx: ReadModelTransaction) -> tuple[dict[int, int], dict[str, int]]:
    """{seq: times applied}, {account: balance}."""
    applied = {row[0]: row[1] for row in await tx.fetch("SELECT seq, n FROM jet_applied")}
    balances = {row[0]: row[1] for row in await tx.fetch("SELECT * FROM jet_balances")}
    return applied, balances


def expected_of(ledger: Ledger) -> tuple[dict[int, int], dict[str, int]]:
    return dict.fromkeys(ledger.applied, 1), ledger.balances()


def chunks(total: int, size: int) -> Iterator[int]:
    while total > 0:
        yield min(size, total)
        total -= size
