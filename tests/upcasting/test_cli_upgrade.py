"""``projectionist events upgrade`` as a real process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from projectionist import Application, create_store
from projectionist.events import START
from tests.test_cli import ROOT, run_cli
from tests.upcasting.cli_app import app as defined
from tests.upcasting.domain import expected_orders
from tests.upcasting.test_chain import ORDERS, PER_SHAPE, rows, shapes, write_history

APP = "tests.upcasting.cli_app:app"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_events_upgrade_command(app_url: str) -> None:
    store = create_store(app_url)
    async with store:
        await store.apply_schema()
        await write_history(store)
        before = (await store.read_all(START)).events
        app = Application(store, list(defined.projections.values()), upcasters=store.upcasters)
        async with app:
            await app.setup()
            await app.run_until_caught_up()
            env = {"PROJECTIONIST_APP": APP, "UPCAST_URL": app_url}
            done = run_cli(
                "events", "upgrade", "--yes", "--json", "--batch-size", "7", env=env, cwd=ROOT
            )
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout)
            assert report["upgraded"] == report["scanned"] == 2 * PER_SHAPE
            assert report["batches"] == 3  # 20 old events, 7 at a time
            after = (await store.read_all(START)).events
            assert shapes(after) == [("OrderPlaced", 3)] * ORDERS
            assert [(e.id, e.position, e.version) for e in after] == [
                (e.id, e.position, e.version) for e in before
            ]
            assert await rows(app, "order_rows") == expected_orders(ORDERS)
            assert (await app.verify("order_rows")).ok
            again = run_cli("events", "upgrade", "--yes", env=env, cwd=ROOT)
            assert again.returncode == 0, again.stderr
            assert "upgraded 0 of 0 events scanned" in again.stdout
            bad = run_cli("events", "upgrade", "--yes", "--batch-size", "0", env=env, cwd=ROOT)
            assert bad.returncode == 1 and "batch size must be an integer" in bad.stderr
