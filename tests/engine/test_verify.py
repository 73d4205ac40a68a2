"""Drift check: verify rebuilds into scratch space and compares row by row."""

from __future__ import annotations

import pytest
from examples.shop.history import generate_orders
from examples.shop.projections import ALL as SHOP

from projectionist import Application, NewEvent, Projection, ReadModelTransaction, RecordedEvent
from projectionist.errors import ConfigurationError, InvalidInputError
from projectionist.search import SearchProjection
from projectionist.verify import CellDifference
from tests.engine.projections import ledger, money


async def test_verify_finds_nothing_on_a_faithful_read_model(app_url: str) -> None:
    async with Application(app_url, [ledger(batch_size=7, partitions=2)]) as app:
        await app.setup()
        for stream in range(6):
            await app.store.append(f"account-{stream}", money(stream, 12))
        await app.run_until_caught_up()
        await app.store.append("account-late", money(1, 5))  # not yet projected
        result = await app.verify("ledger")
        assert result.ok, result.differences
        assert result.rows["ledger_seen"] > 0 and set(result.rows) == {
            "ledger_seen",
            "ledger_totals",
        }


async def test_verify_reports_manual_edits_and_lost_rows(app_url: str) -> None:
    async with Application(app_url, [ledger()]) as app:
        await app.setup()
        for stream in range(3):
            await app.store.append(f"account-{stream}", money(stream, 10))
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            await tx.execute(
                "UPDATE ledger_totals SET amount = amount + 1000 WHERE stream_id = $1", "account-1"
            )
            deleted = await tx.execute("DELETE FROM ledger_seen WHERE version = 2")
        result = await app.verify("ledger")
        assert not result.ok
        by_table = {d.table: d for d in result.differences}
        totals = by_table["ledger_totals"]
        # The edited row is matched by its primary key: one cell differs, no row is lost.
        assert totals.key_columns == ["stream_id"]
        assert totals.extra == totals.missing == 0 and totals.differing == 1
        [cell] = totals.changed
        assert cell.key == ("account-1",) and cell.column == "amount"
        assert cell.live == cell.rebuilt + 1000
        seen = by_table["ledger_seen"]
        assert deleted > 0 and seen.extra == 0 and seen.missing == deleted
        assert len(seen.only_rebuilt) == min(deleted, 10) and seen.differing == 0


async def test_verify_refuses_inline_projections(app_url: str) -> None:
    async with Application(app_url, [ledger(kind="inline")]) as app:
        await app.setup()
        with pytest.raises(ConfigurationError, match="inline"):
            await app.verify("ledger")


async def test_verify_a_projection_with_a_long_name(app_url: str) -> None:
    name = "l" * 41  # ledger tables add "_totals": 48 characters, the longest allowed
    async with Application(app_url, [ledger(name)]) as app:
        await app.setup()
        await app.store.append("account-1", money(1, 8))
        await app.run_until_caught_up()
        assert (await app.verify(name)).ok


def catalogue() -> SearchProjection:
    books = SearchProjection(
        "books", table="books", text={"title": "A", "blurb": "B"}, stored=["price"]
    )

    @books.upsert("BookAdded")
    def added(event: RecordedEvent) -> dict[str, object]:
        return dict(event.data)

    return books


async def test_verify_a_search_projection(app_url: str) -> None:
    # Its FTS5 table exists on SQLite only: verify compares the tables this database has.
    async with Application(app_url, [catalogue()]) as app:
        await app.setup()
        for n in range(5):
            data = {"title": f"book {n}", "blurb": "chocolate and tea", "price": n}
            await app.store.append(f"b-{n}", [NewEvent("BookAdded", data)])
        await app.run_until_caught_up()
        result = await app.verify("books")
        assert result.ok, result.differences
        assert result.rows["books"] == 5


async def test_the_shop_verifies_exactly(app_url: str) -> None:
    # Money is integer cents: sums are exact, whatever the order or the batches.
    async with Application(app_url, SHOP) as app:
        await app.setup()
        for append in generate_orders(120):
            await app.store.append(append.stream_id, append.events)
        await app.run_until_caught_up()
        for projection in SHOP:
            if projection.kind.value == "async":
                result = await app.verify(projection.name)
                assert result.ok, (projection.name, result.differences)
        async with app.read_models.transaction() as tx:
            money_values = [
                *(row[0] for row in await tx.fetch("SELECT revenue_cents FROM daily_sales")),
                *(row[0] for row in await tx.fetch("SELECT total_cents FROM order_summary")),
                *(row[0] for row in await tx.fetch("SELECT amount_cents FROM sales_lines")),
                *(row[0] for row in await tx.fetch("SELECT price_cents FROM products")),
            ]
        assert money_values and all(type(value) is int for value in money_values)
        assert sum(money_values) > 0


def measured() -> Projection:
    projection = Projection("measured", tables=["readings"])

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS readings (sensor TEXT PRIMARY KEY, "
            "value DOUBLE PRECISION NOT NULL, label TEXT)"
        )

    @projection.on("Read")
    async def read(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        await tx.execute(
            "INSERT INTO readings VALUES ($1, $2, $3) ON CONFLICT (sensor) "
            "DO UPDATE SET value = excluded.value",
            event.stream_id, event.data["value"], "x",
        )  # fmt: skip

    return projection


async def test_verify_with_a_float_tolerance(app_url: str) -> None:
    async with Application(app_url, [measured()]) as app:
        await app.setup()
        for n in range(4):
            await app.store.append(f"s-{n}", [NewEvent("Read", {"value": 1000.0 + n / 3})])
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            await tx.execute("UPDATE readings SET value = value * (1 + 1e-12) WHERE sensor = 's-1'")
        exact = await app.verify("measured")
        [difference] = exact.differences
        [cell] = difference.changed
        assert (cell.key, cell.column) == (("s-1",), "value")
        assert cell.live != cell.rebuilt and abs(cell.live - cell.rebuilt) < 1e-6
        assert (await app.verify("measured", float_tolerance=1e-9)).ok
        async with app.read_models.transaction() as tx:  # beyond the tolerance, and a text
            await tx.execute(
                "UPDATE readings SET value = value + 1, label = 'y' WHERE sensor = 's-2'"
            )
        loose = await app.verify("measured", float_tolerance=1e-9)
        assert loose.differences[0].changed == [
            CellDifference(("s-2",), "value", 1000.0 + 2 / 3 + 1, 1000.0 + 2 / 3),
            CellDifference(("s-2",), "label", "y", "x"),
        ]
        for bad in [float("nan"), float("inf"), -1e-9, 1.0, "0.1", True]:
            with pytest.raises(InvalidInputError, match="float_tolerance"):
                await app.verify("measured", float_tolerance=bad)  # type: ignore[arg-type]


async def test_verify_reports_its_progress(app_url: str) -> None:
    async with Application(app_url, [ledger(batch_size=5, partitions=2)]) as app:
        await app.setup()
        for stream in range(4):
            await app.store.append(f"account-{stream}", money(stream, 10))
        await app.run_until_caught_up()
        reports: list[tuple[int, int]] = []
        assert (await app.verify("ledger", progress=lambda *r: reports.append(r))).ok
        assert len(reports) > 2 and reports[-1][0] == reports[-1][1] > 0
        done = [d for d, _ in reports]
        assert done == sorted(done) and all(d <= t for d, t in reports)
