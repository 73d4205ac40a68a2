"""Open transactions that are not this store's appends do not hold its readers back; an open
append does, and status says so truthfully.

A transaction held open in another database of the cluster for 20 s while events are appended
continuously: the projection keeps up the whole time (sampled every half second, its
checkpoint moves and its lag stays small), status never blames that transaction
(``held_back_by`` None, ``held_back_seconds`` 0), and its lag is truthful: exactly the count
of committed events after the checkpoint, taken right after the status call (the appender
waits the few milliseconds of each sample, so nothing commits in between). Once, the
projection is stopped for a second while appends go on: the lag is then that whole backlog,
and ``lag_seconds`` its age. The samples also check that the cluster's oldest transaction
(the bound readers used to wait for) was held back by the foreign one all along.

An appending transaction held open in the same store for 3 s while other appends commit: their
events are committed but invisible, status reports them as lag, how long they have waited, and
the holder's process id (not its SQL); once it commits, everything is processed exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from projectionist import Application, Position, ProjectionStatus, RecordedEvent
from projectionist.backends.postgres import PostgresEventStore
from tests.conftest import PG_DSN, connect_other_database, settle
from tests.engine.projections import ledger, money

HOLD = 20.0  # seconds the other database's transaction stays open, appends running
STOPPED_AT = 9.0  # seconds into the hold: the projection stops for a moment
STOPPED_FOR = 1.0  # seconds the projection stays stopped while appends go on
SAMPLE_EVERY = 0.5  # seconds between samples of status
APPEND_EVERY = 0.01  # seconds between appends (each of EVENTS_PER_APPEND events)
EVENTS_PER_APPEND = 3
STREAMS = 12
LAG_WINDOW = 2.0
"""The projection counts as keeping up while its lag stays below what the appender committed
in this many seconds before the sample."""
MIN_LAG_LIMIT = 50  # events; the bound when the appender itself was slow
APPENDING_HOLD = 3.0  # seconds an appending transaction stays open in the second test
CATCH_UP = 20.0  # seconds allowed to catch up at the end (normally well under one)
HANDLED = {"Deposited", "Withdrawn", "Audited"}


class Appender:
    """Appends EVENTS_PER_APPEND events every APPEND_EVERY seconds until finished; ``paused``
    holds it between two appends."""

    def __init__(self, app: Application) -> None:
        self.app = app
        self.recorded: list[RecordedEvent] = []
        self.times: list[tuple[float, int]] = []  # (monotonic time, events recorded by then)
        self._turn = asyncio.Lock()
        self._finished = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        n = 0
        while not self._finished:
            async with self._turn:
                if self._finished:
                    return
                n += 1
                result = await self.app.store.append(
                    f"acct-{n % STREAMS}", money(n, EVENTS_PER_APPEND)
                )
                self.recorded.extend(result.events)
                self.times.append((time.monotonic(), len(self.recorded)))
            await asyncio.sleep(APPEND_EVERY)

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No append is in flight inside this block: every committed one is recorded."""
        async with self._turn:
            yield

    def appended_since(self, seconds: float) -> int:
        since = time.monotonic() - seconds
        before = next((count for at, count in reversed(self.times) if at < since), 0)
        return len(self.recorded) - before

    async def finish(self) -> None:
        self._finished = True
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)


@dataclass(frozen=True)
class Sample:
    status: ProjectionStatus
    position: Position
    exact_after: int
    """Committed events after ``position``, counted one by one right after the status call."""
    ours_after: int
    """Events the test appended after ``position``."""
    lag_limit: int
    cluster_xmin: int


class Scenario:
    def __init__(self, app: Application, schema: str, admin: asyncpg.Connection) -> None:
        self.app = app
        self.schema = schema
        self.admin = admin

    async def status(self) -> ProjectionStatus:
        statuses = await self.app.status()
        assert [s.name for s in statuses] == ["ledger"], statuses
        return statuses[0]

    async def exact_after(self, position: Position) -> int:
        """Committed events after ``position``, visible to readers or not, one by one."""
        count: int = await self.admin.fetchval(
            f'SELECT count(*) FROM "{self.schema}".events WHERE (tx_id, position) > ($1, $2)',
            position.tx,
            position.seq,
        )
        return count

    async def sample(self, appender: Appender) -> Sample:
        """Status with no append in flight (the appender waits a few milliseconds; the
        projection runs on): its lag must then be the exact backlog of its checkpoint."""
        async with appender.paused():
            status = await self.status()
            assert status.position is not None, "the projection has no checkpoint"
            exact = await self.exact_after(status.position)
            ours = sum(e.position > status.position for e in appender.recorded)
        xmin = await self.admin.fetchval(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        )
        limit = max(MIN_LAG_LIMIT, appender.appended_since(LAG_WINDOW))
        return Sample(status, status.position, exact, ours, limit, xmin)

    def run_projection(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.app.run())


def check_truthful(sample: Sample) -> None:
    """The lag is the exact count of committed events after the checkpoint (no append was
    in flight, and events are never deleted), all of them the test's."""
    status = sample.status
    assert not status.lag_estimated, f"lag {status.lag} estimated"
    assert status.lag == sample.exact_after == sample.ours_after, (
        f"status lag {status.lag} while {sample.exact_after} committed events wait after "
        f"{sample.position} ({sample.ours_after} of them appended by the test)"
    )
    assert status.lag_seconds is not None
    assert (status.lag > 0) == (status.lag_seconds > 0), (
        f"lag {status.lag} but lag_seconds {status.lag_seconds}"
    )


def check_not_held_back(sample: Sample, foreign_xid: int) -> None:
    status = sample.status
    assert status.held_back_by is None, f"held back by {status.held_back_by!r}"
    assert status.held_back_seconds == 0.0, f"held back {status.held_back_seconds}s"
    # Readers bounded by the cluster's oldest transaction would see none of these events.
    assert sample.cluster_xmin <= foreign_xid, (
        f"the cluster's xmin {sample.cluster_xmin} passed the foreign transaction {foreign_xid}"
    )


def check_keeping_up(samples: list[Sample], phase: str) -> None:
    assert len(samples) >= 4, f"{phase}: only {len(samples)} samples"
    for earlier, later in itertools.pairwise(samples):
        assert later.position > earlier.position, (
            f"{phase}: the checkpoint stayed at {earlier.position} for {SAMPLE_EVERY}s"
        )
    for sample in samples[1:]:  # the first of a phase may still catch up on a backlog
        assert sample.status.lag < sample.lag_limit, (
            f"{phase}: lag {sample.status.lag}, more than the {sample.lag_limit} events "
            f"appended in the last {LAG_WINDOW}s"
        )


async def check_exactly_once(app: Application, recorded: list[RecordedEvent]) -> None:
    """Every handled event once in the ledger, and per-stream totals counted once each."""
    async with app.read_models.transaction() as tx:
        seen = await tx.fetch("SELECT event_id FROM ledger_seen")
        totals = await tx.fetch("SELECT stream_id, events FROM ledger_totals")
    ids = [str(row[0]) for row in seen]
    handled = [e for e in recorded if e.type in HANDLED]
    assert len(ids) == len(set(ids))
    assert set(ids) == {str(e.id) for e in handled}, (
        f"{len({str(e.id) for e in handled} - set(ids))} events missing, "
        f"{len(set(ids) - {str(e.id) for e in handled})} unexpected"
    )
    counted = Counter(e.stream_id for e in handled if e.type != "Audited")
    assert {str(row[0]): row[1] for row in totals} == dict(counted)


@pytest.fixture
async def app(pg_schema: str) -> AsyncIterator[Application]:
    application = Application(f"{PG_DSN}?schema={pg_schema}", [ledger()])
    async with application:
        await application.setup()
        yield application


async def test_foreign_transaction_does_not_hold_readers_back(
    app: Application, pg_schema: str
) -> None:
    admin = await asyncpg.connect(PG_DSN)
    foreign = await connect_other_database()
    scenario = Scenario(app, pg_schema, admin)
    appender = Appender(app)
    running: asyncio.Task[None] | None = None
    before: list[Sample] = []
    after: list[Sample] = []
    try:
        await foreign.execute("BEGIN")
        foreign_xid = await foreign.fetchval("SELECT pg_current_xact_id()::text::bigint")
        opened = time.monotonic()
        running = scenario.run_projection()
        appender.start()

        while time.monotonic() - opened < STOPPED_AT:
            await asyncio.sleep(SAMPLE_EVERY)
            before.append(sample := await scenario.sample(appender))
            check_truthful(sample)
            check_not_held_back(sample, foreign_xid)

        # Stopped, appends going on, then paused: the lag is the exact backlog.
        app.stop()
        await asyncio.wait_for(running, 30)
        stopped_with = len(appender.recorded)
        await asyncio.sleep(STOPPED_FOR)
        async with appender.paused():
            status = await scenario.status()
            assert status.position is not None
            exact = await scenario.exact_after(status.position)
            ours = sum(e.position > status.position for e in appender.recorded)
        waited = len(appender.recorded) - stopped_with
        assert waited > 0, f"nothing was appended in the {STOPPED_FOR}s the projection stopped"
        assert status.lag == exact == ours, (
            f"stopped: status lag {status.lag}, {exact} committed events after its "
            f"checkpoint, {ours} of them appended by the test"
        )
        assert status.lag >= waited
        assert status.lag_seconds is not None and status.lag_seconds >= STOPPED_FOR / 2, (
            f"lag_seconds {status.lag_seconds} with events waiting since the stop"
        )
        assert status.held_back_by is None and status.held_back_seconds == 0.0
        stopped_status = status

        running = scenario.run_projection()
        while time.monotonic() - opened < HOLD:
            await asyncio.sleep(SAMPLE_EVERY)
            after.append(sample := await scenario.sample(appender))
            check_truthful(sample)
            check_not_held_back(sample, foreign_xid)

        assert foreign.is_in_transaction()
        still = await foreign.fetchval("SELECT pg_current_xact_id_if_assigned()::text::bigint")
        assert still == foreign_xid, "the foreign transaction ended early"
        held_for = time.monotonic() - opened
        await appender.finish()
        await foreign.execute("ROLLBACK")
        last = await app.store.last_committed()
        await settle(app.store)
        await app.wait_for("ledger", last, timeout=CATCH_UP)
        final = await scenario.status()
    finally:
        await appender.finish()
        app.stop()
        if running is not None:
            await asyncio.wait_for(running, 30)
        await foreign.close()
        await admin.close()

    samples = before + after
    print(
        f"\n{len(appender.recorded)} events in {held_for:.1f}s with foreign xid {foreign_xid} "
        f"open; lags sampled {[s.status.lag for s in samples]}, limits "
        f"{min(s.lag_limit for s in samples)}..{max(s.lag_limit for s in samples)}; "
        f"stopped: lag {stopped_status.lag}, lag_seconds {stopped_status.lag_seconds:.2f}"
    )
    check_keeping_up(before, "before the stop")
    check_keeping_up(after, "after the restart")
    assert final.lag == 0 and final.lag_seconds == 0.0, final
    assert final.held_back_by is None and final.held_back_seconds == 0.0, final
    await check_exactly_once(app, appender.recorded)


async def test_open_append_holds_readers_back_and_status_names_it(
    app: Application, pg_schema: str
) -> None:
    store = app.store
    assert isinstance(store, PostgresEventStore)
    admin = await asyncpg.connect(PG_DSN)
    holder = await asyncpg.connect(PG_DSN)
    scenario = Scenario(app, pg_schema, admin)
    running = scenario.run_projection()
    recorded: list[RecordedEvent] = []
    samples: list[ProjectionStatus] = []
    try:
        for n in range(5):
            recorded += (await store.append(f"acct-{n}", money(n, EVENTS_PER_APPEND))).events
        await settle(store)
        await app.wait_for("ledger", recorded[-1].position, timeout=CATCH_UP)
        caught_up = await scenario.status()
        assert caught_up.lag == 0 and caught_up.held_back_by is None, caught_up

        await holder.execute("BEGIN")
        held = await store.append_on(holder, "held", money(0, 2))
        holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
        holder_sql = await admin.fetchval(
            "SELECT query FROM pg_stat_activity WHERE pid = $1", holder_pid
        )
        waiting: list[RecordedEvent] = []
        opened = time.monotonic()
        n = 0
        next_sample = opened + SAMPLE_EVERY
        while time.monotonic() - opened < APPENDING_HOLD:
            n += 1
            waiting += (await store.append(f"acct-{n % STREAMS}", money(n, 2))).events
            if time.monotonic() >= next_sample:
                next_sample += SAMPLE_EVERY
                samples.append(status := await scenario.status())
                assert status.lag > 0, f"lag 0 while {len(waiting)} committed events wait"
                assert status.held_back_by is not None, "nothing reported as holding back"
                assert f"pid {holder_pid}" in status.held_back_by, status.held_back_by
            await asyncio.sleep(0.02)

        # Appends quiet, the holder still open: the lag is every event committed meanwhile.
        status = await scenario.status()
        assert status.position is not None
        exact = await scenario.exact_after(status.position)
        assert status.position == caught_up.position, "the projection read past the holder"
        assert all(held.events[0].position < e.position for e in waiting)
        assert status.lag == exact == len(waiting), (
            f"status lag {status.lag}, {exact} committed after the checkpoint, "
            f"{len(waiting)} appended while the holder was open"
        )
        assert status.lag_seconds is not None and status.lag_seconds > 0, status
        assert status.held_back_seconds > 0, status
        assert status.held_back_by is not None
        assert f"pid {holder_pid}" in status.held_back_by, status.held_back_by
        assert holder_sql and holder_sql not in status.held_back_by
        assert "append_events" not in status.held_back_by, status.held_back_by
        held_status = status

        await holder.execute("COMMIT")
        store.events_committed()
        recorded += [*held.events, *waiting]
        await settle(store)
        await app.wait_for("ledger", waiting[-1].position, timeout=CATCH_UP)
        final = await scenario.status()
    finally:
        app.stop()
        await asyncio.wait_for(running, 30)
        await holder.close()
        await admin.close()

    print(
        f"\nappending transaction of pid {holder_pid} open {APPENDING_HOLD}s: lag "
        f"{[s.lag for s in samples]} -> {held_status.lag}, held_back_seconds "
        f"{held_status.held_back_seconds:.2f}, lag_seconds {held_status.lag_seconds:.2f}, "
        f"held_back_by {held_status.held_back_by!r}"
    )
    assert len(samples) >= 3, f"only {len(samples)} samples while the holder was open"
    lags = [s.lag for s in samples]
    assert lags == sorted(set(lags)), f"the waiting backlog did not grow: {lags}"
    assert final.lag == 0 and final.held_back_by is None and final.held_back_seconds == 0.0
    await check_exactly_once(app, recorded)
