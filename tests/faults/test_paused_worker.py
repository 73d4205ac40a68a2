"""A worker frozen with SIGSTOP in the middle of a batch, while appends go on.

Two ``projectionist run`` processes share the seven units of tests/worker/failover_app.py.
One of them is caught inside a read-model batch (it holds its lease row and checkpoint row
locked) and SIGSTOPped there for three lease periods. The proof:

- the other worker is not held back: its own units keep up with the appends during the
  pause (readers wait only for appenders, not for the paused batch's open transaction);
- the paused batch is ended (by the database's ``idle_in_transaction_session_timeout``, or,
  when the worker stopped in the middle of a statement, by the taker, which ends the stuck
  transactions of an expired lease's owner), and the other worker takes the paused
  worker's units over within about two lease periods;
- after SIGCONT the resumed worker commits nothing under its old leases (fencing): no new
  row carries its old tokens and, per unit, tokens never go back in event order; it stays
  alive, gets a share back at rebalancing, and exits 0 on SIGTERM;
- every event is applied exactly once: the counts equal what was appended, stream by stream.

The worker is stopped inside a batch: either at a statement boundary (its sessions idle in
transaction, the case ``idle_transaction_seconds`` covers) or between the messages of one
statement (asyncpg prepares with Parse/Describe/Flush before Bind/Execute/Sync), which leaves
the session "active", waiting for ClientRead, where no PostgreSQL 15 timeout applies and the
taker ends it. The summary says which one each run caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from projectionist import Application, NewEvent, Position
from tests.conftest import PG_DSN, settle
from tests.worker.failover_app import OWNERSHIP_TABLE, PROJECTIONS
from tests.worker.test_failover import LEASE_SECONDS, log_tails, owners, start_worker

PAUSE_SECONDS = 3 * LEASE_SECONDS
TAKEOVER_BOUND = 2.5 * LEASE_SECONDS
"""From SIGSTOP: the lease runs out (< 1 lease), the paused batch is ended by the database
(1 lease idle) and the next heartbeat (lease / 4) takes the unit."""
CATCH_SECONDS = 15.0
"""How long to try stopping a worker inside a batch (it takes well under a second)."""
POSTGRES_PORT_HEX = f"{urlsplit(PG_DSN).port or 5432:04X}"


@dataclass
class Appended:
    """What the appender wrote, per stream: events, sum of amounts, last version."""

    total: int = 0
    streams: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))


async def test_paused_worker_is_fenced_and_taken_over(pg_schema: str, tmp_path: Path) -> None:
    url = f"{PG_DSN}?schema={pg_schema}"
    app = Application(url, PROJECTIONS, poll_interval=0.2)
    units = [unit for p in PROJECTIONS for unit in p.units]
    assert len(units) == 7
    async with app:
        await app.setup()
        async with app.read_models.transaction() as tx:
            await tx.execute(OWNERSHIP_TABLE)
        connection = await asyncpg.connect(PG_DSN)
        stop_appending = asyncio.Event()
        appended = Appended()

        async def append_forever() -> None:
            n = 0
            while not stop_appending.is_set():
                n += 1
                stream = f"account-{n % 40}"
                amounts = [n % 7 + i for i in range(3)]
                await app.store.append(stream, [NewEvent("Moved", {"amount": a}) for a in amounts])
                totals = appended.streams[stream]
                totals[0] += 3
                totals[1] += sum(amounts)
                totals[2] += 3  # versions start at 1: the last one is the count
                appended.total += 3
                await asyncio.sleep(0.01)

        workers = {name: start_worker(url, pg_schema, name, tmp_path) for name in "ab"}
        appender = asyncio.create_task(append_forever())
        try:
            scenario = Scenario(app, connection, pg_schema, units, workers)
            await scenario.run()
            stop_appending.set()
            await appender
            await settle(app.store)
            head = await app.store.last_committed()
            for projection in PROJECTIONS:
                await app.wait_for(projection.name, head, timeout=60)
            for name in workers:
                workers[name].send_signal(signal.SIGTERM)
            for name in workers:
                assert workers[name].wait(20) == 0, f"worker {name} did not exit cleanly"
            assert set((await owners(connection, pg_schema)).values()) == {None}  # handed back
            await scenario.check_ownership(appended.total)
            for projection in PROJECTIONS:
                assert await counts_of(app, projection.name) == expected_counts(appended), (
                    f"{projection.name}: counts differ from what was appended"
                )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_tails(tmp_path)}") from exc
        finally:
            stop_appending.set()
            with contextlib.suppress(BaseException):
                await appender
            for process in workers.values():
                if process.poll() is None:  # a failed run: never leave a stopped process
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGCONT)
                    process.kill()
                    process.wait(10)
            await connection.close()
        print(scenario.summary())


class Scenario:
    def __init__(
        self,
        app: Application,
        connection: asyncpg.Connection,
        schema: str,
        units: list[str],
        workers: dict[str, subprocess.Popen[bytes]],
    ) -> None:
        self.app = app
        self.connection = connection
        self.schema = schema
        self.units = units
        self.workers = workers
        self.victim = ""
        self.survivor = ""
        self.victim_tokens: dict[str, int] = {}
        self.polls = 0
        self.misses = Misses()
        self.mid_statement = False
        self.batch_ended_after: float | None = None
        self.takeover_seconds: float | None = None
        self.caught_up_after: float | None = None
        self.processed_during_pause = 0
        self.lag_at_end = 0
        self.old_lease_rows = 0

    async def run(self) -> None:
        await wait_until(lambda: self.shared_and_progressing(), 30, "both workers to process")
        stopped_at, batches = await self.stop_one_mid_batch()
        await self.observe_pause(stopped_at, batches)
        os.kill(self.workers[self.victim].pid, signal.SIGCONT)
        await wait_until(
            lambda: self.all_owned_by(set(self.workers)), 30, f"{self.victim} to get a share back"
        )
        assert self.workers[self.victim].poll() is None, f"{self.victim} died after SIGCONT"
        # Rebalanced: the resumed worker's old runners have stopped (its renewals failed
        # before it took new units); none of them may have committed after the pause.
        assert await self.rows_under_old_leases() == self.old_lease_rows, (
            f"{self.victim} committed under a lease it had lost"
        )

    # -- the phases -----------------------------------------------------------------------------

    async def shared_and_progressing(self) -> bool:
        """Both workers hold their fair share (4 and 3 units) and have applied events."""
        held = list((await owners(self.connection, self.schema)).values())
        if sorted(held.count(name) for name in self.workers) != [3, 4] or None in held:
            return False
        written = await self.rows_by_owner()
        return all(written.get(name, 0) > 0 for name in self.workers)

    async def stop_one_mid_batch(self) -> tuple[float, set[int]]:
        """SIGSTOP a worker the moment one of its sessions is seen inside a batch (holding
        its checkpoint row and its lease row). It stays stopped if, once stopped, a batch
        still holds them and every open transaction of the worker waits at a statement
        boundary (idle in transaction). A miss is resumed at once (stopped ~0.1 s, far
        below a lease) and tried again: the batch had committed, or the worker stopped in
        the middle of the protocol of a statement (see ``Misses``). Returns when it
        stopped and the backend pids of its paused batches."""
        deadline = time.monotonic() + CATCH_SECONDS
        ports: dict[str, set[int]] = {}
        while time.monotonic() < deadline:
            if self.polls % 20 == 0:  # the pools may have opened connections
                ports = {name: client_ports(p.pid) for name, p in self.workers.items()}
            self.polls += 1
            seen = await self.sessions(set().union(*ports.values()))
            in_batch = {s.port for s in seen if s.in_batch}
            name = next((name for name in self.workers if ports[name] & in_batch), None)
            if name is None:
                await asyncio.sleep(0.002)
                continue
            process = self.workers[name]
            os.kill(process.pid, signal.SIGSTOP)  # at once: batches are short
            stopped_at = time.monotonic()
            await asyncio.sleep(0.1)  # a statement already sent finishes
            paused = await self.sessions(client_ports(process.pid))
            batches = {s.pid for s in paused if s.in_batch}
            open_ = [s for s in paused if s.in_transaction]
            if not batches:
                self.misses.late += 1
            elif any(
                s.state not in ("idle in transaction", "active")
                or (s.state == "active" and s.wait_event != "ClientRead")
                for s in open_
            ):
                self.misses.busy += 1
            else:
                self.mid_statement = any(s.state == "active" for s in open_)
                self.victim = name
                self.survivor = next(n for n in self.workers if n != name)
                await self.note_victim_leases()
                return stopped_at, batches
            os.kill(process.pid, signal.SIGCONT)
        raise AssertionError(
            f"no worker caught inside a batch in {CATCH_SECONDS:g}s "
            f"({self.polls} polls; misses: {self.misses})"
        )

    async def note_victim_leases(self) -> None:
        held = await owners(self.connection, self.schema)
        leases = await self.connection.fetch(
            f'SELECT unit, token FROM "{self.schema}".projection_leases WHERE owner = $1',
            self.victim,
        )
        self.victim_tokens = {
            r["unit"]: r["token"] for r in leases if held[r["unit"]] == self.victim
        }
        assert self.victim_tokens, f"{self.victim} was in a batch but owns no unit"

    async def observe_pause(self, stopped_at: float, batches: set[int]) -> None:
        """Keep the victim stopped for PAUSE_SECONDS, watching the survivor and the leases."""
        own_units = [u for u in self.units if u not in self.victim_tokens]
        head_at_stop = await self.app.store.last_committed()
        rows_at_stop = await self.rows_of_units(own_units)
        heads: list[tuple[float, Position]] = []  # (seconds since SIGSTOP, head then)
        deadline = stopped_at + PAUSE_SECONDS
        while (now := time.monotonic()) < deadline:
            elapsed = now - stopped_at
            heads.append((elapsed, await self.app.store.last_committed()))
            if self.batch_ended_after is None and not await self.connection.fetchval(
                "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = ANY($1::int[]))",
                list(batches),
            ):
                self.batch_ended_after = elapsed
            if self.caught_up_after is None and await self.passed(own_units, head_at_stop):
                self.caught_up_after = elapsed
            if self.takeover_seconds is None and await self.all_owned_by({self.survivor}):
                self.takeover_seconds = elapsed
            await asyncio.sleep(0.05)
        assert self.workers[self.victim].poll() is None, f"{self.victim} died while stopped"
        self.old_lease_rows = await self.rows_under_old_leases()
        self.processed_during_pause = await self.rows_of_units(own_units) - rows_at_stop
        at_end = await self.positions(own_units)
        slowest = min((p for p in at_end.values() if p is not None), default=head_at_stop)
        self.lag_at_end = await self.app.store.count_after(slowest)
        pause = f"in the {PAUSE_SECONDS:g}s pause"

        # The paused batch was ended (it held the lease row the taker needs).
        assert self.batch_ended_after is not None, f"the paused batch was not ended {pause}"
        # The survivor was not held back: its own units applied events during the pause,
        # moved past everything appended before it while the paused batch was still open
        # (readers wait for appenders only), and ended the pause less than one lease period
        # behind the appends.
        assert self.processed_during_pause > 0, f"{self.survivor} applied nothing {pause}"
        assert self.caught_up_after is not None, (
            f"{self.survivor}'s units {own_units} did not pass {head_at_stop} {pause}: {at_end}"
        )
        assert self.caught_up_after < self.batch_ended_after, (
            f"{self.survivor}'s units passed the head at SIGSTOP only after "
            f"{self.caught_up_after:.2f}s, once the paused batch had ended "
            f"({self.batch_ended_after:.2f}s): held back by it"
        )
        recent = max(head for elapsed, head in heads if elapsed <= PAUSE_SECONDS - LEASE_SECONDS)
        assert all(p is not None and p >= recent for p in at_end.values()), (
            f"{self.survivor}'s units {at_end} fell more than {LEASE_SECONDS:g}s behind "
            f"the appends ({recent})"
        )
        # The survivor took every unit of the paused worker over.
        assert self.takeover_seconds is not None, (
            f"{self.survivor} did not take {sorted(self.victim_tokens)} over {pause}: "
            f"{await owners(self.connection, self.schema)}\n{await self.victim_sessions()}"
        )
        assert self.takeover_seconds <= TAKEOVER_BOUND, (
            f"takeover took {self.takeover_seconds:.2f}s (bound {TAKEOVER_BOUND:g}s)"
        )

    async def check_ownership(self, appended: int) -> None:
        """Exactly once per projection; per unit, lease tokens never go back in event order;
        the paused worker's old leases gained no row after it was stopped."""
        rows = await self.connection.fetch(
            f'SELECT projection, unit, tx_id, seq, owner, token FROM "{self.schema}".ownership'
        )
        per_projection: dict[str, list[tuple[int, int]]] = defaultdict(list)
        by_unit: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for row in rows:
            per_projection[row["projection"]].append((row["tx_id"], row["seq"]))
            by_unit[row["unit"]].append(row)
        for projection in PROJECTIONS:
            applied = per_projection[projection.name]
            assert len(applied) == len(set(applied)) == appended, projection.name
        for unit, unit_rows in by_unit.items():
            unit_rows.sort(key=lambda r: (r["tx_id"], r["seq"]))
            tokens = [r["token"] for r in unit_rows]
            assert tokens == sorted(tokens), f"{unit}: a fenced owner wrote after its successor"
            owner_of = {(r["token"], r["owner"]) for r in unit_rows}
            assert len(owner_of) == len({t for t, _ in owner_of}), f"{unit}: one token, 2 owners"
        for unit, token in self.victim_tokens.items():
            newer = {r["token"] for r in by_unit[unit] if r["token"] > token}
            assert newer, f"{unit}: no owner after {self.victim} (token {token}) wrote to it"
        assert await self.rows_under_old_leases() == self.old_lease_rows

    def summary(self) -> str:
        return (
            f"paused worker {self.victim} (caught mid-batch after {self.polls} polls, "
            f"misses {self.misses}; "
            f"units {sorted(self.victim_tokens)}, stopped "
            f"{'mid-statement' if self.mid_statement else 'at a statement boundary'}): "
            f"batch ended after "
            f"{self.batch_ended_after:.2f}s, takeover after {self.takeover_seconds:.2f}s "
            f"(bound {TAKEOVER_BOUND:g}s); {self.survivor}'s own units passed the head at "
            f"SIGSTOP after {self.caught_up_after:.2f}s and applied "
            f"{self.processed_during_pause} events during the {PAUSE_SECONDS:g}s pause, ending "
            f"it at most {self.lag_at_end} events behind"
        )

    # -- queries --------------------------------------------------------------------------------

    async def all_owned_by(self, names: set[str]) -> bool:
        held = await owners(self.connection, self.schema)
        return set(held) == set(self.units) and set(held.values()) == names

    async def rows_by_owner(self) -> dict[str, int]:
        rows = await self.connection.fetch(
            f'SELECT owner, count(*) FROM "{self.schema}".ownership GROUP BY owner'
        )
        return {row[0]: int(row[1]) for row in rows}

    async def rows_of_units(self, units: list[str]) -> int:
        return int(
            await self.connection.fetchval(
                f'SELECT count(*) FROM "{self.schema}".ownership WHERE unit = ANY($1::text[])',
                units,
            )
        )

    async def rows_under_old_leases(self) -> int:
        """Rows the paused worker wrote under the leases it held when it was stopped."""
        return int(
            await self.connection.fetchval(
                f'SELECT count(*) FROM "{self.schema}".ownership o JOIN '
                "unnest($2::text[], $3::bigint[]) AS l(unit, token) "
                "ON o.unit = l.unit AND o.token = l.token WHERE o.owner = $1",
                self.victim,
                list(self.victim_tokens),
                list(self.victim_tokens.values()),
            )
        )

    async def positions(self, units: list[str]) -> dict[str, Position | None]:
        checkpoints = await self.app.read_models.checkpoints()
        return {u: checkpoints[u].position if u in checkpoints else None for u in units}

    async def passed(self, units: list[str], position: Position) -> bool:
        at = await self.positions(units)
        return all(p is not None and p >= position for p in at.values())

    async def sessions(self, ports: set[int]) -> list[Session]:
        """The database sessions of the connections from ``ports``."""
        rows = await self.connection.fetch(
            "SELECT s.pid, s.client_port, s.state, s.wait_event, s.xact_start IS NOT NULL, "
            "(SELECT count(DISTINCT l.relation) FROM pg_locks l WHERE l.pid = s.pid "
            " AND l.granted AND l.mode = 'RowShareLock' "
            " AND l.relation IN ($1::text::regclass, $2::text::regclass)) = 2, "
            "left(s.query, 100) FROM pg_stat_activity s WHERE s.client_port = ANY($3::int[])",
            f'"{self.schema}".projection_checkpoints',
            f'"{self.schema}".projection_leases',
            list(ports),
        )
        return [Session(*row) for row in rows]

    async def victim_sessions(self) -> str:
        """For a failure message."""
        paused = await self.sessions(client_ports(self.workers[self.victim].pid))
        return f"{self.victim}'s sessions:\n" + "\n".join(map(str, paused))


@dataclass(frozen=True)
class Session:
    pid: int
    port: int
    state: str | None
    wait_event: str | None
    in_transaction: bool
    in_batch: bool
    """Inside a batch: holding a checkpoint row FOR UPDATE and a lease row FOR KEY SHARE
    (both a RowShareLock on their table)."""
    query: str | None


@dataclass
class Misses:
    """Stops that did not catch a batch waiting at a statement boundary."""

    late: int = 0
    """No batch held its rows any more: it had committed."""
    busy: int = 0
    """A statement of the worker was still running 0.1 s after the stop."""


def client_ports(pid: int) -> set[int]:
    """Local TCP ports of process ``pid``'s connections to PostgreSQL (Linux /proc)."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[9] in inodes and fields[2].endswith(f":{POSTGRES_PORT_HEX}"):
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await condition():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def expected_counts(appended: Appended) -> list[tuple[object, ...]]:
    return sorted((stream, *totals) for stream, totals in appended.streams.items())


async def counts_of(app: Application, name: str) -> list[tuple[object, ...]]:
    async with app.read_models.transaction() as tx:
        rows = await tx.fetch(f"SELECT stream_id, events, amount, last_version FROM {name}_counts")
    return sorted(tuple(row) for row in rows)
