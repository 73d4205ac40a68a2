"""Shop traffic to watch on the dashboard: orders arrive at a steady rate while the async
projections run, and each projection pauses now and then (as in a worker restart), so its
lag rises and falls.

    python -m examples.shop.traffic --url sqlite:///shop.db --seconds 120
    projectionist dashboard --app examples.shop.app:app --url sqlite:///shop.db   # another terminal

When the time is up, appends stop and every projection catches up before the script ends.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from projectionist import Application
from projectionist.projection import Kind
from projectionist.runner import ProjectionRunner

from .history import generate_orders
from .projections import ALL


async def append_steadily(app: Application, events_per_second: float, until: float) -> int:
    """Append the shop's history at about ``events_per_second`` until the deadline."""
    appended = 0
    started = time.monotonic()
    # Enough orders for the time (5 to 7 events each); not more, or customers crowd them out.
    orders = int((until - started) * events_per_second / 5) + 10
    for item in generate_orders(orders):
        if time.monotonic() >= until:
            break
        appended += len((await app.store.append(item.stream_id, item.events)).events)
        ahead = appended / events_per_second - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
    return appended


async def run_with_pauses(
    runner: ProjectionRunner, offset: float, period: float, pause: float, until: float
) -> None:
    """Run, and pause for ``pause`` seconds once per ``period``, starting ``offset`` in."""
    next_pause = time.monotonic() + offset
    while time.monotonic() < until:
        running = asyncio.create_task(runner.run())
        await asyncio.sleep(max(0.0, min(next_pause, until) - time.monotonic()))
        runner.stop()
        await running
        if time.monotonic() >= until:
            break
        await asyncio.sleep(min(pause, max(0.0, until - time.monotonic())))
        next_pause += period


async def traffic(
    url: str, seconds: float, events_per_second: float = 150.0, period: float = 40.0
) -> int:
    """Run the traffic for ``seconds``; return how many events were appended."""
    app = Application(url, ALL)
    async with app:
        await app.setup()
        until = time.monotonic() + seconds
        names = [p.name for p in ALL if p.kind is Kind.ASYNC]
        followers = [
            asyncio.create_task(
                run_with_pauses(
                    app.runner(name), (i + 1) * period / (len(names) + 1), period, period / 4, until
                )
            )
            for i, name in enumerate(names)
        ]
        appended = await append_steadily(app, events_per_second, until)
        await asyncio.gather(*followers)
        await app.run_until_caught_up()
        return appended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default="sqlite:///shop.db")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--rate", type=float, default=150.0, help="events appended per second")
    arguments = parser.parse_args()
    appended = asyncio.run(traffic(arguments.url, arguments.seconds, arguments.rate))
    print(f"appended {appended:,} events; every projection has caught up")


if __name__ == "__main__":
    main()
