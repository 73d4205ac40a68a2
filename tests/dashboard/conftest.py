"""Helpers for the dashboard tests: a dashboard process, HTTP without a client library."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from examples.shop.history import Append

from projectionist import Application, NewEvent, leases
from projectionist.errors import HandlerError

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"


async def http_get(url: str) -> tuple[int, str, str]:
    """Status, content type and body of a GET (urllib in a thread: no extra dependency)."""

    def get() -> tuple[int, str, str]:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
            return response.status, response.headers.get("Content-Type", ""), body

    return await asyncio.to_thread(get)


async def append_all(application: Application, appends: Sequence[Append]) -> None:
    for item in appends:
        await application.store.append(item.stream_id, item.events)


@dataclass
class DashboardProcess:
    process: asyncio.subprocess.Process
    url: str
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text()


@asynccontextmanager
async def dashboard_process(
    *args: str, env: dict[str, str], log: Path
) -> AsyncIterator[DashboardProcess]:
    """``projectionist dashboard ...`` on a free port, stopped with SIGTERM at the end."""
    with log.open("w") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "projectionist.cli",
            "dashboard",
            *args,
            "--port",
            "0",
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        if not line.startswith("dashboard on http://"):
            raise AssertionError(f"no dashboard: {line!r} {await asyncio.to_thread(log.read_text)}")
        url = line.split()[2].rstrip("/")
        yield DashboardProcess(process, url, log)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


FAULTY_APP = "tests.cli_operations_app:app"
"""``strict`` (on_error="stop") and ``lenient`` ("skip") of numbered events; the numbers in
its ``broken`` table fail."""
TAKER = "worker-b"


async def faulted_and_taken_over(application: Application) -> str:
    """``strict`` faults on event 1; then worker ``TAKER`` takes its lease over (a takeover
    starts the lease's figures at 0) and stays alive. Returns the fault's error."""
    await application.setup()
    async with application.read_models.transaction() as tx:
        await tx.execute("INSERT INTO broken VALUES (1)")
    await application.store.append("acct-1", [NewEvent("Posted", {"n": n}) for n in range(3)])
    with pytest.raises(HandlerError, match="event 1 is broken"):
        await application.run_until_caught_up()
    await leases.register_units(application.read_models, {"strict": "strict"})
    taker = leases.WorkerEntry(TAKER, "host-b", 1, lease_seconds=600)
    units = {unit: p.name for p in application.projections.values() for unit in p.units}
    await leases.heartbeat(application.read_models, taker, units, changed=True)
    assert await leases.acquire(application.read_models, "strict", TAKER, 600) is not None
    return "ValueError: event 1 is broken"
