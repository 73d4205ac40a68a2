"""``projectionist replay`` as a real process on a SQLite file, with a worker process running
the projection: the replay's output, its refusals (exit 1, one line, nothing written), and a
worker that goes on with new events afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from projectionist import START, Application, Position
from tests.replay_app import PROJECTIONS, balance_events, replayed, rows
from tests.test_cli import ROOT
from tests.test_cli_operations import cli, wait_until, worker_process

APP = "tests.replay_app:app"


async def _append(url: str, rounds: range) -> tuple[list[Position], Position]:
    """Append rounds of balances; the positions of every BalanceSet event so far, the head."""
    async with Application(url, PROJECTIONS) as app:
        await app.setup()
        for round_ in rounds:
            for account in range(3):
                await app.store.append(f"acct-{account}", balance_events(round_, account))
        events = (await app.store.read_all(START, limit=10_000, types=["BalanceSet"])).events
        return [event.position for event in events], await app.store.head()


async def _state(url: str) -> tuple[list[tuple[Any, ...]], set[str], bool]:
    async with Application(url, PROJECTIONS) as app:
        head = await app.store.head()
        stored = await app.read_models.checkpoints()
        async with app.read_models.transaction() as tx:
            return await rows(tx), await replayed(tx), stored["balances"].position == head


def test_replay_with_a_worker_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'replay.db'}"
    positions, head = asyncio.run(_append(url, range(4)))
    with worker_process(APP, url, "w-replay", 1, tmp_path / "worker.log"):
        wait_until(lambda: bool(asyncio.run(_state(url))[2]))
        clean_rows = asyncio.run(_state(url))[0]

        done = cli(url, "replay", "balances", "--from", str(positions[5]), "--app", APP)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            f"balances: replayed 6 events after {positions[5]} (checkpoint was {head}, now {head})",
            "replayed 6 events of balances",
        ]
        assert asyncio.run(_state(url))[:2] == (clean_rows, {str(p) for p in positions[6:]})

        # From a time, through the environment variable, as JSON: every event is younger.
        env_run = subprocess.run(
            [sys.executable, "-m", "projectionist.cli", "replay", "balances", "--json"],
            capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
            env={**os.environ, "PROJECTIONIST_URL": url, "PROJECTIONIST_APP": APP,
                 "PROJECTIONIST_REPLAY_FROM": "2000-01-01T00:00:00Z"},
        )  # fmt: skip
        assert env_run.returncode == 0, env_run.stderr
        reported = json.loads(env_run.stdout)
        assert (reported["point"], reported["events"]) == (str(START), 12)
        assert reported["units"][0]["left_alone"] is None

        refused = [
            (("counter", "--from", "0/1"), "projection 'counter' is not declared replay-safe"),
            (("balances", "--from", "2024-05-01T12:00"), "has no timezone: give one"),
            (("balances", "--from", "soon"), "invalid replay point 'soon'"),
            (("nope", "--from", "0/1"), "no projection named 'nope'"),
        ]
        for arguments, message in refused:
            failed = cli(url, "replay", *arguments, "--app", APP)
            assert failed.returncode == 1 and message in failed.stderr, failed.stderr
            assert "Traceback" not in failed.stderr
        future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        late = cli(url, "replay", "balances", "--from", future, "--app", APP)
        assert late.returncode == 0, late.stderr
        assert "balances: left alone: its checkpoint" in late.stdout
        assert "replayed 0 events of balances" in late.stdout

        more, _ = asyncio.run(_append(url, range(4, 6)))  # the worker goes on after the replay
        wait_until(lambda: bool(asyncio.run(_state(url))[2]))
        final_rows, seen, _ = asyncio.run(_state(url))
        assert final_rows == [(f"acct-{a}", 500 + a, 11) for a in range(3)]
        assert not seen & {str(p) for p in more[len(positions) :]}  # applied live, not replayed
    assert "checkpoint_conflict" not in (tmp_path / "worker.log").read_text()
