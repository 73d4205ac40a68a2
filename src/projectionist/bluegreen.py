"""Blue/green rebuilds: a new version is built beside the old one, then swapped in at once.

Where the read-model store has side schemas (``ReadModelStore.side_schemas()``, which does
the database's part: PostgreSQL). When a projection's ``version`` is raised in code, one
worker builds the new version into a side schema ``pj_build_<hash>_v<N>`` (its handlers'
unqualified tables land there; ``search_path`` puts the side schema first), catching up from
the start while the old version keeps serving reads and, on workers still running the old
code, processing new events. Once caught up, one transaction moves the old tables to
``pj_retired_<hash>_v<M>``, moves the new ones into the store's schema, and hands the new
checkpoints over: readers see the old read model or the new one, never an empty or
half-built one. This module decides what is built and when it is swapped; ``SideSchemas``
moves the tables. The retired schema is dropped after a grace period. The new version's
runners then go on from where the build stopped.

On SQLite and in memory, raising the version needs ``projectionist rebuild`` (in place).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from .errors import ConfigurationError, ProjectionSupersededError
from .events import Position
from .leases import Lease, check
from .preparation import stored_units
from .projection import Projection
from .readmodel import ReadModelStore, ReadModelTransaction, SideSchemas
from .rebuild import refuse_replay
from .recording import OperationsRecords
from .runner import RunnerState, partition_runners
from .source import EventSource

logger = logging.getLogger("projectionist.bluegreen")

BUILD_PREFIX = "pj_build_"
RETIRED_PREFIX = "pj_retired_"


BUILD_MARK = "~v"
"""In a build unit's name, and in no projection's (names are identifiers)."""


def build_unit(projection: Projection) -> str:
    """The lease name of a projection's blue/green build ("name~v3")."""
    return f"{projection.name}{BUILD_MARK}{projection.version}"


def is_build_unit(unit: str) -> bool:
    """Whether ``unit`` names a blue/green build's lease (``build_unit``)."""
    return BUILD_MARK in unit


def side_schema(prefix: str, base: str, name: str, version: int) -> str:
    """A side schema's name, unique to (the base schema, the projection, the version).

    ``base`` is ``SideSchemas.base``: applications in other schemas of the same database have
    side schemas of their own, and the name stays short whatever the projection's name (a
    hash; the schema's comment and the logs say which projection it belongs to)."""
    digest = hashlib.md5(f"{base}\0{name}".encode(), usedforsecurity=False).hexdigest()[:16]
    return f"{prefix}{digest}_v{version}"


def side_schemas_of(read_models: ReadModelStore) -> SideSchemas:
    """The store's side schemas; a ConfigurationError where its database has none."""
    sides = read_models.side_schemas()
    if sides is None:
        raise ConfigurationError(
            "blue/green builds and verification in a side schema need PostgreSQL"
        )
    return sides


async def stale_projections(
    read_models: ReadModelStore, projections: list[Projection]
) -> list[Projection]:
    """Projections whose stored read model is of an older version than the code's, and
    that can be rebuilt: a reactor's raised version takes its checkpoint over instead
    (``preparation``), so no build is started for it."""
    checkpoints = await read_models.checkpoints()
    stale = []
    for projection in projections:
        if not projection.replayable:
            continue
        versions = {c.version for n, c in checkpoints.items() if _owner(n) == projection.name}
        if versions and max(versions) < projection.version:
            stale.append(projection)
    return stale


def _owner(unit: str) -> str:
    return unit.partition("#")[0]


class BlueGreenBuild:
    """The work of the build unit: catch the new version up in its side schema, swap it in.

    It looks like a ProjectionRunner to the worker (run, stop, state, figures)."""

    def __init__(
        self,
        store: EventSource,
        read_models: ReadModelStore,
        projection: Projection,
        lease: Lease | None = None,
        *,
        retire_after: float = 300.0,
    ) -> None:
        refuse_replay(projection, "built blue/green")
        if not projection.tables:
            raise ConfigurationError(
                f"projection {projection.name!r}: a blue/green build moves the tables named "
                "in tables=[...]; declare them"
            )
        self.unit = build_unit(projection)
        self.projection = projection
        self.base = read_models
        self._sides = side_schemas_of(read_models)
        self.schema = side_schema(
            BUILD_PREFIX, self._sides.base, projection.name, projection.version
        )
        self.side = self._sides.side(self.schema)
        self.retire_after = retire_after
        self._lease = lease
        # Faults and skipped events of the build stay with the build (in memory, in its
        # figures): the operations tables belong to the live version's units.
        self.runners = partition_runners(
            store, self.side, projection, fence=self._fence, records=OperationsRecords.in_memory()
        )
        self.state = RunnerState.STOPPED
        self.fault = None
        self.errors = 0
        self.last_error: str | None = None
        self.last_batch_seconds: float | None = None
        self.switched = False
        self._stop = asyncio.Event()

    @property
    def events_per_second(self) -> float:
        return sum(runner.events_per_second for runner in self.runners)

    async def _fence(self, tx: ReadModelTransaction) -> None:
        if self._lease is not None:
            await check(tx, self._lease)

    def stop(self) -> None:
        self._stop.set()
        for runner in self.runners:
            runner.stop()

    async def prepare(self) -> None:
        await self.side.apply_schema()

    async def run(self) -> None:
        """Build until caught up, then swap. Returns when swapped or stopped."""
        self._stop.clear()
        self.state = RunnerState.CATCHING_UP
        await self.prepare()
        logger.info(
            "building version %d of %s in %s",
            self.projection.version,
            self.projection.name,
            self.schema,
            extra={"action": "bluegreen_build", "projection": self.projection.name},
        )
        for runner in self.runners:
            if self._stop.is_set():
                return
            await runner.run_until_caught_up(self._stop)
            self.last_error = runner.last_error
        if not self._stop.is_set():
            await self.switch()
        self.state = RunnerState.STOPPED

    async def switch(self) -> None:
        """In one transaction: old tables out, new tables in, checkpoints handed over."""
        projection = self.projection
        async with self.base.transaction() as tx:
            await tx.lock_projection(projection.name)
            await self._fence(tx)
            old = await stored_units(tx, projection.name)
            for unit in old:  # old-version runners wait here, then find the version moved
                await tx.load_checkpoint(unit, lock=True)
            old_version = max(old.values(), default=0)
            if old_version >= projection.version:  # a newer version swapped in meanwhile
                raise ProjectionSupersededError(
                    f"projection {projection.name!r}: version {old_version} is live; the "
                    f"build of version {projection.version} is abandoned"
                )
            for unit in old:
                await tx.delete_checkpoint(unit)
            await self._sides.swap_in(
                tx,
                self.schema,
                projection.tables,
                retire_to=side_schema(
                    RETIRED_PREFIX, self._sides.base, projection.name, old_version
                ),
                retire_until=time.time() + self.retire_after,
                label=f"projection {projection.name} version {old_version}",
            )
            # Letters of the old version are moot: the new one replayed those events.
            await tx.execute(
                "DELETE FROM projection_parked_streams WHERE projection = $1", projection.name
            )
            await tx.execute(
                "DELETE FROM projection_dead_letters WHERE projection = $1 AND version < $2",
                projection.name,
                projection.version,
            )
            await tx.execute("DELETE FROM projection_leases WHERE unit = $1", self.unit)
        self.switched = True
        logger.info(
            "version %d of %s is live; version %d retired until its grace period ends",
            projection.version,
            projection.name,
            old_version,
            extra={"action": "bluegreen_switch", "projection": projection.name},
        )

    async def checkpoint(self) -> Position | None:
        """The slowest position of the build (None before it starts)."""
        try:
            checkpoints = await self.side.checkpoints()
        except Exception:  # noqa: BLE001 - no side schema yet, or already swapped
            return None
        positions = [c.position for c in checkpoints.values()]
        return min(positions) if positions else None


async def drop_retired(read_models: ReadModelStore) -> list[str]:
    """Drop the retired schemas whose grace period has passed; return their names."""
    sides = read_models.side_schemas()
    if sides is None:
        return []
    return await sides.drop_retired(RETIRED_PREFIX, time.time())
