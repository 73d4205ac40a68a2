"""Reactors: an effect outside the read models per event, never run again by a replay.

A reactor sends an email, calls an API or publishes a message for each event of its types::

    welcome = Reactor("welcome_emails")

    @welcome.on("CustomerRegistered")
    async def send(event: RecordedEvent, key: str) -> None:
        await mailer.send(event.data["email"], idempotency_key=key)

It is an async projection (workers, leases, partitions, status, retries and ``on_error``
all apply) with a checkpoint and no read model, fed one event per batch: the checkpoint
moves, in the read models' database, in the transaction that ran the event's effect, so
an effect that succeeded and whose checkpoint committed is never made again, and an event
that fails after retries stops (or skips) the reactor without sending the earlier ones
again. Only a crash (or a lost connection) between an effect and its commit makes that one
effect again, with the same ``key``: the event's idempotency key (``"name:event-id"``, or
``"name:tx/seq"`` for a source without ids), which the effect hands on (NATS
``Nats-Msg-Id``, a Redis stream field, an HTTP ``Idempotency-Key``) so that the receiver
drops the repeat. At least once, then; exactly once where the receiver deduplicates.

A new reactor starts at the head of its source (it must not email every customer of the
last five years), unless given ``start=`` (``START`` sends the whole history). Rebuilds,
blue/green builds, ``verify`` and partial replays refuse it (``replayable`` is False);
a raised version keeps its checkpoint. docs/side-effects.md says why and shows an example.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Unpack

from .errors import ConfigurationError
from .events import START, Position, RecordedEvent
from .projection import Kind, Projection, ProjectionOptions, ProjectionOptionsDict
from .readmodel import ReadModelTransaction
from .source import EventSource

Effect = Callable[[RecordedEvent, str], Awaitable[None]]
"""``async def effect(event, key)``: make the event's effect, handing ``key`` on."""


class Reactor(Projection):
    """Effects per event with at-least-once delivery. See the module documentation."""

    replayable: ClassVar[bool] = False
    default_options: ClassVar[ProjectionOptions] = ProjectionOptions(batch_size=1)

    def __init__(
        self,
        name: str,
        *,
        options: ProjectionOptions | None = None,
        **settings: Unpack[ProjectionOptionsDict],
    ) -> None:
        super().__init__(name, options=options, **settings)
        self.from_head = "start" not in settings and (options is None or options.start == START)
        """Whether its first checkpoint is the head of the source (no ``start=`` given)."""
        if self.kind is not Kind.ASYNC:
            raise ConfigurationError(
                f"reactor {name!r} must be async: inline, its effects would run inside the "
                "append's transaction, and an append rolled back would have sent them anyway"
            )
        if self.batch_size != 1:
            raise ConfigurationError(
                f"reactor {name!r}: batch_size must be 1, not {self.batch_size}; its checkpoint "
                "moves after each effect, so a failing event never sends the ones before it "
                "again and a crash sends at most one again"
            )

    def __repr__(self) -> str:
        return f"Reactor({self.name!r}, version={self.version})"

    def key_of(self, event: RecordedEvent) -> str:
        """The event's idempotency key, the same at every delivery of it."""
        return f"{self.name}:{event.id if event.id is not None else event.position}"

    def on(self, *types: str) -> Callable[[Effect], Effect]:  # type: ignore[override]
        """Register ``async def effect(event, key)`` for each of ``types``.

        (Its handlers take the event's key, not a transaction: an effect writes no read
        model, hence the different signature.)"""
        register = super().on(*types)

        def add(effect: Effect) -> Effect:
            async def handler(event: RecordedEvent, tx: ReadModelTransaction) -> None:
                del tx  # the checkpoint's transaction: the effect is outside it
                await effect(event, self.key_of(event))

            register(handler)
            return effect

        return add

    def on_batch(self, *types: str, payload: type[Any] | None = None) -> Callable[[Any], Any]:
        """Refused: a reactor makes one effect per event, each with its own checkpoint."""
        del types, payload
        raise ConfigurationError(
            f"reactor {self.name!r} has no batch handlers: register one effect per event with "
            "@reactor.on(...) (its checkpoint moves after each)"
        )

    async def first_position(self, source: EventSource) -> Position:
        """The head of ``source`` unless ``start=`` was given: history is not sent."""
        return await source.head() if self.from_head else self.start

    async def apply(self, events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        if tx.replaying:  # every replay refuses a reactor first: this is the last guard
            raise ConfigurationError(
                f"reactor {self.name!r} was given events to replay: a reactor's effects are "
                "never made again by a rebuild, a blue/green build, verify or a replay"
            )
        await super().apply(events, tx)
