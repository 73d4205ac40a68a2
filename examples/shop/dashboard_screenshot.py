"""Take the README's dashboard screenshot (docs/dashboard.png): the shop under real traffic.

    .venv/bin/python -m examples.shop.dashboard_screenshot [--seconds 25] [--out docs/dashboard.png]

Two workers (two applications on one SQLite file, as two processes would be) share the shop's
projections while orders arrive at a steady rate; after the given time the dashboard, served
in-process, is photographed in Debian's headless Chromium (``make browser`` installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from playwright.async_api import async_playwright

from projectionist import Application
from projectionist.dashboard import Dashboard

from .projections import ALL
from .traffic import append_steadily

CHROMIUM = "/usr/bin/chromium"


async def take(out: Path, seconds: float, events_per_second: float) -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{Path(directory) / 'shop.db'}"
        apps = [Application(url, ALL, poll_interval=0.2) for _ in range(2)]
        async with apps[0], apps[1]:
            await apps[0].setup()
            workers = [
                asyncio.create_task(app.run(worker_id=f"worker-{name}", lease_seconds=4.0))
                for app, name in zip(apps, "ab", strict=True)
            ]
            dashboard = Dashboard(apps[0], interval=0.5)
            async with dashboard.serve() as address, async_playwright() as playwright:
                appending = asyncio.create_task(
                    append_steadily(apps[0], events_per_second, time.monotonic() + seconds + 5)
                )
                browser = await playwright.chromium.launch(executable_path=CHROMIUM)
                page = await browser.new_page(viewport={"width": 1600, "height": 430})
                await page.goto(address + "/")
                await asyncio.sleep(seconds)
                await page.screenshot(path=str(out), full_page=True)
                await browser.close()
                appending.cancel()
            for app in apps:
                app.stop()
            await asyncio.gather(*workers, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--rate", type=float, default=150.0, help="events per second")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    arguments = parser.parse_args()
    asyncio.run(take(arguments.out, arguments.seconds, arguments.rate))
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
