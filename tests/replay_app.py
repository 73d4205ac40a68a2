"""Projections for the partial-replay tests, and the application the CLI test runs
(``--url`` sets its store).

``balances`` is replay-safe: each ``BalanceSet`` event sets an account's balance and version
to absolute values (an upsert), so applying events again over the current rows changes
nothing. It also notes, in a table of its own that the tests do not compare, every position
it applied with ``tx.replaying`` set. ``counter`` counts events per account by incrementing:
applying an event again counts it twice, so it is not replay-safe (``claims`` makes it say so
anyway, for the kit to catch).
"""

from __future__ import annotations

from projectionist import Application, NewEvent, Projection, ReadModelTransaction, RecordedEvent


def balances(
    name: str = "balances", *, partitions: int = 1, replay_safe: bool = True, batch_size: int = 7
) -> Projection:
    projection = Projection(
        name,
        tables=[name, f"{name}_replayed"],
        partitions=partitions,
        replay_safe=replay_safe,
        batch_size=batch_size,
    )

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {name} (account TEXT PRIMARY KEY, "
            "balance BIGINT NOT NULL, version BIGINT NOT NULL)"
        )
        await tx.execute(f"CREATE TABLE IF NOT EXISTS {name}_replayed (position TEXT PRIMARY KEY)")

    @projection.on("BalanceSet")
    async def balance_set(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        await tx.execute(
            f"INSERT INTO {name} VALUES ($1, $2, $3) ON CONFLICT (account) DO UPDATE "
            "SET balance = excluded.balance, version = excluded.version",
            event.stream_id, event.data["balance"], event.version,
        )  # fmt: skip
        if tx.replaying:
            await tx.execute(
                f"INSERT INTO {name}_replayed VALUES ($1) ON CONFLICT DO NOTHING",
                str(event.position),
            )

    return projection


def counter(name: str = "counter", *, claims: bool = False) -> Projection:
    projection = Projection(name, tables=[name], replay_safe=claims, batch_size=7)

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {name} (account TEXT PRIMARY KEY, events BIGINT NOT NULL)"
        )

    @projection.on("BalanceSet")
    async def counted(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        await tx.execute(
            f"INSERT INTO {name} VALUES ($1, 1) ON CONFLICT (account) DO UPDATE "
            f"SET events = {name}.events + 1",
            event.stream_id,
        )

    return projection


def balance_events(round_: int, account: int) -> list[NewEvent]:
    """One append: the account's balance for this round, and an event no projection handles."""
    return [
        NewEvent("BalanceSet", {"balance": 100 * round_ + account}),
        NewEvent("Noted", {"round": round_}),
    ]


async def rows(tx: ReadModelTransaction, name: str = "balances") -> list[tuple[object, ...]]:
    return await tx.fetch(f"SELECT account, balance, version FROM {name} ORDER BY account")


async def replayed(tx: ReadModelTransaction, name: str = "balances") -> set[str]:
    return {row[0] for row in await tx.fetch(f"SELECT position FROM {name}_replayed")}


PROJECTIONS = [balances(), counter()]
app = Application("memory://", PROJECTIONS, poll_interval=0.2)
