"""Preparing a read model: its setup, its checkpoints, and the checks that guard them.

Before a unit's first batch its read model must exist and its checkpoint must belong to the
projection's code: not to a newer version (which has taken over), not to an older one (which
needs a rebuild), and not to another partitioning (a new unit would apply history twice).
"""

from __future__ import annotations

from .errors import ProjectionSupersededError, ProjectionVersionError
from .events import Position
from .partitions import split_unit
from .projection import Projection
from .readmodel import ReadModelTransaction


async def prepare_read_model(
    tx: ReadModelTransaction,
    projection: Projection,
    unit: str | None = None,
    start: Position | None = None,
) -> Position:
    """Run the projection's (idempotent) setup; create the checkpoint of ``unit`` (default:
    the projection's only unit) if missing, at ``start`` (default: the projection's; see
    ``Projection.first_position``); return it."""
    unit = unit or projection.name
    # Runners starting together queue here: one creates the tables and the checkpoint.
    await tx.lock_projection(projection.name)
    checkpoint = await tx.load_checkpoint(unit)
    replayable = projection.replayable
    if checkpoint is not None and checkpoint.version < projection.version and not replayable:
        return await _carry_over(tx, projection, unit, checkpoint.position)
    if checkpoint is not None and checkpoint.version > projection.version:
        raise ProjectionSupersededError(
            f"projection {projection.name!r} is at version {projection.version} in code but "
            f"version {checkpoint.version} has taken over its read model: deploy the newer code"
        )
    if checkpoint is not None and checkpoint.version != projection.version:
        raise ProjectionVersionError(
            f"projection {projection.name!r} is at version {projection.version} in code but "
            f"its read model was built by version {checkpoint.version}: run "
            f"'projectionist rebuild {projection.name}'"
        )
    if checkpoint is None:
        await _refuse_other_partitioning(tx, projection)
    await projection.run_setup(tx)
    if checkpoint is None:
        start = projection.start if start is None else start
        await tx.save_checkpoint(unit, projection.version, None, start, 0)
        return start
    return checkpoint.position


async def _carry_over(
    tx: ReadModelTransaction, projection: Projection, unit: str, position: Position
) -> Position:
    """A raised version of a projection that must not replay (a reactor) goes on from its
    checkpoint: its effects changed, there is no read model to rebuild, and what the old
    version sent is not sent again."""
    await projection.run_setup(tx)
    await tx.save_checkpoint(unit, projection.version, position, position, 0)
    return position


async def _refuse_other_partitioning(tx: ReadModelTransaction, projection: Projection) -> None:
    """A new unit's checkpoint starts from the beginning: right for a new projection, wrong
    for one whose read model was built with another partition count (it would apply
    history twice). That takes a new version (blue/green) or a rebuild."""
    stored = await stored_units(tx, projection.name)
    strangers = sorted(set(stored) - set(projection.units))
    if strangers and max(stored.values()) > projection.version:
        raise ProjectionSupersededError(
            f"projection {projection.name!r} is at version {projection.version} in code but "
            f"version {max(stored.values())} has taken over its read model"
        )
    if strangers:
        raise ProjectionVersionError(
            f"projection {projection.name!r} has {projection.partitions} partition(s) in code "
            f"but its read model was built with checkpoints {', '.join(strangers)}: raise its "
            f"version (blue/green rebuild) or run 'projectionist rebuild {projection.name}'"
        )


async def stored_units(tx: ReadModelTransaction, name: str) -> dict[str, int]:
    """The checkpoints stored for projection ``name`` (any partitioning): unit -> version."""
    stored = await tx.checkpoint_versions()
    return {unit: version for unit, version in stored.items() if split_unit(unit)[0] == name}
