"""The operations commands, as real processes on a SQLite file: dead letters (list, retry,
discard), restart of a faulted projection, status of a fault, and health of a running worker
that hands its leases back on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from projectionist import AppendResult, Application, NewEvent
from projectionist.errors import HandlerError
from tests.cli_operations_app import PROJECTIONS
from tests.test_cli import ROOT

APP = "tests.cli_operations_app:app"


def cli(url: str, *args: str, answer: str = "") -> subprocess.CompletedProcess[str]:
    """A CLI run on ``url``; ``answer`` is what the operator types at a confirmation prompt
    (nothing, end of input: a prompt refuses)."""
    return subprocess.run(
        [sys.executable, "-m", "projectionist.cli", *args],
        input=answer,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "PROJECTIONIST_URL": url},
        cwd=ROOT,
        check=False,
    )


def statuses(url: str) -> dict[str, dict[str, Any]]:
    done = cli(url, "status", "--app", APP, "--json")
    assert done.returncode == 0, done.stderr
    return {line["name"]: line for line in map(json.loads, done.stdout.splitlines())}


def letters(url: str, *options: str) -> list[dict[str, Any]]:
    done = cli(url, "dead-letters", "list", "--app", APP, "--json", *options)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def _prepare(url: str, broken: set[int], count: int) -> AppendResult:
    async with Application(url, PROJECTIONS) as app:
        await app.setup()
        async with app.read_models.transaction() as tx:
            await tx.executemany("INSERT INTO broken VALUES ($1)", [(n,) for n in broken])
        return await app.store.append(
            "acct-1", [NewEvent("Posted", {"n": n}) for n in range(count)]
        )


async def _fix(url: str, n: int) -> None:
    async with Application(url, PROJECTIONS) as app, app.read_models.transaction() as tx:
        assert await tx.execute("DELETE FROM broken WHERE n = $1", n) == 1


async def _seen(url: str, name: str) -> list[int]:
    async with Application(url, PROJECTIONS) as app, app.read_models.transaction() as tx:
        return [int(row[0]) for row in await tx.fetch(f"SELECT n FROM {name}_seen ORDER BY n")]


async def _status(url: str) -> dict[str, dict[str, Any]]:
    async with Application(url, PROJECTIONS) as app:
        return {status.name: status.as_dict() for status in await app.status()}


async def _letter_ids(url: str) -> list[int]:
    async with Application(url, PROJECTIONS) as app:
        return [letter.id for letter in await app.dead_letters()]


def status_now(url: str) -> dict[str, dict[str, Any]]:
    """As ``status --json`` says it, read in this process (a CLI run costs a second)."""
    return asyncio.run(_status(url))


async def _process_in_place(url: str) -> None:
    async with Application(url, PROJECTIONS) as app:
        await app.runner("lenient").run_until_caught_up()
        with pytest.raises(HandlerError, match="event 3 is broken"):
            await app.runner("strict").run_until_caught_up()


@contextlib.contextmanager
def worker_process(
    app: str,
    url: str,
    worker_id: str,
    lease_seconds: float,
    log_path: Path,
    stop_timeout: float = 10.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """``projectionist run --app app`` as a process, its output in ``log_path``; at the
    block's end it is stopped with SIGTERM and must exit 0 (killed if the block raised)."""
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "projectionist.cli", "run", "--app", app, "--url", url,
             "--worker-id", worker_id, "--lease-seconds", str(lease_seconds)],
            cwd=ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield worker
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=stop_timeout) == 0, log_path.read_text()
        finally:
            worker.kill()


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def test_dead_letters_status_and_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    appended = asyncio.run(_prepare(url, {3, 5}, 8))
    asyncio.run(_process_in_place(url))

    table = cli(url, "dead-letters", "list", "--app", APP)
    assert table.returncode == 0, table.stderr
    assert "Dead letters (2)" in table.stdout
    assert "acct-1 v4" in table.stdout and "acct-1 v6" in table.stdout
    assert "ValueError: event 3 is broken" in table.stdout

    listed = letters(url)
    three, five = (letter["id"] for letter in listed)
    for letter in listed:
        assert isinstance(letter.pop("failed_at"), float)
    assert listed == [
        {
            "id": letter_id,
            "projection": "lenient",
            "unit": "lenient",
            "version": 1,
            "position": str(appended.events[n].position),
            "stream_id": "acct-1",
            "stream_version": n + 1,
            "event_type": "Posted",
            "event_id": str(appended.events[n].id),
            "error": f"ValueError: event {n} is broken",
            "attempts": 1,
            "parked": False,
        }
        for letter_id, n in ((three, 3), (five, 5))
    ]
    assert letters(url, "--projection", "strict") == []

    state = statuses(url)
    assert state["strict"]["state"] == "faulted"
    assert (state["strict"]["state_text"], state["strict"]["severity"]) == ("faulted", "bad")
    assert state["lenient"]["severity"] == "idle" and state["lenient"]["detail"] is None
    fault = state["strict"]["fault"]
    assert isinstance(fault.pop("failed_at"), float)
    assert "ValueError: event 3 is broken" in fault.pop("traceback")
    assert fault == {
        "unit": "strict",
        "projection": "strict",
        "version": 1,
        "position": str(appended.events[3].position),
        "stream_id": "acct-1",
        "stream_version": 4,
        "event_type": "Posted",
        "error": "ValueError: event 3 is broken",
        "attempts": 1,
    }
    assert state["strict"]["position"] == str(appended.events[2].position)
    assert (state["lenient"]["state"], state["lenient"]["lag"]) == ("stopped", 0)
    assert (state["lenient"]["dead_letters"], state["lenient"]["fault"]) == (2, None)
    shown = cli(url, "status", "--app", APP)
    assert shown.returncode == 0, shown.stderr
    [strict_row] = [line for line in shown.stdout.splitlines() if "│ strict " in line]
    assert "│ faulted │" in strict_row and "ValueError:" in strict_row  # the error, wrapped

    # Event 3 is fixed, 5 is not: 3 is applied and leaves the list, 5 stays; exit 1.
    asyncio.run(_fix(url, 3))
    retried = cli(url, "dead-letters", "retry", str(three), str(five), "--app", APP)
    assert retried.returncode == 1
    assert retried.stdout.splitlines() == [
        f"{three}: applied",
        f"{five}: failed again: ValueError: event 5 is broken",
    ]
    assert asyncio.run(_letter_ids(url)) == [five]
    assert asyncio.run(_seen(url, "lenient")) == [0, 1, 2, 3, 4, 6, 7]

    unknown = cli(url, "dead-letters", "discard", str(five), "999999", "--app", APP, "--yes")
    assert unknown.returncode == 1 and "there is no dead letter 999999" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert asyncio.run(_letter_ids(url)) == [five]  # all or nothing
    for answer in ("", "n\n"):  # destructive: it asks first, and no (or nothing) is no
        kept = cli(url, "dead-letters", "discard", str(five), "--app", APP, answer=answer)
        assert kept.returncode == 1 and f"Discard dead letter(s) {five} for good?" in kept.stdout
        assert asyncio.run(_letter_ids(url)) == [five]
    discarded = cli(url, "dead-letters", "discard", str(five), "--app", APP, answer="y\n")
    assert discarded.returncode == 0 and "discarded 1 dead letter(s)" in discarded.stdout
    assert asyncio.run(_letter_ids(url)) == []
    assert status_now(url)["lenient"]["dead_letters"] == 0

    restarted = cli(url, "restart", "strict", "--app", APP)
    assert restarted.returncode == 0, restarted.stderr
    assert "strict: cleared 1 fault(s)" in restarted.stdout
    strict = statuses(url)["strict"]
    assert (strict["state"], strict["fault"]) == ("stopped", None)
    assert "strict was not faulted" in cli(url, "restart", "strict", "--app", APP).stdout
    nope = cli(url, "restart", "nope", "--app", APP)
    assert nope.returncode == 1 and "no projection named 'nope'" in nope.stderr


def test_health_and_a_worker_that_resumes_after_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    asyncio.run(_prepare(url, {2}, 5))
    sick = cli(url, "health", "--app", APP)
    assert sick.returncode == 1 and "unhealthy: no heartbeat from any worker" in sick.stderr

    with worker_process(APP, url, "w-ops", 1, tmp_path / "worker.log"):

        def strict_faulted() -> bool:
            state = status_now(url)
            return state["strict"]["state"] == "faulted" and all(
                s["owner"] == "w-ops" for s in state.values()
            )

        wait_until(strict_faulted)
        state = statuses(url)  # through the CLI, this time
        assert state["strict"]["fault"]["stream_version"] == 3
        assert (state["lenient"]["lag"], state["lenient"]["dead_letters"]) == (0, 1)

        healthy = cli(url, "health", "--app", APP)
        assert healthy.returncode == 0, healthy.stderr
        assert healthy.stdout.startswith("healthy: w-ops (heartbeat ")
        other = cli(url, "health", "--app", APP, "--worker-id", "w-other")
        assert other.returncode == 1 and "no heartbeat from w-other" in other.stderr

        asyncio.run(_fix(url, 2))
        restarted = cli(url, "restart", "strict", "--app", APP)
        assert "strict: cleared 1 fault(s)" in restarted.stdout, restarted.stderr

        def strict_resumed() -> bool:
            strict = status_now(url)["strict"]
            return bool(strict["lag"] == 0 and strict["state"] == "live")

        wait_until(strict_resumed)
        assert status_now(url)["strict"]["fault"] is None
        assert asyncio.run(_seen(url, "strict")) == [0, 1, 2, 3, 4]
        assert asyncio.run(_seen(url, "lenient")) == [0, 1, 3, 4]

    after = statuses(url)
    assert {name: (s["owner"], s["state"]) for name, s in after.items()} == {
        "lenient": (None, "stopped"),
        "strict": (None, "stopped"),
    }
    gone = cli(url, "health", "--app", APP)
    assert gone.returncode == 1 and "unhealthy" in gone.stderr


def test_faults_show_and_skip_with_a_faulted_worker(tmp_path: Path) -> None:
    """Under on_error="stop" a poison event that cannot be fixed is skipped from the CLI:
    ``faults show`` tells the event, error and traceback; ``faults skip`` asks, moves the
    event to the dead letters and the running worker resumes after it."""
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    appended = asyncio.run(_prepare(url, {2}, 5))
    assert cli(url, "faults", "show", "--app", APP).stdout.strip() == "no faults"
    with worker_process(APP, url, "w-ops", 1, tmp_path / "worker.log"):
        wait_until(lambda: status_now(url)["strict"]["state"] == "faulted")
        shown = cli(url, "faults", "show", "strict", "--app", APP)
        assert shown.returncode == 0, shown.stderr
        position = appended.events[2].position
        assert f"event:     Posted, stream acct-1 version 3, position {position}" in shown.stdout
        assert "error:     ValueError: event 2 is broken" in shown.stdout
        assert "Traceback (most recent call last)" in shown.stdout and "in posted" in shown.stdout
        [as_json] = [json.loads(line) for line in cli(url, "faults", "show", "--app", APP,
                                                         "--json").stdout.splitlines()]  # fmt: skip
        assert (as_json["unit"], as_json["position"]) == ("strict", str(position))
        assert "in posted" in as_json["traceback"]
        assert (
            "lenient is not faulted" in cli(url, "faults", "show", "lenient", "--app", APP).stdout
        )

        refused = cli(url, "faults", "skip", "strict", "--app", APP, answer="n\n")
        assert refused.returncode == 1 and "Move it to the dead letters" in refused.stdout
        assert status_now(url)["strict"]["state"] == "faulted"
        skipped = cli(url, "faults", "skip", "strict", "--app", APP, "--yes")
        assert skipped.returncode == 0, skipped.stderr
        assert f"strict: moved Posted at {position} to the dead letters" in skipped.stdout

        def strict_resumed() -> bool:
            strict = status_now(url)["strict"]
            return bool(strict["lag"] == 0 and strict["state"] == "live")

        wait_until(strict_resumed)
        assert asyncio.run(_seen(url, "strict")) == [0, 1, 3, 4]
        [letter] = letters(url, "--projection", "strict")
        assert (letter["position"], letter["error"]) == (
            str(position),
            "ValueError: event 2 is broken",
        )
        again = cli(url, "faults", "skip", "strict", "--app", APP, "--yes")
        assert again.returncode == 1 and "'strict' is not faulted" in again.stderr


def test_rebuild_takes_the_unit_from_its_live_worker(tmp_path: Path) -> None:
    """A rebuild of a unit that a live worker owns takes its lease first: the worker cannot
    apply a batch meanwhile (no race, no checkpoint-conflict warnings over the progress bar),
    and it takes the unit back once the rebuild is done."""
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    count = 4000
    asyncio.run(_prepare(url, {2}, count))
    with worker_process(APP, url, "w-ops", 1, tmp_path / "worker.log"):
        wait_until(lambda: status_now(url)["strict"]["state"] == "faulted")
        asyncio.run(_fix(url, 2))  # fixed: the rebuild clears the fault, the worker sees it
        rebuilt = cli(url, "rebuild", "strict", "--app", APP, "--yes")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert f"rebuilt strict from {count:,} events" in rebuilt.stdout
        assert "checkpoint" not in rebuilt.stderr and "WARNING" not in rebuilt.stderr

        def strict_resumed() -> bool:
            strict = status_now(url)["strict"]
            return bool(strict["owner"] == "w-ops" and strict["state"] == "live")

        wait_until(strict_resumed)
        assert asyncio.run(_seen(url, "strict")) == list(range(count))
        more = cli(url, "status", "--app", APP, "--json")
        assert more.returncode == 0
    assert "checkpoint_conflict" not in (tmp_path / "worker.log").read_text()
