"""A SQLite store that cannot be opened leaves nothing running: the process can exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from projectionist import StoreUnavailableError, create_store

ROOT = Path(__file__).resolve().parents[2]

_OPEN_GARBAGE = textwrap.dedent(
    """
    import asyncio, sys
    from projectionist import StoreUnavailableError, create_store

    async def main():
        try:
            await create_store("sqlite:///" + sys.argv[1]).open()
        except StoreUnavailableError as exc:
            print("refused:", exc, flush=True)

    asyncio.run(main())
    """
)


def test_a_file_that_is_not_a_database_lets_the_process_exit(tmp_path: Path) -> None:
    garbage = tmp_path / "notes.db"
    garbage.write_bytes(b"this is not a database, just text\n" * 200)
    # A thread left running would keep the interpreter from exiting: the timeout says so.
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_GARBAGE, str(garbage)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "not a database" in done.stdout


async def test_a_failed_open_can_be_retried_and_closed(tmp_path: Path) -> None:
    garbage = tmp_path / "notes.db"
    garbage.write_bytes(b"x" * 4096)
    store = create_store(f"sqlite:///{garbage}")
    for _ in range(2):
        with pytest.raises(StoreUnavailableError, match="not a database"):
            await store.open()
    await store.close()
