"""The protocols the worker depends on: an application is a ``WorkerHost``; a projection's
runner and a blue/green build are both ``UnitWork``; what a unit's lease publishes.

The annotated assignments are the proof that mypy (strict, run on the tests) checks; the
tests run them on real stores so that the objects are the ones a worker gets.
"""

from __future__ import annotations

from projectionist import Application
from projectionist.bluegreen import BlueGreenBuild
from projectionist.events import Position
from projectionist.operations import Fault
from projectionist.partitions import Partition
from projectionist.runner import RunnerState
from projectionist.units import UnitWork, WorkerHost, unit_report
from tests.conftest import PG_DSN
from tests.engine.projections import ledger


async def test_an_application_hosts_workers_and_its_runners_are_unit_work() -> None:
    async with Application("memory://", [ledger(partitions=2)]) as app:
        host: WorkerHost = app
        projection = host.projections["ledger"]
        work: UnitWork = host.new_runner(projection, Partition(1, 2))
        assert work.unit == "ledger#1/2"
        assert host.read_models_for(projection) is host.read_models


async def test_a_blue_green_build_is_unit_work(pg_schema: str) -> None:
    async with Application(f"{PG_DSN}?schema={pg_schema}", [ledger()]) as app:
        build: UnitWork = BlueGreenBuild(app.store, app.read_models, ledger())
        assert build.unit == "ledger~v1"
        assert build.state is RunnerState.STOPPED


async def test_a_unit_reports_its_note_its_fault_or_its_state() -> None:
    async with Application("memory://", [ledger()]) as app:
        runner = app.new_runner(app.projections["ledger"])
        assert unit_report(runner, None, running=False).state == "starting"
        assert unit_report(runner, "needs rebuild", running=False).state == "needs rebuild"
        runner.state = RunnerState.LIVE
        runner.errors, runner.last_error = 2, "OSError: gone"
        report = unit_report(runner, None, running=True)
        assert (report.state, report.errors, report.last_error) == ("live", 2, "OSError: gone")
        runner.fault = _fault()
        assert unit_report(runner, None, running=True).state == "faulted"


def _fault() -> Fault:
    return Fault(
        unit="ledger",
        projection="ledger",
        version=1,
        position=Position(1, 0),
        stream_id="s",
        stream_version=1,
        event_type="Deposited",
        error="ValueError: no",
        traceback="",
        attempts=1,
        failed_at=0.0,
    )
