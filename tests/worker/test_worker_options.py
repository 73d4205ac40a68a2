"""A worker's periods are checked before anything runs (issue 12, item 7), and ``run`` says
at the default log level when it starts and stops (item 13)."""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from projectionist import Application, ConfigurationError, ProjectionistError, leases
from projectionist.worker import Worker
from tests.conftest import PG_DSN
from tests.test_cli import ROOT, run_cli
from tests.worker.failover_app import PROJECTIONS

BAD_SECONDS = [math.inf, -math.inf, math.nan, 0, -1.0, "10", None, True, [10]]
PERIODS = [
    "lease_seconds",
    "heartbeat_seconds",
    "shutdown_seconds",
    "idle_transaction_seconds",
    "retire_after_seconds",
]
APP = "tests.worker.failover_app:app"


@pytest.mark.parametrize("period", PERIODS)
@pytest.mark.parametrize("value", BAD_SECONDS, ids=repr)
def test_a_period_that_is_not_a_finite_positive_number_is_refused(
    period: str, value: object
) -> None:
    if value is None and period in ("heartbeat_seconds", "idle_transaction_seconds"):
        Worker(Application("memory://"), **{period: value})  # type: ignore[arg-type]
        return  # None means the default for these: accepted
    with pytest.raises(ConfigurationError, match=period):
        Worker(Application("memory://"), **{period: value})  # type: ignore[arg-type]


def test_the_heartbeat_is_at_most_half_a_lease() -> None:
    with pytest.raises(ConfigurationError, match="half of lease_seconds"):
        Worker(Application("memory://"), lease_seconds=4, heartbeat_seconds=2.5)
    worker = Worker(Application("memory://"), lease_seconds=4)
    assert (worker.heartbeat_seconds, worker.idle_transaction_seconds) == (1.0, 4.0)


@pytest.mark.parametrize(
    "option",
    [
        ["--lease-seconds", "inf"],
        ["--lease-seconds", "nan"],
        ["--shutdown-seconds", "inf"],
        ["--idle-transaction-seconds", "nan"],
    ],
)
def test_run_refuses_an_infinite_or_nan_period_before_it_touches_the_store(
    option: list[str], tmp_path: Path
) -> None:
    database = tmp_path / "never.db"
    done = run_cli("run", "--app", APP, "--url", f"sqlite:///{database}", *option, cwd=ROOT)
    # NaN below a minimum is a usage error (exit 2); inf is ours (exit 1).
    assert done.returncode in (1, 2), done.stderr
    assert "seconds above 0" in done.stderr or "Invalid value" in done.stderr, done.stderr
    assert not database.exists()  # refused before the store was opened


def test_run_logs_its_start_and_its_stop_at_the_default_level(pg_schema: str) -> None:
    url = f"{PG_DSN.replace('postgres@', 'postgres:s3cret@')}?schema={pg_schema}"
    assert "s3cret" in url
    log = run_until_it_holds_a_lease(url, "w-logs")
    started = next(line for line in log.splitlines() if "action=worker_start" in line)
    assert " INFO " in started
    assert "worker=w-logs" in started and "units=7" in started, started
    assert f"schema={pg_schema}" in started and "***" in started, started
    assert "s3cret" not in log
    assert any("action=worker_stop" in line and "w-logs" in line for line in log.splitlines())


def test_run_keeps_to_an_explicit_log_level(tmp_path: Path) -> None:
    """--log-level WARNING is honoured: only the default is raised to INFO."""
    url = f"sqlite:///{tmp_path / 'quiet.db'}"
    log = run_until_it_holds_a_lease(url, "w-quiet", "--log-level", "WARNING")
    assert "action=worker_start" not in log and "action=worker_stop" not in log


def run_until_it_holds_a_lease(url: str, worker_id: str, *options: str) -> str:
    """Run a worker until it holds a lease (its progress, not a clock), stop it with SIGTERM;
    its log."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "projectionist.cli", *options, "run", "--app", APP,
         "--url", url, "--worker-id", worker_id, "--lease-seconds", "2", "--create-schema"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        started = time.monotonic()
        while not _owns_a_lease(url, worker_id):
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() - started < 120, "no lease taken (a hang)"
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        _, log = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == 0, log
    return log


def _owns_a_lease(url: str, worker_id: str) -> bool:
    async def owners() -> set[str | None]:
        async with Application(url, PROJECTIONS) as app:
            return {row.owner for row in (await leases.all_leases(app.read_models)).values()}

    try:
        return worker_id in asyncio.run(owners())
    except ProjectionistError:  # its schema is not applied yet
        return False
