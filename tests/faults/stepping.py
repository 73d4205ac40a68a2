"""Kills on progress, never on a clock: a child steps batch by batch, the parent kills it.

The child (``step_after_commits``) prints ``committed`` after each read-model commit and waits
for a line on stdin before it goes on; the parent (``kill_after_batches``) reads those lines,
answers all but the last, and SIGKILLs the child. So a kill lands after a chosen number of
batches whatever the machine's speed or load, and the child can never run ahead to the head.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from projectionist import ReadModelStore, ReadModelTransaction

COMMITTED = "committed"


def step_after_commits(read_models: ReadModelStore) -> None:
    """After each committed transaction of ``read_models``, say so and wait for the parent's
    go-ahead on stdin."""
    transaction = read_models.transaction

    @contextlib.asynccontextmanager
    async def stepped() -> AsyncIterator[ReadModelTransaction]:
        async with transaction() as tx:
            yield tx
        print(COMMITTED, flush=True)
        await asyncio.to_thread(sys.stdin.readline)

    read_models.transaction = stepped  # type: ignore[method-assign]


async def kill_after_batches(
    process: asyncio.subprocess.Process, batches: int, *, go_on: bool, timeout: float
) -> None:
    """SIGKILL a ``--step`` child once it has committed ``batches`` batches: while it waits
    for the go-ahead after the last of them, or (``go_on``) just after it got it, inside the
    next batch. It cannot get further: it waits for a go-ahead after every commit."""
    assert process.stdin is not None and process.stdout is not None
    for batch in range(1, batches + 1):
        line = await asyncio.wait_for(process.stdout.readline(), timeout)
        assert line.decode().strip() == COMMITTED, line
        if batch < batches or go_on:
            process.stdin.write(b"\n")
            await process.stdin.drain()
    process.kill()


REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 60.0


async def spawn_child(module: str, *arguments: str) -> asyncio.subprocess.Process:
    """``python -m module arguments...`` from the repository's root, its pipes ours."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *arguments,
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish_child(process: asyncio.subprocess.Process, what: str) -> str:
    """Its output once it ends (by itself, or by our SIGKILL); a failure otherwise."""
    try:
        out, err = await asyncio.wait_for(process.communicate(), CHILD_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{what} did not end within {CHILD_TIMEOUT}s")
    if process.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"{what} exited with {process.returncode}:\n{err.decode()}")
    return out.decode()
