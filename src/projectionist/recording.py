"""Where a unit's operations records (its fault, its dead letters) go: one object, chosen once.

Three places, one per kind of read model:

- ``OperationsRecords.in_batch(read_models)``: SQL read models hold the operations tables
  themselves, so a dead letter commits in the very transaction that moves the checkpoint
  past its event, and a cleared fault with the batch that got past it.
- ``OperationsRecords.separate(store)``: a target without those tables (Redis) records into
  the application's SQL store, committing on its own: the letter before the batch (at least
  once), the cleared fault after it.
- ``OperationsRecords.in_memory()``: verify's scratch copy and blue/green builds keep their
  failures to themselves (the runner's state, errors and last error): the operations tables
  belong to the live version's units.

``OperationsRecords.choose(read_models, application_store)`` picks the first or the second
for a unit of the application. The runner only asks its records to record, load or clear.

Parked streams (``on_error="park"``) need the letters and the park written with the batch
that reads them, in one transaction: ``in_batch`` does that. ``separate`` cannot (another
database than the batch's), so ``parks`` is False there: an Application refuses ``park`` for a
projection with a read-model store of its own (``composition``), and a runner given such
records faults instead of parking. ``in_memory(parks=True)`` (verify's scratch copy) holds
parked streams back for the run, letters unrecorded, as its skipped events are; plain
``in_memory()`` (blue/green builds) does not park: the build faults, so a version whose
parked letters were nowhere is never swapped in.

``skip_fault`` is the operator's way past a poison event under ``on_error="stop"``: the
event becomes a dead letter, as if the projection had skipped it, through the same records.
"""

from __future__ import annotations

import abc

from . import operations
from .errors import InvalidInputError
from .events import Position, RecordedEvent
from .operations import DeadLetter, Failure, Fault
from .partitions import split_unit
from .projection import Projection
from .readmodel import CheckpointConflictError, ReadModelStore, ReadModelTransaction
from .source import EventSource
from .upcasting import NO_UPCASTERS, Upcasters


class OperationsRecords(abc.ABC):
    """Records a unit's fault and dead letters; see the module documentation."""

    @staticmethod
    def in_batch(read_models: ReadModelStore) -> OperationsRecords:
        """In the read models' own database, in the batch's transaction where one is open."""
        return _InBatch(read_models)

    @staticmethod
    def separate(store: ReadModelStore) -> OperationsRecords:
        """In another (SQL) store than the read models', each record committing on its own."""
        return _Separate(store)

    @staticmethod
    def in_memory(*, parks: bool = False) -> OperationsRecords:
        """Nowhere but the runner itself; with ``parks``, parked streams are held back for
        as long as these records live (see the module documentation)."""
        return _InMemory(parks=parks)

    @staticmethod
    def choose(read_models: ReadModelStore, application_store: ReadModelStore) -> OperationsRecords:
        """A unit of the application: in its batches when its read models are the
        application's own store, else in that store beside them."""
        if read_models is application_store:
            return _InBatch(read_models)
        return _Separate(application_store)

    parks: bool = True
    """Whether a failing event can park its stream here (else ``park`` faults, as ``stop``)."""

    @abc.abstractmethod
    async def load_fault(self, unit: str) -> Fault | None:
        """The fault that stopped ``unit`` in an earlier run, if one is recorded."""

    @abc.abstractmethod
    async def record_fault(
        self, unit: str, version: int, event: RecordedEvent, exc: BaseException, attempts: int
    ) -> Fault | None:
        """Record why ``unit`` stopped (the failed batch rolled back: its own transaction)."""

    async def dead_letter(
        self,
        tx: ReadModelTransaction,
        unit: str,
        version: int,
        event: RecordedEvent,
        exc: BaseException,
        attempts: int,
    ) -> None:
        """Record ``event`` as skipped; ``tx`` is the transaction moving the checkpoint past it."""
        error, trace = operations.describe(exc)
        await self.record_dead_letter(tx, unit, version, event, Failure(error, trace, attempts))

    @abc.abstractmethod
    async def record_dead_letter(
        self,
        tx: ReadModelTransaction,
        unit: str,
        version: int,
        event: RecordedEvent,
        failure: Failure,
    ) -> None:
        """``dead_letter`` of a failure already described (a recorded fault skipped past)."""

    @abc.abstractmethod
    async def clear_fault_in(self, tx: ReadModelTransaction, unit: str) -> None:
        """Forget the fault of ``unit`` in ``tx``: the batch that got past its event."""

    @abc.abstractmethod
    async def fault_cleared(self, unit: str) -> None:
        """Forget the fault of ``unit`` now that the batch that got past its event committed."""

    @abc.abstractmethod
    async def forget_projection(self, projection: str) -> None:
        """Drop the faults, dead letters and parked streams of every unit of ``projection``
        (a rebuild applies those events again, so they are moot)."""

    # -- parked streams (only where ``parks``) -------------------------------------------------

    @abc.abstractmethod
    async def parked(self, unit: str) -> set[str]:
        """The streams ``unit`` holds back, as committed (its runner's starting point)."""

    @abc.abstractmethod
    async def parked_in(self, tx: ReadModelTransaction, unit: str) -> set[str]:
        """The streams ``unit`` holds back, read in the batch's ``tx`` (after its
        checkpoint lock: an un-park committed by another process is seen)."""

    @abc.abstractmethod
    async def park(
        self,
        tx: ReadModelTransaction,
        unit: str,
        version: int,
        event: RecordedEvent,
        exc: BaseException,
        attempts: int,
    ) -> None:
        """Record ``event`` as a dead letter and park its stream, in the ``tx`` moving the
        checkpoint past it."""

    @abc.abstractmethod
    async def hold_back(
        self, tx: ReadModelTransaction, unit: str, version: int, events: list[RecordedEvent]
    ) -> None:
        """Put ``events`` (of parked streams, in order) behind their streams' letters, in the
        ``tx`` moving the checkpoint past them."""


class _InBatch(OperationsRecords):
    def __init__(self, read_models: ReadModelStore) -> None:
        self.read_models = read_models

    async def load_fault(self, unit: str) -> Fault | None:
        async with self.read_models.transaction() as tx:
            return await operations.load_fault(tx, unit)

    async def record_fault(
        self, unit: str, version: int, event: RecordedEvent, exc: BaseException, attempts: int
    ) -> Fault | None:
        async with self.read_models.transaction() as tx:
            return await operations.record_fault(tx, unit, version, event, exc, attempts)

    async def record_dead_letter(
        self,
        tx: ReadModelTransaction,
        unit: str,
        version: int,
        event: RecordedEvent,
        failure: Failure,
    ) -> None:
        await operations.add_dead_letter(tx, unit, version, event, failure)

    async def clear_fault_in(self, tx: ReadModelTransaction, unit: str) -> None:
        await operations.clear_fault(tx, unit)

    async def fault_cleared(self, unit: str) -> None:
        pass  # cleared with the batch, in its transaction

    async def forget_projection(self, projection: str) -> None:
        async with self.read_models.transaction() as tx:
            await operations.clear_faults(tx, projection)
            await operations.delete_dead_letters_of(tx, projection)

    async def parked(self, unit: str) -> set[str]:
        async with self.read_models.transaction() as tx:
            return await operations.parked_streams(tx, unit)

    async def parked_in(self, tx: ReadModelTransaction, unit: str) -> set[str]:
        return await operations.parked_streams(tx, unit)

    async def park(
        self,
        tx: ReadModelTransaction,
        unit: str,
        version: int,
        event: RecordedEvent,
        exc: BaseException,
        attempts: int,
    ) -> None:
        await self.dead_letter(tx, unit, version, event, exc, attempts)
        await operations.park_stream(tx, unit, event)

    async def hold_back(
        self, tx: ReadModelTransaction, unit: str, version: int, events: list[RecordedEvent]
    ) -> None:
        for event in events:
            await operations.add_dead_letter(tx, unit, version, event, held_back(event))


def held_back(event: RecordedEvent) -> Failure:
    """What a letter held back behind its stream's failed event says (it was never tried)."""
    return Failure(
        f"held back: stream {event.stream_id!r} is parked behind an earlier event that failed",
        "",
        0,
    )


class _Separate(_InBatch):
    """The same tables in another store: every record is a transaction of its own there.
    Parking is refused: its letters could not commit with the batch that reads them."""

    parks = False

    async def record_dead_letter(
        self,
        tx: ReadModelTransaction,
        unit: str,
        version: int,
        event: RecordedEvent,
        failure: Failure,
    ) -> None:
        # Committed before the batch's transaction moves the checkpoint: at least once.
        async with self.read_models.transaction() as own:
            await operations.add_dead_letter(own, unit, version, event, failure)

    async def clear_fault_in(self, tx: ReadModelTransaction, unit: str) -> None:
        pass  # another database: cleared once the batch committed

    async def fault_cleared(self, unit: str) -> None:
        async with self.read_models.transaction() as tx:
            await operations.clear_fault(tx, unit)


class _InMemory(OperationsRecords):
    def __init__(self, *, parks: bool) -> None:
        self.parks = parks
        self._parked: dict[str, set[str]] = {}

    async def load_fault(self, unit: str) -> Fault | None:
        return None

    async def record_fault(
        self, unit: str, version: int, event: RecordedEvent, exc: BaseException, attempts: int
    ) -> Fault | None:
        return None

    async def record_dead_letter(
        self,
        tx: ReadModelTransaction,
        unit: str,
        version: int,
        event: RecordedEvent,
        failure: Failure,
    ) -> None:
        pass

    async def clear_fault_in(self, tx: ReadModelTransaction, unit: str) -> None:
        pass

    async def fault_cleared(self, unit: str) -> None:
        pass

    async def forget_projection(self, projection: str) -> None:
        self._parked.clear()

    async def parked(self, unit: str) -> set[str]:
        return set(self._parked.get(unit, ()))

    async def parked_in(self, tx: ReadModelTransaction, unit: str) -> set[str]:
        return await self.parked(unit)

    async def park(
        self,
        tx: ReadModelTransaction,
        unit: str,
        version: int,
        event: RecordedEvent,
        exc: BaseException,
        attempts: int,
    ) -> None:
        # Before the batch commits, which may yet roll back: then the runner reads the
        # event again and parks it again; a set does not mind.
        self._parked.setdefault(unit, set()).add(event.stream_id)

    async def hold_back(
        self, tx: ReadModelTransaction, unit: str, version: int, events: list[RecordedEvent]
    ) -> None:
        pass


# -- skipping past a fault ----------------------------------------------------------------------


async def skip_fault(
    store: EventSource,
    read_models: ReadModelStore,
    projection: Projection,
    fault: Fault,
    records: OperationsRecords,
) -> None:
    """Move the event that stopped ``fault.unit`` to its dead letters and its checkpoint past
    that event, and clear the fault: a worker resumes the unit after the event.

    The checkpoint moves by exactly that event: the next event the unit would apply must be
    the faulted one, or the fault is stale (the unit moved on) and InvalidInputError says so.
    """
    stored = await read_models.checkpoint(fault.unit)
    if stored is None or stored.version != projection.version:
        raise InvalidInputError(
            f"{fault.unit!r} has no checkpoint of version {projection.version}: "
            "rebuild it instead of skipping its fault"
        )
    # Read before the transaction: on SQLite the store and the read models share a connection.
    event = await _next_event(store, projection, fault.unit, stored.position)
    if event is None or event.position != fault.position:
        raise _moved_on(fault, stored.position)
    try:
        async with read_models.transaction() as tx:
            await tx.load_checkpoint(fault.unit, lock=True)  # a runner would wait for us
            await records.record_dead_letter(tx, fault.unit, fault.version, event, fault.failure)
            await tx.save_checkpoint(
                fault.unit, projection.version, stored.position, event.position, 1
            )
            await records.clear_fault_in(tx, fault.unit)
    except CheckpointConflictError:
        raise _moved_on(fault, stored.position) from None
    await records.fault_cleared(fault.unit)


async def _next_event(
    store: EventSource, projection: Projection, unit: str, after: Position
) -> RecordedEvent | None:
    _, partition = split_unit(unit)
    types = store.upcasters.read_types(projection.types)  # an old shape's stored type too
    batch = await store.read_all(after, limit=1, types=types, partition=partition)
    return batch.events[0] if batch.events else None


def _moved_on(fault: Fault, checkpoint: Position) -> InvalidInputError:
    return InvalidInputError(
        f"the fault of {fault.unit!r} is at {fault.position}, but the unit moved on (its "
        f"checkpoint is at {checkpoint}): restart it instead of skipping"
    )


async def retry_dead_letter(
    tx: ReadModelTransaction,
    letter: DeadLetter,
    projection: Projection,
    target: ReadModelStore,
    home: ReadModelStore,
    upcasters: Upcasters = NO_UPCASTERS,
) -> None:
    """Apply ``letter``'s event to ``projection``'s read model in ``target``: in ``tx`` (of
    ``home``, the operations tables' store, where the letter is removed) when they are the
    same store, else in a transaction of ``target`` (Redis): applied there, then the letter
    is forgotten in ``tx``. The stored event is upcast first, as a runner would."""
    if letter.version != projection.version:
        raise InvalidInputError(
            f"dead letter {letter.id} was skipped by version {letter.version} of "
            f"{projection.name!r}, the code is version {projection.version}: discard it"
        )
    events = upcasters.apply([letter.event], projection.name, projection.types)
    if target is home:
        await projection.apply(events, tx)
        return
    async with target.transaction() as own:
        await projection.apply(events, own)
