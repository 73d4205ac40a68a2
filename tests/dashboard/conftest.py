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

from examples.shop.history import Append

from projectionist import Application

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
