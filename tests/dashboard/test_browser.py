"""The dashboard in a real headless Chromium: numbers change live, nothing leaves the host.

Chromium is Debian's (/usr/bin/chromium, installed by `make browser`, a prerequisite of
`make test`); Playwright drives it through its own driver, no browser download.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from examples.shop.history import generate_orders
from examples.shop.projections import ALL
from playwright.async_api import Locator, Page, async_playwright, expect

from projectionist import Application
from tests.cli_operations_app import PROJECTIONS

from .conftest import (
    ARTIFACTS,
    FAULTY_APP,
    TAKER,
    append_all,
    dashboard_process,
    faulted_and_taken_over,
)

CHROMIUM = Path("/usr/bin/chromium")


def cell(page: Page, key: str, field: str) -> Locator:
    """A row's cell, or a named part of one (the partition, the lag in seconds)."""
    return page.locator(f'tr[data-key="{key}"] [data-field="{field}"]')


async def fits_the_window(page: Page) -> None:
    """Nothing scrolls sideways: the table fits the window."""
    widths = await page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth,"
        " document.querySelector('main').scrollWidth, document.querySelector('main').clientWidth]"
    )
    assert widths[0] <= widths[1] and widths[2] <= widths[3], widths


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run 'make browser' (apt-get install chromium)")
    return CHROMIUM


async def test_the_page_follows_appends_and_projections_live(
    tmp_path: Path, chromium: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    history = list(generate_orders(60))
    first, second = history[: len(history) // 2], history[len(history) // 2 :]
    application = Application(url, ALL)
    async with application:
        await application.setup()
        await append_all(application, first)
        env = {"PROJECTIONIST_URL": url}
        async with (
            dashboard_process(
                "--app",
                "examples.shop.app:app",
                "--interval",
                "0.2",
                env=env,
                log=tmp_path / "stderr.log",
            ) as dashboard,
            async_playwright() as playwright,
        ):
            browser = await playwright.chromium.launch(executable_path=str(chromium))
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 720})
                requests: list[str] = []
                problems: list[str] = []
                page.on("request", lambda request: requests.append(request.url))
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.on(
                    "console",
                    lambda message: (
                        problems.append(message.text) if message.type == "error" else None
                    ),
                )
                await page.goto(dashboard.url + "/")
                await expect(page.locator("#connection")).to_have_text("live")

                before = {s.name: s for s in await application.status()}
                summaries = before["order_summaries"]
                assert summaries.lag > 100 and summaries.events_processed == 0
                await expect(cell(page, "order_summaries", "lag_events")).to_have_text(
                    f"{summaries.lag:,}"
                )
                await expect(cell(page, "order_summaries", "state")).to_have_text("stopped")
                badge = cell(page, "order_summaries", "state").locator(".state")
                await expect(badge).to_have_class("state idle")
                inline = cell(page, "product_catalogue", "state").locator(".state")
                await expect(inline).to_have_text("inline")
                await expect(inline).to_have_class("state ok")
                await expect(cell(page, "order_summaries", "events_processed")).to_have_text("0")
                await expect(cell(page, "product_catalogue", "lag_events")).to_have_text("0")
                await fits_the_window(page)
                await page.evaluate("window.notReloaded = true")

                # Projections catch up: lag falls to 0, position and processed move.
                await application.run_until_caught_up()
                caught_up = {s.name: s for s in await application.status()}
                await expect(cell(page, "order_summaries", "lag_events")).to_have_text("0")
                await expect(cell(page, "order_summaries", "position")).to_have_text(
                    str(caught_up["order_summaries"].position)
                )
                await expect(cell(page, "order_summaries", "events_processed")).to_have_text(
                    f"{caught_up['order_summaries'].events_processed:,}"
                )
                await expect(cell(page, "order_summaries", "state")).to_have_text("stopped")

                # New events: the lag rises, then falls again once they are projected.
                await append_all(application, second)
                behind = {s.name: s for s in await application.status()}
                assert behind["daily_sales"].lag > 100
                await expect(cell(page, "daily_sales", "lag_events")).to_have_text(
                    f"{behind['daily_sales'].lag:,}"
                )
                lagging = sum(1 for status in behind.values() if status.lag > 0)
                assert lagging >= 3  # every async projection of the shop
                await expect(page.locator("#behind")).to_have_text(str(lagging))
                await asyncio.sleep(0.5)  # a few samples of the lag for the chart
                await application.run_until_caught_up()
                done = {s.name: s for s in await application.status()}
                await expect(cell(page, "daily_sales", "lag_events")).to_have_text("0")
                await expect(cell(page, "daily_sales", "events_processed")).to_have_text(
                    f"{done['daily_sales'].events_processed:,}"
                )
                await expect(page.locator("#head")).to_have_text(str(done["daily_sales"].head))
                await expect(page.locator("#behind")).to_have_text("0")

                chart = cell(page, "daily_sales", "chart").locator("svg")
                assert int(await chart.get_attribute("data-samples") or 0) >= 5
                points = await chart.locator("polyline.events").get_attribute("points")
                heights = {point.split(",")[1] for point in (points or "").split()}
                assert len(heights) >= 2, points  # the lag line is not flat: it rose and fell

                assert await page.evaluate("window.notReloaded") is True
                external = [r for r in requests if not r.startswith(dashboard.url + "/")]
                assert external == [] and len(requests) >= 4, requests
                assert problems == []

                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

                # SIGTERM ends the server although a page holds an event stream open.
                dashboard.process.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(dashboard.process.wait(), 10) == 0, dashboard.stderr()
                await expect(page.locator("#connection")).to_have_text("reconnecting")
                await renders_the_fields_to_come(page)
            finally:
                await browser.close()


async def renders_the_fields_to_come(page: Page) -> None:
    """Rows with the status fields of workers, partitions and error policies (the server
    is gone, so nothing overwrites them); an error message is shown as text, not markup."""
    row = {
        "name": "orders",
        "kind": "async",
        "version": 2,
        "partition": "1/4",
        "state": "needs rebuild",
        "detail": "read model is version <1>",
        "state_text": "needs rebuild (read model is version <1>)",
        "severity": "bad",
        "owner": "worker-a",
        "position": "0/950",
        "head": "0/1000",
        "lag": 50,
        "lag_seconds": 1.5,
        "events_processed": 900,
        "last_batch_seconds": 0.012,
        "errors": 3,
        "last_error": "<img src=x onerror=alert(1)>",
        "dead_letters": 2,
        "parked_streams": 1,
        "updated_at": None,
        "held_back_by": "<b>transaction of pid 7</b>",
        "held_back_seconds": 12.5,
        "lag_estimated": True,
        "key": "orders[1/4]",
        "rate": 420.0,
    }
    payload = {"at": 1.0, "error": None, "projections": [row]}
    await page.evaluate("payload => { record(payload); render(payload); }", payload)
    expected = {
        "partition": "1/4",
        "owner": "worker-a",
        "lag_events": "~50",
        "lag_seconds": "1.50 s",
        "rate": "420",
        "last_batch_seconds": "12 ms",
        "errors": "3",
        "dead_count": "2",
        "parked_streams": "1 parked",
        "last_error": "<img src=x onerror=alert(1)>",
        "updated_at": "-",
    }
    for field, text in expected.items():
        await expect(cell(page, "orders[1/4]", field)).to_have_text(text)
    await expect(cell(page, "orders[1/4]", "state")).to_have_text(
        "needs rebuild (read model is version <1>)held back for 12.5 s by "
        "<b>transaction of pid 7</b>"
    )
    # Coloured by the severity the status gives, not by the words.
    await expect(cell(page, "orders[1/4]", "state").locator(".state")).to_have_class("state bad")
    assert await page.locator("img").count() == 0
    assert await page.locator("b").count() == 0  # text, never markup
    await expect(page.locator("tbody tr")).to_have_count(1)  # the other rows are gone
    await expect(page.locator("#total-dead")).to_have_text("2")


async def test_a_faulted_unit_is_shown_faulted_with_its_fault_and_the_workers(
    tmp_path: Path, chromium: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    async with Application(url, PROJECTIONS) as application:
        error = await faulted_and_taken_over(application)
        fault = next(s.fault for s in await application.status() if s.name == "strict")
        assert fault is not None
        async with (
            dashboard_process(
                "--app", FAULTY_APP, "--interval", "0.2", env={"PROJECTIONIST_URL": url},
                log=tmp_path / "stderr.log",
            ) as dashboard,
            async_playwright() as playwright,
        ):  # fmt: skip
            browser = await playwright.chromium.launch(executable_path=str(chromium))
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 720})
                await page.goto(dashboard.url + "/")
                await expect(page.locator("#connection")).to_have_text("live")
                badge = cell(page, "strict", "state").locator(".state")
                await expect(badge).to_have_text("faulted")
                await expect(badge).to_have_class("state bad")
                await expect(cell(page, "strict", "owner")).to_have_text(TAKER)
                await expect(cell(page, "strict", "errors")).to_have_text(str(fault.attempts))
                await expect(cell(page, "strict", "last_error")).to_have_text(error)
                details = cell(page, "strict", "state").locator("details.fault")
                await expect(details.locator("summary")).to_have_text(
                    f"on Posted · acct-1 v2 · {fault.position}"
                )
                await expect(cell(page, "strict", "fault_error")).to_have_text(error)
                await details.locator("summary").click()  # the traceback, on demand
                trace = cell(page, "strict", "fault_traceback")
                await expect(trace).to_be_visible()
                await expect(trace).to_contain_text("Traceback (most recent call last)")
                await expect(trace).to_contain_text(error)
                await expect(page.locator("#faulted")).to_have_text("1")
                await expect(page.locator("#faulted-tile")).to_have_class("tile bad")
                await expect(page.locator(f'#workers li[data-worker="{TAKER}"]')).to_contain_text(
                    f"{TAKER} · heartbeat"
                )
                await expect(page.locator("#workers li")).to_contain_text("1 unit")
                await expect(page.locator("#worker-count")).to_have_text("1")
                lenient = cell(page, "lenient", "state").locator(".state")
                await expect(lenient).not_to_have_class("state bad")
                await expect(cell(page, "lenient", "dead_letters")).to_have_text("1")
                await asyncio.sleep(0.5)  # a few polls: the open traceback stays open
                await expect(trace).to_be_visible()
                await fits_the_window(page)
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "dashboard-fault.png"), full_page=True)
            finally:
                await browser.close()
