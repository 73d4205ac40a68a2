"""Drift check: rebuild a projection into scratch space and compare it with the live one.

Differences reveal handlers that are not deterministic or not safe to replay, or manual
edits of the read model. The scratch copy is brought to exactly the live checkpoint of each
unit, then the live checkpoints are locked (their runners wait) while the tables are
compared row by row, so both sides reflect the same events.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError, ProjectionistError
from .identifiers import quote_identifier
from .projection import Kind, Projection
from .readmodel import ReadModelStore, ReadModelTransaction
from .recording import OperationsRecords
from .runner import partition_runners
from .store import EventStore

MAX_SHOWN = 10
ATTEMPTS = 5


class VerificationError(ProjectionistError):
    """The live read model kept moving; verification could not find a stable point."""


@dataclass(frozen=True, slots=True)
class TableDifference:
    table: str
    only_live: list[tuple[Any, ...]]
    """Rows (up to ten) in the live table and not in the rebuilt one."""
    only_rebuilt: list[tuple[Any, ...]]
    missing: int
    extra: int
    """How many rows differ each way, in all."""


@dataclass(frozen=True, slots=True)
class Verification:
    projection: str
    tables: list[str]
    rows: dict[str, int]
    differences: list[TableDifference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


async def verify(
    store: EventStore, read_models: ReadModelStore, projection: Projection
) -> Verification:
    """Rebuild ``projection`` in scratch space and compare it with the live read model."""
    if projection.kind is not Kind.ASYNC:
        raise ConfigurationError(
            f"verify compares async projections; {projection.name!r} is inline"
        )
    if not projection.tables:
        raise ConfigurationError(f"projection {projection.name!r} declares no tables to compare")
    async with read_models.scratch(f"{projection.name}_{uuid.uuid4().hex}") as scratch:
        # Faults and skipped events of the scratch copy are not the live projection's.
        runners = partition_runners(
            store, scratch, projection, records=OperationsRecords.in_memory()
        )
        for _ in range(ATTEMPTS):
            targets = await _live_positions(read_models, projection)
            for runner in runners:
                runner.until = targets[runner.unit]
                await runner.prepare()
                assert runner.checkpoint is not None
                try:
                    while runner.checkpoint < runner.until and await runner.step():
                        pass
                finally:
                    await runner.discard_prefetch()
            async with read_models.transaction() as live:
                locked = {u: await live.load_checkpoint(u, lock=True) for u in projection.units}
                if all(c is not None and c.position == targets[u] for u, c in locked.items()):
                    return await _compare(projection, live, scratch)
    raise VerificationError(
        f"projection {projection.name!r} kept moving during {ATTEMPTS} attempts; try again"
    )


async def _live_positions(read_models: ReadModelStore, projection: Projection) -> dict[str, Any]:
    checkpoints = await read_models.checkpoints()
    missing = [unit for unit in projection.units if unit not in checkpoints]
    if missing:
        raise ConfigurationError(f"projection {projection.name!r} is not set up ({missing})")
    for unit in projection.units:
        if checkpoints[unit].version != projection.version:
            raise ConfigurationError(
                f"projection {projection.name!r}: the read model is version "
                f"{checkpoints[unit].version}, the code {projection.version}"
            )
    return {unit: checkpoints[unit].position for unit in projection.units}


async def _compare(
    projection: Projection, live: ReadModelTransaction, scratch: ReadModelStore
) -> Verification:
    differences = []
    counts = {}
    async with scratch.transaction() as rebuilt:
        for table in projection.tables:
            sql = f"SELECT * FROM {quote_identifier(table)}"
            live_rows = Counter(_hashable(row) for row in await live.fetch(sql))
            rebuilt_rows = Counter(_hashable(row) for row in await rebuilt.fetch(sql))
            counts[table] = sum(live_rows.values())
            only_live, only_rebuilt = live_rows - rebuilt_rows, rebuilt_rows - live_rows
            if only_live or only_rebuilt:
                differences.append(
                    TableDifference(
                        table,
                        sorted(only_live.elements(), key=repr)[:MAX_SHOWN],
                        sorted(only_rebuilt.elements(), key=repr)[:MAX_SHOWN],
                        missing=sum(only_rebuilt.values()),
                        extra=sum(only_live.values()),
                    )
                )
    return Verification(projection.name, list(projection.tables), counts, differences)


def _hashable(value: Any) -> Any:
    """Rows as tuples of hashable values (arrays come back as lists)."""
    if isinstance(value, list | tuple):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((key, _hashable(item)) for key, item in value.items()))
    return value
