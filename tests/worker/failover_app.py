"""The application run by worker processes in test_failover.py (``--url`` sets the store).

Three projections, seven units: ``tally`` (one unit), ``sharded`` (four partitions) and
``audit_trail`` (two partitions). Every handler counts (not idempotent: a double-applied or
lost event changes the counts) and writes one ``ownership`` row per event with the lease
(owner, token) it was applied under, read inside the batch's own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from projectionist import Application, Projection, ReadModelTransaction, RecordedEvent
from projectionist.partitions import partition_of


def counting(name: str, partitions: int) -> Projection:
    projection = Projection(name, tables=[f"{name}_counts"], partitions=partitions, batch_size=50)

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {name}_counts (stream_id TEXT PRIMARY KEY, "
            "events BIGINT NOT NULL, amount BIGINT NOT NULL, last_version BIGINT NOT NULL)"
        )

    @projection.on_batch("Moved")
    async def moved(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        unit = name
        if partitions > 1:
            unit = f"{name}#{partition_of(events[0].stream_id, partitions)}/{partitions}"
        lease = await tx.fetch("SELECT owner, token FROM projection_leases WHERE unit = $1", unit)
        owner, token = lease[0] if lease else (None, 0)
        if owner is not None:  # not when the test rebuilds it without a worker
            await tx.executemany(
                "INSERT INTO ownership VALUES ($1, $2, $3, $4, $5, $6)",
                [(name, unit, e.position.tx, e.position.seq, owner, token) for e in events],
            )
        await tx.executemany(
            f"INSERT INTO {name}_counts VALUES ($1, 1, $2, $3) ON CONFLICT (stream_id) DO "
            f"UPDATE SET events = {name}_counts.events + 1, "
            f"amount = {name}_counts.amount + excluded.amount, "
            "last_version = excluded.last_version",
            [(e.stream_id, e.data["amount"], e.version) for e in events],
        )

    return projection


PROJECTIONS = [counting("tally", 1), counting("sharded", 4), counting("audit_trail", 2)]
app = Application("memory://", PROJECTIONS, poll_interval=0.2)

OWNERSHIP_TABLE = (
    "CREATE TABLE IF NOT EXISTS ownership (projection TEXT NOT NULL, unit TEXT NOT NULL, "
    "tx_id BIGINT NOT NULL, seq BIGINT NOT NULL, owner TEXT NOT NULL, token BIGINT NOT NULL)"
)
