"""Blue/green: raising a projection's version rebuilds it beside the old one, then swaps.

A reader queries the read model the whole time, while the old version's worker keeps
processing new events and the new version's worker builds and swaps in: every read sees a
complete read model (all accounts, every event of the history), never an empty or half-built
one; after the swap the new version's column appears and its counts equal a clean fold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from projectionist import Application, NewEvent, Projection, ReadModelTransaction, RecordedEvent
from projectionist.bluegreen import BUILD_PREFIX, RETIRED_PREFIX, side_schema
from projectionist.identifiers import validate_identifier
from tests.conftest import PG_DSN

ACCOUNTS = 40
HISTORY = 4000


def balances(version: int) -> Projection:
    projection = Projection("balances", version=version, tables=["balances"], batch_size=100)
    extra = ", doubled BIGINT NOT NULL" if version > 1 else ""

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, "
            f"events BIGINT NOT NULL, amount BIGINT NOT NULL{extra})"
        )
        await tx.execute("CREATE INDEX IF NOT EXISTS balances_amount ON balances (amount)")

    @projection.on_batch("Moved")
    async def moved(events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        for event in events:
            amount = event.data["amount"]
            if version == 1:
                await tx.execute(
                    "INSERT INTO balances VALUES ($1, 1, $2) ON CONFLICT (account) DO UPDATE "
                    "SET events = balances.events + 1, amount = balances.amount + $2",
                    event.stream_id,
                    amount,
                )
            else:
                await tx.execute(
                    "INSERT INTO balances VALUES ($1, 1, $2, $3) ON CONFLICT (account) DO "
                    "UPDATE SET events = balances.events + 1, amount = balances.amount + $2, "
                    "doubled = balances.doubled + $3",
                    event.stream_id,
                    amount,
                    2 * amount,
                )

    return projection


async def test_blue_green_swap_is_atomic_for_readers(pg_schema: str) -> None:
    url = f"{PG_DSN}?schema={pg_schema}"
    options = {"lease_seconds": 2.0, "heartbeat_seconds": 0.25, "retire_after_seconds": 1.0}
    old = Application(url, [balances(1)], poll_interval=0.05)
    new = Application(url, [balances(2)], poll_interval=0.05)
    async with old, new:
        await old.setup()
        for n in range(HISTORY // 4):
            await old.store.append(
                f"account-{n % ACCOUNTS}",
                [NewEvent("Moved", {"amount": (n + i) % 5 + 1}) for i in range(4)],
            )
        await old.run_until_caught_up()
        old_worker = asyncio.create_task(old.run(**options))

        reader = await asyncpg.connect(PG_DSN, server_settings={"search_path": pg_schema})
        reads: list[tuple[int, int, bool]] = []
        stop = asyncio.Event()

        async def read_forever() -> None:
            while not stop.is_set():
                rows = await reader.fetch("SELECT * FROM balances")
                total = sum(row["events"] for row in rows)
                reads.append((len(rows), total, bool(rows) and "doubled" in rows[0]))
                await asyncio.sleep(0.002)

        async def append_forever() -> int:
            appended = 0
            while not stop.is_set():
                await new.store.append(f"account-{appended % ACCOUNTS}", [moved(appended)])
                appended += 1
                await asyncio.sleep(0.005)
            return appended

        reading = asyncio.create_task(read_forever())
        appending = asyncio.create_task(append_forever())
        await asyncio.sleep(0.3)
        await new.setup()  # what `projectionist run` does first: the raised version is fine
        new_worker = asyncio.create_task(new.run(**options))
        saw_both = False
        for _ in range(300):
            statuses = await new.status()
            states = {s.state for s in statuses}
            if any("building" in s or "rebuilding" in s for s in states):
                saw_both = saw_both or len(statuses) == 2
            if reads and reads[-1][2]:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # reads go on after the swap
        stop.set()
        appended = await appending
        await reading
        await reader.close()

        assert any(doubled for _, _, doubled in reads), "the new version was never swapped in"
        assert saw_both, "status never showed the old and the new version together"
        # Never an empty or half-built read model: all accounts, all of the history.
        assert all(rows == ACCOUNTS and total >= HISTORY for rows, total, _ in reads)
        swapped = next(i for i, (_, _, doubled) in enumerate(reads) if doubled)
        assert all(doubled for _, _, doubled in reads[swapped:])  # no flip-flop
        # Before the swap the old version went on following new events.
        assert max(total for _, total, _ in reads[:swapped]) > HISTORY

        head = await new.store.last_committed()
        await new.wait_for("balances", head, timeout=30)
        async with new.read_models.transaction() as tx:
            rows = await tx.fetch("SELECT sum(events), sum(amount), sum(doubled) FROM balances")
        history_amount = sum((n + i) % 5 + 1 for n in range(HISTORY // 4) for i in range(4))
        live_amount = sum(moved(n).data["amount"] for n in range(appended))
        assert rows[0] == (HISTORY + appended, history_amount + live_amount,
                           2 * (history_amount + live_amount))  # fmt: skip
        # The old worker stopped applying (its version was superseded), the retired tables
        # are dropped after their grace period.
        # This application's retired schema only: other test runs may share the database.
        sides = new.read_models.side_schemas()
        assert sides is not None
        ours = side_schema(RETIRED_PREFIX, sides.base, "balances", 1)
        for _ in range(60):
            async with new.read_models.transaction() as tx:
                retired = await tx.fetchval(
                    "SELECT count(*) FROM pg_namespace WHERE nspname = $1", ours
                )
            if retired == 0:
                break
            await asyncio.sleep(0.1)
        assert retired == 0
        for _ in range(50):  # the new version's own unit runs under the new worker
            [status] = await new.status()
            if status.state in {"live", "catching up"}:
                break
            await asyncio.sleep(0.1)
        assert status.version == 2 and status.state in {"live", "catching up"}, status
        new.stop()
        old.stop()
        await asyncio.gather(new_worker, old_worker)


def moved(n: int) -> NewEvent:
    return NewEvent("Moved", {"amount": n % 3 + 1})


def test_side_schemas_are_per_base_schema_and_short() -> None:
    long_name = "a" * 48
    names = {
        side_schema(prefix, base, name, 12345)
        for prefix in (BUILD_PREFIX, RETIRED_PREFIX)
        for base in ('"app_one"', '"app_two"')
        for name in ("balances", long_name)
    }
    assert len(names) == 8  # no two applications or projections share one
    assert all(len(name) <= 48 and validate_identifier(name) for name in names)
