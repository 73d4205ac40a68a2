"""Leases: which worker owns which unit (a projection or one of its partitions), in SQL.

A lease is a row in ``projection_leases`` with an owner, a fencing ``token`` that grows with
every acquisition, and an expiry read from the database's clock. Why leases and not session
advisory locks: a lock is released the moment its connection drops, while the worker may
still be writing through its other connections; a lease outlives connections and is checked
inside every batch's own transaction (``check``), so a batch commits only while its lease
holds. Batches hold the row ``FOR KEY SHARE`` (which does not block the owner's renewals);
a taker locks it ``FOR UPDATE SKIP LOCKED``, so it never takes a unit over under a batch in
flight, and never waits for one either: a paused owner's batch is ended by the database
(``ReadModelStore.guard_transactions``, set by the worker) or, if it was stopped in the middle
of a statement (not idle, so no idle limit applies), by the taker
(``ReadModelStore.end_stuck_transactions`` for the owner of an expired, still locked lease),
and the unit is taken at the next heartbeat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import LeaseLostError
from .operations import db_now
from .readmodel import ReadModelStore, ReadModelTransaction


@dataclass(frozen=True, slots=True)
class Lease:
    unit: str
    owner: str
    token: int


@dataclass(frozen=True, slots=True)
class UnitReport:
    """What an owner publishes about a unit at each heartbeat (read by status)."""

    state: str
    events_per_second: float | None
    last_batch_seconds: float | None
    errors: int
    last_error: str | None


async def register_units(read_models: ReadModelStore, units: dict[str, str]) -> None:
    """Make sure each unit (unit -> projection) has a lease row, owned by nobody if new."""
    async with read_models.transaction() as tx:
        await tx.executemany(
            "INSERT INTO projection_leases (unit, projection) VALUES ($1, $2) "
            "ON CONFLICT (unit) DO NOTHING",
            list(units.items()),
        )


DEFAULT_LEASE_SECONDS = 10.0
"""A worker's lease unless told otherwise; also how long a worker row that names no lease of
its own (written by an older release) counts as live."""


@dataclass(frozen=True, slots=True)
class WorkerEntry:
    """A worker as its heartbeat records it."""

    worker_id: str
    host: str
    pid: int
    lease_seconds: float
    """It is live while its last heartbeat is younger than this; forgotten after three."""


@dataclass(frozen=True, slots=True)
class LiveWorker:
    worker_id: str
    age: float
    """Seconds since its last heartbeat."""
    units: frozenset[str]
    """The units it can run, as it published them (none for a worker of an older release)."""
    projections: frozenset[str]
    """The projections of those units."""


async def heartbeat(
    read_models: ReadModelStore,
    worker: WorkerEntry,
    units: Mapping[str, str],
    *,
    changed: bool,
) -> dict[str, LiveWorker]:
    """Record that ``worker`` is alive; publish the ``units`` it can run (unit -> projection)
    if they ``changed`` since its last heartbeat; forget workers silent for three of their
    leases, with their units; return the live workers by id.

    A worker whose row was forgotten (it was paused that long) publishes its units again
    even if they did not change: they were forgotten with it."""
    async with read_models.transaction() as tx:
        now = db_now(tx)
        beat = await tx.execute(
            f"UPDATE projection_workers SET heartbeat_at = {now}, lease_seconds = $2 "
            "WHERE worker_id = $1",
            worker.worker_id, worker.lease_seconds,
        )  # fmt: skip
        if beat == 0:
            await tx.execute(
                "INSERT INTO projection_workers (worker_id, host, pid, started_at, "
                f"heartbeat_at, lease_seconds) VALUES ($1, $2, $3, {now}, {now}, $4)",
                worker.worker_id, worker.host, worker.pid, worker.lease_seconds,
            )  # fmt: skip
        if changed or beat == 0:
            await _publish(tx, worker.worker_id, units)
        await tx.execute(
            f"DELETE FROM projection_workers WHERE heartbeat_at < {now} - 3 * "
            "COALESCE(lease_seconds, $1)",
            DEFAULT_LEASE_SECONDS,
        )
        await tx.execute(
            "DELETE FROM projection_worker_units WHERE worker_id NOT IN "
            "(SELECT worker_id FROM projection_workers)"
        )
        return await _live_workers(tx, within=None)


async def _publish(tx: ReadModelTransaction, worker_id: str, units: Mapping[str, str]) -> None:
    await tx.execute("DELETE FROM projection_worker_units WHERE worker_id = $1", worker_id)
    if not units:
        return
    await tx.executemany(
        "INSERT INTO projection_worker_units (worker_id, unit, projection) VALUES ($1, $2, $3)",
        [(worker_id, unit, projection) for unit, projection in units.items()],
    )


async def _live_workers(tx: ReadModelTransaction, within: float | None) -> dict[str, LiveWorker]:
    """Workers whose heartbeat is at most ``within`` seconds old (None: younger than their
    own lease), with the units each published, by id."""
    rows = await tx.fetch(
        f"SELECT w.worker_id, {db_now(tx)} - w.heartbeat_at, w.lease_seconds, u.unit, "
        "u.projection FROM projection_workers w LEFT JOIN projection_worker_units u "
        "ON u.worker_id = w.worker_id ORDER BY w.worker_id"
    )
    ages: dict[str, float] = {}
    units: dict[str, dict[str, str]] = {}
    for worker_id, age, lease_seconds, unit, projection in rows:
        limit = within if within is not None else lease_seconds or DEFAULT_LEASE_SECONDS
        if float(age) <= limit:
            ages[worker_id] = float(age)
            mine = units.setdefault(worker_id, {})
            if unit is not None:
                mine[unit] = projection
    return {
        worker_id: LiveWorker(
            worker_id, age, frozenset(units[worker_id]), frozenset(units[worker_id].values())
        )
        for worker_id, age in ages.items()
    }


async def unregister(read_models: ReadModelStore, worker_id: str) -> None:
    """Release every lease of ``worker_id`` and remove it (and its units) from the live
    workers."""
    async with read_models.transaction() as tx:
        await tx.execute(
            "UPDATE projection_leases SET owner = NULL, expires_at = 0, state = NULL "
            "WHERE owner = $1",
            worker_id,
        )
        await tx.execute("DELETE FROM projection_workers WHERE worker_id = $1", worker_id)
        await tx.execute("DELETE FROM projection_worker_units WHERE worker_id = $1", worker_id)


async def free_units(read_models: ReadModelStore, units: list[str]) -> list[str]:
    """Those of ``units`` that nobody holds (never taken, released, or expired)."""
    async with read_models.transaction() as tx:
        rows = await tx.fetch(
            "SELECT unit FROM projection_leases "
            f"WHERE owner IS NULL OR expires_at < {db_now(tx)} ORDER BY unit"
        )
    wanted = set(units)
    return [row[0] for row in rows if row[0] in wanted]


async def acquire(
    read_models: ReadModelStore, unit: str, owner: str, seconds: float
) -> Lease | None:
    """Take ``unit`` if nobody holds it; the token grows by one. None if someone does."""
    async with read_models.transaction() as tx:
        now = db_now(tx)
        # A batch in flight of the previous owner holds the row FOR KEY SHARE: skip the unit
        # this time rather than wait (the owner may be paused); none can commit after we
        # take over.
        rows = await tx.fetch(
            f"SELECT owner, expires_at < {now}, token FROM projection_leases WHERE unit = $1 "
            + tx.sql.take_or_skip,
            unit,
        )
        if not rows or (rows[0][0] is not None and not rows[0][1]):
            return None
        token = int(rows[0][2]) + 1
        await tx.execute(
            f"UPDATE projection_leases SET owner = $2, token = $3, expires_at = {now} + $4, "
            f"state = 'starting', errors = 0, last_error = NULL, reported_at = {now} "
            "WHERE unit = $1",
            unit, owner, token, seconds,
        )  # fmt: skip
    return Lease(unit, owner, token)


async def expired_owner(read_models: ReadModelStore, unit: str) -> str | None:
    """The owner of ``unit`` if its lease has expired without being released, else None."""
    async with read_models.transaction() as tx:
        rows = await tx.fetch(
            f"SELECT owner FROM projection_leases WHERE unit = $1 AND expires_at < {db_now(tx)}",
            unit,
        )
    return rows[0][0] if rows else None


async def renew(
    read_models: ReadModelStore, lease: Lease, seconds: float, report: UnitReport
) -> bool:
    """Extend ``lease`` and publish the unit's figures; False if the lease was lost."""
    async with read_models.transaction() as tx:
        now = db_now(tx)
        changed = await tx.execute(
            f"UPDATE projection_leases SET expires_at = {now} + $4, state = $5, "
            "events_per_second = $6, last_batch_seconds = $7, errors = $8, last_error = $9, "
            f"reported_at = {now} "
            f"WHERE unit = $1 AND owner = $2 AND token = $3 AND expires_at >= {now}",
            lease.unit, lease.owner, lease.token, seconds, report.state,
            report.events_per_second, report.last_batch_seconds, report.errors,
            report.last_error,
        )  # fmt: skip
    return changed == 1


async def release(read_models: ReadModelStore, lease: Lease) -> None:
    async with read_models.transaction() as tx:
        await tx.execute(
            "UPDATE projection_leases SET owner = NULL, expires_at = 0, state = NULL "
            "WHERE unit = $1 AND owner = $2 AND token = $3",
            lease.unit,
            lease.owner,
            lease.token,
        )


async def check(tx: ReadModelTransaction, lease: Lease) -> None:
    """Inside a batch's transaction: raise LeaseLostError unless ``lease`` still holds.

    The row stays locked (FOR KEY SHARE) until the batch commits, so no one can take the
    unit over between this check and the commit."""
    rows = await tx.fetch(
        f"SELECT owner, token, expires_at >= {db_now(tx)} FROM projection_leases "
        f"WHERE unit = $1 {tx.sql.share_with_takers}",
        lease.unit,
    )
    if not rows or rows[0][0] != lease.owner or rows[0][1] != lease.token or not rows[0][2]:
        holder = f"{rows[0][0]} (token {rows[0][1]})" if rows else "nobody"
        raise LeaseLostError(
            f"{lease.owner} lost its lease on {lease.unit!r} (token {lease.token}); "
            f"it is held by {holder}"
        )


@dataclass(frozen=True, slots=True)
class LeaseRow:
    unit: str
    projection: str
    owner: str | None
    """None when nobody holds it (never taken, released or expired)."""
    token: int
    report: UnitReport | None


async def all_leases(read_models: ReadModelStore) -> dict[str, LeaseRow]:
    async with read_models.transaction() as tx:
        rows = await tx.fetch(
            f"SELECT unit, projection, owner, token, expires_at >= {db_now(tx)}, state, "
            "events_per_second, last_batch_seconds, errors, last_error FROM projection_leases"
        )
    leases = {}
    for row in rows:
        held = row[2] is not None and bool(row[4])
        report = UnitReport(row[5], row[6], row[7], int(row[8]), row[9]) if held else None
        leases[row[0]] = LeaseRow(row[0], row[1], row[2] if held else None, int(row[3]), report)
    return leases


async def live_workers(
    read_models: ReadModelStore, within: float | None = None
) -> dict[str, LiveWorker]:
    """Workers whose heartbeat is at most ``within`` seconds old (None: younger than their
    own lease), with the units each can run, by id."""
    async with read_models.transaction() as tx:
        return await _live_workers(tx, within)
