"""What an operator does about failures: skip a poison event, retry or discard dead letters.

Only the letters of the application's own projections are seen: another application on the
same database keeps its letters to itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from . import operations
from .errors import HandlerError, InvalidInputError
from .operations import DeadLetter, Fault
from .projection import Projection
from .readmodel import ReadModelStore, ReadModelTransaction
from .recording import OperationsRecords, retry_dead_letter, skip_fault
from .source import EventSource
from .upcasting import NO_UPCASTERS, Upcasters


async def skip_faults(
    store: EventSource,
    read_models: ReadModelStore,
    projection: Projection,
    faults: Sequence[Fault],
    records: OperationsRecords,
) -> list[Fault]:
    """Move the event behind each fault of ``projection`` to the dead letters and its
    checkpoint past it (see ``recording.skip_fault``). Returns the faults skipped."""
    if not faults:
        raise InvalidInputError(f"projection {projection.name!r} is not faulted: nothing to skip")
    for fault in faults:
        await skip_fault(store, read_models, projection, fault, records)
    return list(faults)


async def retry_dead_letters(
    read_models: ReadModelStore,
    projections: Mapping[str, Projection],
    read_models_for: Callable[[Projection], ReadModelStore],
    ids: Sequence[int],
    upcasters: Upcasters = NO_UPCASTERS,
) -> list[tuple[int, str | None]]:
    """Apply each letter's event again, each in its own transaction that also removes the
    letter; one that fails again stays. Returns (id, error or None) per letter."""
    results: list[tuple[int, str | None]] = []
    for letter_id in ids:
        try:
            async with read_models.transaction() as tx:
                letter = await find_dead_letter(tx, letter_id, projections)
                projection = projections[letter.projection]
                target = read_models_for(projection)
                await retry_dead_letter(tx, letter, projection, target, read_models, upcasters)
                await operations.delete_dead_letter(tx, letter_id)
            results.append((letter_id, None))
        except HandlerError as exc:
            results.append((letter_id, operations.describe(exc)[0]))
    return results


async def discard_dead_letters(
    read_models: ReadModelStore, projections: Mapping[str, Projection], ids: Sequence[int]
) -> int:
    """Forget the letters for good, all or none. Returns how many were removed."""
    async with read_models.transaction() as tx:
        for letter_id in ids:
            await find_dead_letter(tx, letter_id, projections)
            await operations.delete_dead_letter(tx, letter_id)
    return len(ids)


async def find_dead_letter(
    tx: ReadModelTransaction, letter_id: int, projections: Mapping[str, Projection]
) -> DeadLetter:
    found = await operations.dead_letters(tx, ids=[letter_id], among=projections)
    if not found:
        raise InvalidInputError(
            f"there is no dead letter {letter_id} of this application's projections "
            "(see 'projectionist dead-letters list')"
        )
    return found[0]
