"""Reactors on every backend: where they start, their keys, a failing effect, what refuses them.

The effects here append to a list (the recipient a test reads back); the Redis and NATS
proofs are in tests/worker/test_reactor_effects.py, the SIGKILL in tests/faults.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from projectionist import (
    START,
    Application,
    ConfigurationError,
    HandlerError,
    NewEvent,
    Position,
    Reactor,
    RecordedEvent,
)
from projectionist.bluegreen import BlueGreenBuild, stale_projections
from projectionist.status import UnitState

NAME = "welcome"


class Mailbox:
    """What a reactor sent (each key, in order) and how often each event was tried."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.tries: Counter[str] = Counter()
        self.refuse: set[str] = set()
        """Names whose effect raises (a mail server that says no)."""

    def reactor(self, version: int = 1, **options: object) -> Reactor:
        reactor = Reactor(NAME, version=version, **options)  # type: ignore[arg-type]

        @reactor.on("Registered")
        async def send(event: RecordedEvent, key: str) -> None:
            self.tries[key] += 1
            if event.data["name"] in self.refuse:
                raise RuntimeError(f"mail server refused {event.data['name']}")
            self.sent.append(key)

        return reactor


def registered(*names: str) -> list[NewEvent]:
    return [NewEvent("Registered", {"name": name}) for name in names]


def keys(events: list[NewEvent]) -> list[str]:
    return [f"{NAME}:{event.id}" for event in events]


async def test_a_new_reactor_starts_at_the_head_and_sends_what_follows(app_url: str) -> None:
    mailbox = Mailbox()
    async with Application(app_url, [mailbox.reactor()]) as app:
        await app.prepare_schema()
        history = registered("ann", "bob", "cy")
        await app.store.append("customers", history)
        await app.setup()
        await app.run_until_caught_up()
        assert mailbox.sent == []
        checkpoint = await app.read_models.checkpoint(NAME)
        assert checkpoint is not None and checkpoint.position == await app.store.head()

        new = registered("dee", "eve")
        await app.store.append("customers", new[:1])
        await app.store.append("others", [NewEvent("Ignored", {}), *new[1:]])
        await app.run_until_caught_up()
        assert mailbox.sent == keys(new)


async def test_start_at_the_beginning_sends_the_history_once(app_url: str) -> None:
    mailbox = Mailbox()
    async with Application(app_url, [mailbox.reactor(start=START, partitions=3)]) as app:
        await app.prepare_schema()
        history = registered(*(f"customer-{n}" for n in range(12)))
        for number, event in enumerate(history):
            await app.store.append(f"customer-{number}", [event])
        await app.setup()
        await app.run_until_caught_up()
        await app.run_until_caught_up()  # nothing new: nothing sent again
        assert sorted(mailbox.sent) == sorted(keys(history))


def test_the_key_is_the_event_id_or_the_position_without_one() -> None:
    reactor = Mailbox().reactor()
    event_id = NewEvent("Registered", {}).id
    at = datetime.now(UTC)
    with_id = RecordedEvent(event_id, "s", 1, "Registered", {}, {}, at, Position(0, 4))
    without = RecordedEvent(None, "s", None, "Registered", {}, {}, at, Position(12, 7))
    assert reactor.key_of(with_id) == f"{NAME}:{event_id}"
    assert reactor.key_of(without) == f"{NAME}:12/7"


async def test_a_failing_effect_retries_then_stops_without_resending_earlier_ones(
    app_url: str,
) -> None:
    mailbox = Mailbox()
    mailbox.refuse = {"cy"}
    async with Application(app_url, [mailbox.reactor(start=START, retries=2)]) as app:
        await app.setup()
        events = registered("ann", "bob", "cy", "dee")
        await app.store.append("customers", events)
        with pytest.raises(HandlerError, match="mail server refused cy"):
            await app.run_until_caught_up()
        assert mailbox.sent == keys(events[:2])
        assert mailbox.tries[keys(events)[2]] == 3  # once, then two retries
        [fault] = await app.faults(NAME)
        cy = (await app.store.read_all(START)).events[2]
        assert (fault.position, fault.attempts) == (cy.position, 3)
        checkpoint = await app.read_models.checkpoint(NAME)
        assert checkpoint is not None and checkpoint.position < fault.position

        mailbox.refuse = set()  # the mail server is back
        assert await app.restart(NAME) == 1
        await app.run_until_caught_up()
        assert mailbox.sent == keys(events)  # ann and bob were not sent again
        assert await app.faults(NAME) == []


async def test_a_skipped_effect_is_sent_again_by_a_retry_with_its_key(app_url: str) -> None:
    mailbox = Mailbox()
    mailbox.refuse = {"bob"}
    async with Application(app_url, [mailbox.reactor(start=START, on_error="skip")]) as app:
        await app.setup()
        events = registered("ann", "bob", "cy")
        await app.store.append("customers", events)
        await app.run_until_caught_up()
        assert mailbox.sent == keys([events[0], events[2]])
        [letter] = await app.dead_letters(NAME)
        mailbox.refuse = set()
        assert await app.retry_dead_letters([letter.id]) == [(letter.id, None)]
        assert mailbox.sent == keys([events[0], events[2], events[1]])


async def test_a_raised_version_keeps_the_checkpoint_and_sends_nothing_again(
    app_url: str,
) -> None:
    mailbox = Mailbox()
    async with Application(app_url, [mailbox.reactor(start=START)]) as old:
        await old.setup()
        first = registered("ann", "bob")
        await old.store.append("customers", first)
        await old.run_until_caught_up()
        before = await old.read_models.checkpoint(NAME)

        raised = mailbox.reactor(version=2, start=START)
        async with Application(old.store, [raised]) as new:
            assert await stale_projections(new.read_models, [raised]) == []  # no build
            [status] = await new.status()  # before its runner took the checkpoint over
            assert status.state is UnitState.STOPPED
            assert status.detail == "version 2 takes over at its next start"
            await new.setup()
            after = await new.read_models.checkpoint(NAME)
            assert before is not None and after is not None
            assert (after.version, after.position) == (2, before.position)
            [status] = await new.status()
            assert status.state is not UnitState.NEEDS_REBUILD
            later = registered("cy")
            await new.store.append("customers", later)
            await new.run_until_caught_up()
        assert mailbox.sent == keys(first + later)


async def test_rebuild_verify_and_blue_green_refuse_a_reactor(app_url: str) -> None:
    mailbox = Mailbox()
    reactor = mailbox.reactor(start=START)
    async with Application(app_url, [reactor]) as app:
        await app.setup()
        await app.store.append("customers", registered("ann"))
        await app.run_until_caught_up()
        before = await app.read_models.checkpoint(NAME)
        with pytest.raises(ConfigurationError, match=r"is a reactor.*never rebuilt"):
            await app.rebuild(NAME)
        with pytest.raises(ConfigurationError, match=r"is a reactor.*never verified"):
            await app.verify(NAME)
        with pytest.raises(ConfigurationError, match=r"is a reactor.*never built blue/green"):
            BlueGreenBuild(app.source, app.read_models, mailbox.reactor(version=2))
        assert await app.read_models.checkpoint(NAME) == before
        assert len(mailbox.sent) == 1

        # The last guard: a transaction that replays is refused by the reactor itself.
        batch = await app.store.read_all(START)
        async with app.read_models.transaction() as tx:
            tx.replaying = True
            with pytest.raises(ConfigurationError, match="never made again"):
                await reactor.apply(batch.events, tx)
        assert len(mailbox.sent) == 1


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"batch_size": 10}, "batch_size must be 1"),
        ({"kind": "inline"}, "must be async"),
        ({"retries": -1}, "retries must be"),
    ],
)
def test_options_a_reactor_cannot_have(options: dict[str, object], refusal: str) -> None:
    with pytest.raises(ConfigurationError, match=refusal):
        Reactor(NAME, **options)  # type: ignore[arg-type]


def test_a_reactor_has_no_batch_handlers_and_needs_an_event_type() -> None:
    reactor = Reactor(NAME)
    with pytest.raises(ConfigurationError, match="no batch handlers"):
        reactor.on_batch("Registered")
    with pytest.raises(ConfigurationError, match="name at least one event type"):
        reactor.on()
    assert not reactor.replayable and reactor.batch_size == 1
