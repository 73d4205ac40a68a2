"""Proof that a projector survives SIGKILL at any moment: no event is lost or applied twice.

The parent appends 50,000 events, then runs the projector of projector_child.py in a child
process and kills it with SIGKILL at random moments during catch-up, more than 20 times,
restarting it each time; a last child runs to the head. The projection only increments
counters, so a batch applied twice or lost would show. At the end the read model must equal
the totals computed here from the appended events, and a clean rebuild, row for row; the
checkpoint must stand at the store's head, having counted every handled event exactly once.

Kill timing: most children are killed by the parent on progress, never on a clock: they run
with ``--step`` (tests/faults/stepping.py), report each commit and wait for a go-ahead, and
the parent kills one after a random number of batches, drawn from a share of the batches
still left, so the kills spread over the whole catch-up and it cannot finish early, however
fast or loaded the machine. Some children are killed during start-up instead, at a random
fraction of the measured start-up time (imports, connecting, ``setup()``). And some kill
themselves right after their N-th read-model commit (N random):
the instant between a batch's commit and the next one is too short for kills from outside
to hit reliably, yet it is where a checkpoint saved apart from its rows would be caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from projectionist import START, Application, NewEvent, Position
from tests.conftest import PG_DSN
from tests.faults.projector_child import (
    DONE,
    IGNORED,
    LEDGER_KEYS,
    NOTED,
    READY,
    SIGNED,
    ledger,
)
from tests.faults.stepping import kill_after_batches

SEED = 20_240_917
STREAMS = 1_000
EVENTS_PER_STREAM = 50
APPEND_SIZE = 25  # events per append; streams take turns, so they interleave
MIX = {"Deposited": 3, "Withdrawn": 2, NOTED: 4, IGNORED: 1}  # relative weights of types
CATCH_UP_KILLS = 24  # random kills from outside during catch-up; the proof needs 20+
COMMIT_KILLS = 8  # kills right after a random commit (a window random kills rarely hit)
MAX_COMMITS = 8  # such a child dies after one of its first MAX_COMMITS commits
START_UP_KILL_RATE = 0.12  # chance that a child is killed during start-up instead
MAX_CHILDREN = 80  # bounds the loop if kills keep missing
READY_TIMEOUT = 30.0  # seconds a child may take to report catching-up
FINAL_TIMEOUT = 120.0  # seconds a child may take to end (the last: to reach the head)
REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD = "tests.faults.projector_child"

Row = tuple[Any, ...]
Tables = dict[str, list[Row]]


@pytest.fixture(params=["sqlite", "postgres"])
def crash_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'crash.db'}"
    schema = request.getfixturevalue("pg_schema")
    return f"{PG_DSN}?schema={schema}"


# -- the history and what it must produce -------------------------------------------------------


@dataclass
class Expected:
    """The read model ``ledger`` must hold after applying every event exactly once."""

    events: int = 0
    handled: int = 0
    totals: dict[str, list[int]] = field(default_factory=dict)
    accounts: dict[str, list[int]] = field(default_factory=dict)
    notes: dict[str, list[int]] = field(default_factory=dict)

    def add(self, stream_id: str, version: int, event: NewEvent) -> None:
        self.events += 1
        if event.type == IGNORED:
            return
        self.handled += 1
        if event.type == NOTED:
            size = len(event.data["text"])
            add_to(self.totals.setdefault(NOTED, [0, 0]), 1, size)
            add_to(self.notes.setdefault(stream_id, [0, 0]), 1, size)
            return
        amount = event.data["amount"]
        add_to(self.totals.setdefault(event.type, [0, 0]), 1, amount)
        account = self.accounts.setdefault(stream_id, [0, 0, 0, 0])
        add_to(account, 1, SIGNED[event.type] * amount)
        account[2] = version  # last version; regressions (account[3]) stay 0

    def tables(self) -> Tables:
        totals = {type_: [0, 0] for type_ in (*SIGNED, NOTED)} | self.totals
        return {
            "ledger_totals": rows(totals),
            "ledger_accounts": rows(self.accounts),
            "ledger_notes": rows(self.notes),
        }


def add_to(counters: list[int], *amounts: int) -> None:
    for index, amount in enumerate(amounts):
        counters[index] += amount


def rows(by_key: dict[str, list[int]]) -> list[Row]:
    return [(key, *values) for key, values in sorted(by_key.items())]


def history(rng: random.Random) -> Iterator[tuple[str, list[NewEvent]]]:
    """The appends, in order: every stream gets APPEND_SIZE events per round."""
    types, weights = list(MIX), list(MIX.values())
    for _ in range(EVENTS_PER_STREAM // APPEND_SIZE):
        for stream in range(STREAMS):
            events = []
            for type_ in rng.choices(types, weights, k=APPEND_SIZE):
                if type_ == NOTED:
                    data: dict[str, Any] = {"text": "n" * rng.randrange(1, 40)}
                else:
                    data = {"amount": rng.randrange(1, 10_000)}
                events.append(NewEvent(type_, data))
            yield f"account-{stream:04d}", events


async def append_history(app: Application, rng: random.Random) -> Expected:
    expected = Expected()
    versions: Counter[str] = Counter()
    for stream_id, events in history(rng):
        await app.store.append(stream_id, events)
        for event in events:
            versions[stream_id] += 1
            expected.add(stream_id, versions[stream_id], event)
    return expected


# -- reading the read model ---------------------------------------------------------------------


async def read_tables(app: Application) -> Tables:
    async with app.read_models.transaction() as tx:
        return {
            table: await tx.fetch(f"SELECT * FROM {table} ORDER BY {key}")
            for table, key in LEDGER_KEYS.items()
        }


def differences(actual: Tables, expected: Tables) -> list[str]:
    """What differs, table by table, at most a few rows each (the tables are long)."""
    found = []
    for table in expected:
        have, want = actual.get(table, []), expected[table]
        if have == want:
            continue
        wrong = [(h, w) for h, w in zip(have, want, strict=False) if h != w]
        found.append(
            f"{table}: {len(have)} rows, expected {len(want)}; {len(wrong)} differ, e.g. "
            + "; ".join(f"{h} instead of {w}" for h, w in wrong[:3])
        )
    return found


async def position(app: Application) -> tuple[Position, int]:
    """The checkpoint of ``ledger`` (START before the first set-up) and its event count."""
    checkpoint = await app.read_models.checkpoint(ledger.name)
    if checkpoint is None:
        return START, 0
    return checkpoint.position, checkpoint.events_processed


# -- the children -------------------------------------------------------------------------------


class How(enum.StrEnum):
    """Where a child is killed."""

    CATCH_UP = "catch-up"
    """By the parent, after a random number of the child's batches."""
    START_UP = "start-up"
    """By the parent, a random fraction of the measured start-up time after the spawn."""
    COMMIT = "commit"
    """By itself, right after its N-th read-model commit (N random)."""


@dataclass
class Child:
    """One child's life and how it ended."""

    how: How
    startup: float | None = None
    """Seconds from spawn to catching-up, when the parent waited for that."""
    delay: float = 0.0
    """Seconds between the spawn and the parent's kill, at start-up."""
    commits: int = 0
    """The commit after which the child is killed (by the parent during catch-up, by itself
    at a commit)."""
    returncode: int | None = None
    progress: int = 0
    """Events the checkpoint moved past during this life."""
    left: int = 0
    """Events after the checkpoint once the child was dead."""

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    @property
    def during_catch_up(self) -> bool:
        """Killed after it began catching up and before it reached the head."""
        return self.killed and self.how is not How.START_UP and self.left > 0


async def spawn(url: str, *options: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        CHILD,
        url,
        *options,
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process, what: str) -> tuple[str, str]:
    """Wait for the child's end and return its output; fail if it died of an error."""
    try:
        out, err = await asyncio.wait_for(process.communicate(), FINAL_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{what} did not end within {FINAL_TIMEOUT}s")
    if process.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"{what} exited with {process.returncode}:\n{err.decode()}")
    return out.decode(), err.decode()


async def wait_until_ready(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
    except TimeoutError:
        process.kill()
        await finish(process, "a child that never reported catching-up")
        pytest.fail(f"the child did not report {READY!r} within {READY_TIMEOUT}s")
    if line.decode().strip() != READY:
        await finish(process, "a child that did not report catching-up")
        pytest.fail(f"the child printed {line!r} instead of {READY!r}")


@dataclass
class Crashes:
    """Children started one after another on one store, each killed somewhere."""

    app: Application
    url: str
    rng: random.Random
    left: int
    """Events after the checkpoint now."""
    checkpoint: Position = START
    children: list[Child] = field(default_factory=list)

    def count(self, how: How) -> int:
        return sum(c.during_catch_up for c in self.children if c.how is how)

    def pick(self) -> How:
        """Every third child dies at a commit until there were enough: early on, while a lot
        of catch-up is left; the others mostly by a kill from outside."""
        if not self.children:
            return How.CATCH_UP  # it measures the start-up time
        if len(self.children) % 3 == 1 and self.count(How.COMMIT) < COMMIT_KILLS:
            return How.COMMIT
        if self.count(How.CATCH_UP) >= CATCH_UP_KILLS:
            return How.COMMIT
        if self.rng.random() < START_UP_KILL_RATE:
            return How.START_UP
        return How.CATCH_UP

    def catch_up_batches(self) -> int:
        """A random share of the batches left (at least events left / batch size), leaving
        enough for every kill still to come (so that catch-up cannot end early)."""
        batches_left = self.left // ledger.batch_size
        kills_to_go = CATCH_UP_KILLS - self.count(How.CATCH_UP) + COMMIT_KILLS
        return self.rng.randint(1, max(1, batches_left // (kills_to_go + 3)))

    async def run_one(self) -> Child:
        child = Child(self.pick())
        started = time.monotonic()
        if child.how is How.COMMIT:
            child.commits = self.rng.randint(1, MAX_COMMITS)
            process = await spawn(self.url, "--kill-after-commit", str(child.commits))
        elif child.how is How.START_UP:
            process = await spawn(self.url, "--step")  # no go-ahead: at most one batch
            startups = [c.startup for c in self.children if c.startup is not None]
            child.delay = self.rng.uniform(0.0, statistics.median(startups))
            await asyncio.sleep(child.delay)
            with contextlib.suppress(ProcessLookupError):  # it may have ended by itself
                process.kill()
        else:
            process = await spawn(self.url, "--step")
            await wait_until_ready(process)
            child.startup = time.monotonic() - started
            child.commits = self.catch_up_batches()
            go_on = self.rng.random() < 0.7
            await kill_after_batches(process, child.commits, go_on=go_on, timeout=READY_TIMEOUT)
        await finish(process, f"a child to be killed at {child.how}")
        child.returncode = process.returncode
        self.children.append(child)

        before, (self.checkpoint, _) = self.checkpoint, await position(self.app)
        assert self.checkpoint >= before, f"the checkpoint went back from {before}"
        child.left = await self.app.store.count_after(self.checkpoint)
        child.progress, self.left = self.left - child.left, child.left
        assert child.killed, (
            f"child {len(self.children)} ({child}) ended by itself, so catch-up ended before "
            f"{CATCH_UP_KILLS} kills"
        )
        return child


# -- the proof ----------------------------------------------------------------------------------


async def test_sigkilled_projector_equals_clean_rebuild(crash_url: str) -> None:
    rng = random.Random(SEED)
    timings: dict[str, float] = {}
    clock = time.monotonic()
    async with Application(crash_url, [ledger]) as app:
        await app.store.apply_schema()
        expected = await append_history(app, rng)
        # PostgreSQL may hold the last appends back while an older transaction of the server
        # is open (another test's, say): aim at the last committed event, once visible.
        head = await app.store.last_committed()
        assert await app.store.wait_until_visible(head, timeout=30), f"{head} stays invisible"
        assert await app.store.head() == head
        assert expected.events >= 50_000
        assert await app.store.count_after(START) == expected.events
        timings["append"] = time.monotonic() - clock

        clock = time.monotonic()
        crashes = Crashes(app, crash_url, rng, left=expected.events)
        while crashes.count(How.CATCH_UP) < CATCH_UP_KILLS or (
            crashes.count(How.COMMIT) < COMMIT_KILLS
        ):
            assert len(crashes.children) < MAX_CHILDREN, f"kills missed: {crashes.children}"
            await crashes.run_one()
        timings["kills"] = time.monotonic() - clock

        clock = time.monotonic()
        last = await spawn(crash_url)
        out, err = await finish(last, "the last child")
        assert last.returncode == 0 and out.split() == [READY, DONE, str(head)], (
            f"the last child exited with {last.returncode}, printing {out!r} and {err!r}"
        )
        timings["last child"] = time.monotonic() - clock

        checkpoint, processed = await position(app)
        assert checkpoint == head, f"the checkpoint {checkpoint} is not the head {head}"
        assert processed == expected.handled, "the checkpoint counted events twice or not at all"
        crashed = await read_tables(app)
        wrong = differences(crashed, expected.tables())
        assert not wrong, "the read model is not every event applied once:\n" + "\n".join(wrong)

        clock = time.monotonic()
        assert await app.rebuild(ledger.name) == expected.events
        timings["rebuild"] = time.monotonic() - clock
        rebuilt = await read_tables(app)
        wrong = differences(crashed, rebuilt)
        assert not wrong, "the read model differs from a clean rebuild:\n" + "\n".join(wrong)
        assert await position(app) == (head, expected.handled)

    children = crashes.children
    mid = [c for c in children if c.how is How.CATCH_UP and c.during_catch_up]
    assert len(mid) >= 20
    startups = [c.startup for c in mid if c.startup is not None]
    print(
        f"\n{crash_url.partition(':')[0]}: {expected.events} events, "
        f"{sum(c.killed for c in children)} SIGKILLs: {len(mid)} from outside during catch-up "
        f"({sum(c.progress > 0 for c in mid)} after committing batches in that life: "
        f"{min(c.commits for c in mid)}-{max(c.commits for c in mid)} batches, "
        f"start-up median {statistics.median(startups):.2f}s), "
        f"{crashes.count(How.COMMIT)} self-inflicted at commit boundaries, "
        f"{sum(c.how is How.START_UP for c in children)} during start-up; "
        + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
    )
