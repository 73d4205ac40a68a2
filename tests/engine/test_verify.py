"""Drift check: verify rebuilds into scratch space and compares row by row."""

from __future__ import annotations

import pytest

from projectionist import Application
from projectionist.errors import ConfigurationError
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
        assert totals.extra == 1 and totals.missing == 1
        assert totals.only_live[0][0] == "account-1"
        seen = by_table["ledger_seen"]
        assert deleted > 0 and seen.extra == 0 and seen.missing == deleted


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
