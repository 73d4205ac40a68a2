"""Parked streams through the command line, as real processes on SQLite and PostgreSQL: a
worker process parks a stream; ``status`` and ``dead-letters list`` show it; bad retries are
refused; ``dead-letters retry --stream`` (another process) applies it in order while the
worker runs and events keep being appended to the stream; the rows then equal a rebuild's."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from projectionist import Application
from tests.cli_park_app import PROJECTIONS
from tests.conftest import _drop_schema, new_schema_name, require_postgres, store_url
from tests.engine.test_park import cure, interleaved, poison, rebuilt_rows, rows, upto
from tests.test_cli import ROOT
from tests.test_cli_operations import wait_until, worker_process

APP = "tests.cli_park_app:app"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    schema = None
    if request.param == "postgres":
        asyncio.run(require_postgres())
        schema = new_schema_name()
    yield store_url(request.param, tmp_path, schema)
    if schema is not None:
        asyncio.run(_drop_schema(schema))


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "projectionist.cli", *args, "--app", APP],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "PROJECTIONIST_URL": url},
        cwd=ROOT,
        check=False,
    )


def json_lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def in_app(url: str, *, then: str = "nothing") -> Any:
    async with Application(url, PROJECTIONS) as app:
        if then == "prepare":
            await app.setup()
            await poison(app, ("B", 3))
            await interleaved(app, ["A", "B", "C"], 5)
        elif then == "cure":
            await cure(app, ("B", 3))
        elif then == "append":
            await interleaved(app, ["A", "B"], 10)
        elif then == "parked":
            return sum(s.parked_streams for s in await app.status())
        elif then == "caught up":
            checkpoint = await app.read_models.checkpoint("chain")
            return checkpoint is not None and checkpoint.position == await app.store.head()
        elif then == "rows":
            return await rows(app), await rebuilt_rows(app), await app.dead_letters()
        return None


def caught_up(url: str) -> bool:
    return asyncio.run(in_app(url, then="caught up")) is True


def test_a_parked_stream_through_the_cli_while_a_worker_runs(url: str, tmp_path: Path) -> None:
    asyncio.run(in_app(url, then="prepare"))
    with worker_process(APP, url, "w-park", 2, tmp_path / "worker.log", stop_timeout=20):
        wait_until(lambda: caught_up(url))
        assert asyncio.run(in_app(url, then="parked")) == 1

        [status] = json_lines(cli(url, "status", "--json"))
        assert (status["parked_streams"], status["dead_letters"]) == (1, 3)
        assert status["severity"] == "warn"
        table = cli(url, "status")
        [header] = [line for line in table.stdout.splitlines() if line.startswith("┃")]
        [row] = [line for line in table.stdout.splitlines() if "│ chain " in line]
        cells = dict(
            zip(
                (cell.strip() for cell in header.split("┃")),
                (cell.strip() for cell in row.split("│")),
                strict=True,
            )
        )
        assert (cells["dead"], cells["parked"]) == ("3", "1")
        letters = json_lines(cli(url, "dead-letters", "list", "--json"))
        assert [(d["stream_id"], d["stream_version"], d["parked"]) for d in letters] == [
            ("B", 3, True),
            ("B", 4, True),
            ("B", 5, True),
        ]
        listed = cli(url, "dead-letters", "list")
        assert listed.stdout.count("parked") >= 3 and "held back: stream 'B'" in listed.stdout

        # Refused, before anything is applied.
        second = letters[1]["id"]
        out_of_order = cli(url, "dead-letters", "retry", str(second))
        assert out_of_order.returncode == 1, out_of_order.stdout
        assert f"waits behind dead letter {letters[0]['id']}" in out_of_order.stderr
        for args, message in (
            (["--stream", "B"], "--stream and --projection go together"),
            (["--stream", "B", "--projection", "chain", "7"], "not both"),
            ([], "give dead letter ids, or --stream"),
        ):
            done = cli(url, "dead-letters", "retry", *args)
            assert done.returncode == 2 and message in done.stderr, done.stderr
        for args, message in (
            (["--stream", "A", "--projection", "chain"], "stream 'A' is not parked"),
            (["--stream", "B", "--projection", "nope"], "no projection named 'nope'"),
        ):
            done = cli(url, "dead-letters", "retry", *args)
            assert done.returncode == 1 and message in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
        still = cli(url, "dead-letters", "retry", "--stream", "B", "--projection", "chain")
        assert still.returncode == 1
        assert "letter" in still.stdout and "failed again: ValueError: poison B v3" in still.stdout
        assert len(json_lines(cli(url, "dead-letters", "list", "--json"))) == 3

        # Fixed; the retry runs while the worker runs and B keeps growing.
        asyncio.run(in_app(url, then="cure"))
        appending = threading.Thread(target=lambda: asyncio.run(in_app(url, then="append")))
        appending.start()
        retried = cli(url, "dead-letters", "retry", "--stream", "B", "--projection", "chain")
        appending.join(timeout=60)
        assert not appending.is_alive()
        assert retried.returncode == 0, retried.stderr
        assert "chain B: applied" in retried.stdout and "un-parked" in retried.stdout
        wait_until(lambda: caught_up(url))
    live, rebuilt, letters_left = asyncio.run(in_app(url, then="rows"))
    assert letters_left == []
    assert live[0] == [("A", upto(15)), ("B", upto(15)), ("C", upto(5))]
    assert live == rebuilt
