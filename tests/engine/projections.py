"""Small projections for engine tests, written to expose double or missed deliveries."""

from __future__ import annotations

from collections.abc import Sequence

from projectionist import NewEvent, Projection, ReadModelTransaction, RecordedEvent


def ledger(
    name: str = "ledger", *, kind: str = "async", batch_size: int = 1000, partitions: int = 1
) -> Projection:
    """Every handled event once: a PRIMARY KEY on the event id makes a double delivery fail,
    and a per-stream counter that is incremented (not idempotent) makes it visible."""
    projection = Projection(
        name,
        kind=kind,
        tables=[f"{name}_seen", f"{name}_totals"],
        batch_size=batch_size,
        partitions=partitions,
    )

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {name}_seen (event_id TEXT PRIMARY KEY, "
            "stream_id TEXT NOT NULL, version BIGINT NOT NULL, amount BIGINT NOT NULL)"
        )
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {name}_totals (stream_id TEXT PRIMARY KEY, "
            "events BIGINT NOT NULL, amount BIGINT NOT NULL)"
        )

    @projection.on("Deposited", "Withdrawn")
    async def record(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        amount = event.data["amount"] * (1 if event.type == "Deposited" else -1)
        await tx.execute(
            f"INSERT INTO {name}_seen VALUES ($1, $2, $3, $4)",
            str(event.id), event.stream_id, event.version, amount,
        )  # fmt: skip
        await tx.execute(
            f"INSERT INTO {name}_totals VALUES ($1, 1, $2) ON CONFLICT (stream_id) DO UPDATE "
            f"SET events = {name}_totals.events + 1, amount = {name}_totals.amount + $2",
            event.stream_id, amount,
        )  # fmt: skip

    @projection.on_batch("Audited")
    async def audited(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        await tx.executemany(
            f"INSERT INTO {name}_seen VALUES ($1, $2, $3, 0)",
            [(str(e.id), e.stream_id, e.version) for e in events],
        )

    return projection


def money(stream: int, n: int) -> list[NewEvent]:
    kinds = ["Deposited", "Deposited", "Withdrawn", "Audited", "Ignored"]
    return [NewEvent(kinds[(stream + i) % 5], {"amount": i + 1}) for i in range(n)]


async def ledger_rows(tx: ReadModelTransaction, name: str = "ledger") -> list[object]:
    seen = await tx.fetch(f"SELECT * FROM {name}_seen ORDER BY event_id")
    totals = await tx.fetch(f"SELECT * FROM {name}_totals ORDER BY stream_id")
    return [seen, totals]
