"""What an operator does about failures: skip a poison event, retry or discard dead letters,
retry a parked stream.

Only the letters of the application's own projections are seen: another application on the
same database keeps its letters to itself.

A parked stream (``on_error="park"``) is retried in order, from its first letter, each letter
in a transaction of its own that holds the unit's checkpoint lock (the lock its runner takes
for every batch), applies the letter and removes it; the one that removes the last letter
also un-parks the stream, so the runner's next batch, which reads the parked set after that
lock, applies the stream's later events after all of its letters. A letter that fails again
stops the retry: it stays first (its error updated), the ones before it are gone. Retrying a
later letter of a parked stream alone is refused (it would apply out of order). Discarding
letters of a parked stream is allowed (the operator forgets those events): the rest stay
parked until retried; a stream left without letters is un-parked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from . import operations
from .errors import ConfigurationError, HandlerError, InvalidInputError
from .operations import DeadLetter, Failure, Fault
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
    letter; one that fails again stays. The first letter of a parked stream retries its
    stream (``retry_parked_stream``: None when it was all applied and un-parked); a later
    one is refused, before anything is applied. Returns (id, error or None) per letter."""
    async with read_models.transaction() as tx:
        letters = [await find_dead_letter(tx, letter_id, projections) for letter_id in ids]
        for letter in letters:
            if letter.parked:
                await _refuse_unless_first(tx, letter)
    results: list[tuple[int, str | None]] = []
    for letter in letters:
        projection = projections[letter.projection]
        if letter.parked:
            retried = await _retry_stream(
                read_models, projection, letter.unit, letter.event.stream_id, upcasters
            )
            results.append((letter.id, retried.error))
            continue
        try:
            async with read_models.transaction() as tx:
                letter = await find_dead_letter(tx, letter.id, projections)
                target = read_models_for(projection)
                await retry_dead_letter(tx, letter, projection, target, read_models, upcasters)
                await operations.delete_dead_letter(tx, letter.id)
            results.append((letter.id, None))
        except HandlerError as exc:
            results.append((letter.id, operations.describe(exc)[0]))
    return results


async def _refuse_unless_first(tx: ReadModelTransaction, letter: DeadLetter) -> None:
    [first] = await operations.stream_letters(tx, letter.unit, letter.event.stream_id, limit=1)
    if first.id != letter.id:
        raise InvalidInputError(
            f"dead letter {letter.id} waits behind dead letter {first.id} of its parked stream "
            f"{letter.event.stream_id!r}: retrying it alone would apply it out of order; retry "
            f"the stream (--stream {letter.event.stream_id} --projection {letter.projection}) "
            f"or letter {first.id}"
        )


async def discard_dead_letters(
    read_models: ReadModelStore, projections: Mapping[str, Projection], ids: Sequence[int]
) -> int:
    """Forget the letters for good, all or none. Returns how many were removed. Letters of
    a parked stream are removed under its unit's checkpoint lock; the rest of the stream
    stays parked (until retried), a stream left without letters is un-parked."""
    async with read_models.transaction() as tx:
        letters = [await find_dead_letter(tx, letter_id, projections) for letter_id in ids]
        parked = sorted({(d.unit, d.event.stream_id) for d in letters if d.parked})
        for unit in sorted({unit for unit, _ in parked}):
            await tx.load_checkpoint(unit, lock=True)  # its runner adds letters under it
        for letter in letters:
            await operations.delete_dead_letter(tx, letter.id)
        for unit, stream_id in parked:
            if not await operations.stream_letters(tx, unit, stream_id, limit=1):
                await operations.unpark_stream(tx, unit, stream_id)
    return len(ids)


# -- parked streams -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamRetry:
    """What retrying a parked stream did in one unit."""

    unit: str
    stream_id: str
    applied: int
    """Letters applied (and removed), in order."""
    failed: int | None = None
    """The id of the letter that failed again, now first; None: all applied, un-parked."""
    error: str | None = None

    @property
    def unparked(self) -> bool:
        return self.failed is None

    def as_dict(self) -> dict[str, object]:
        return {
            "unit": self.unit,
            "stream_id": self.stream_id,
            "applied": self.applied,
            "failed": self.failed,
            "error": self.error,
            "unparked": self.unparked,
        }


async def retry_parked_stream(
    read_models: ReadModelStore,
    projection: Projection,
    target: ReadModelStore,
    stream_id: str,
    upcasters: Upcasters = NO_UPCASTERS,
) -> list[StreamRetry]:
    """Apply the letters of ``stream_id`` parked by ``projection`` in order and un-park it
    (see the module documentation); one StreamRetry per unit parking it (one, unless the
    partitions changed)."""
    if not isinstance(stream_id, str) or not stream_id:
        raise InvalidInputError("a stream id is a non-empty string")
    if target is not read_models:
        raise ConfigurationError(
            f"projection {projection.name!r} has a read-model store of its own: it cannot park"
        )
    async with read_models.transaction() as tx:
        units = await operations.units_parking(tx, projection.name, stream_id)
    if not units:
        raise InvalidInputError(
            f"stream {stream_id!r} is not parked by projection {projection.name!r} "
            "(see 'projectionist dead-letters list')"
        )
    return [
        await _retry_stream(read_models, projection, unit, stream_id, upcasters) for unit in units
    ]


async def _retry_stream(
    read_models: ReadModelStore,
    projection: Projection,
    unit: str,
    stream_id: str,
    upcasters: Upcasters = NO_UPCASTERS,
) -> StreamRetry:
    applied = 0
    while True:
        letter = None
        try:
            async with read_models.transaction() as tx:
                letter = await _first_parked(tx, unit, stream_id)
                if letter is not None:
                    await retry_dead_letter(
                        tx, letter, projection, read_models, read_models, upcasters
                    )
                    await operations.delete_dead_letter(tx, letter.id)
                more = await operations.stream_letters(tx, unit, stream_id, limit=1)
                if not more:  # that was the last: un-parked with it, under the same lock
                    await operations.unpark_stream(tx, unit, stream_id)
        except HandlerError as exc:
            if letter is None:
                raise
            error = await _failed_again(read_models, unit, letter, exc)
            return StreamRetry(unit, stream_id, applied, letter.id, error)
        if letter is None or not more:
            return StreamRetry(unit, stream_id, applied + (letter is not None))
        applied += 1


async def _first_parked(tx: ReadModelTransaction, unit: str, stream_id: str) -> DeadLetter | None:
    """Under the unit's checkpoint lock: the stream's first letter, if it is still parked
    (a retry in another process may have finished it)."""
    await tx.load_checkpoint(unit, lock=True)
    first = await operations.stream_letters(tx, unit, stream_id, limit=1)
    return first[0] if first and first[0].parked else None


async def _failed_again(
    read_models: ReadModelStore, unit: str, letter: DeadLetter, exc: HandlerError
) -> str:
    error, trace = operations.describe(exc)
    async with read_models.transaction() as tx:
        await tx.load_checkpoint(unit, lock=True)
        await operations.note_failure(tx, letter.id, Failure(error, trace, 1))
    return error


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
