"""One set of projection options for every kind: checked once, shared, and working on each.

Every kind (``Projection``, ``StateProjection``, ``SearchProjection``, ``RedisProjection``)
takes the same ``ProjectionOptions``, as keywords or as one ``options=`` object. The kinds that
fold whole batches declare their event types with ``handles()``, not with fake handlers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from projectionist import (
    START,
    Application,
    ConfigurationError,
    InvalidInputError,
    NewEvent,
    Position,
    Projection,
    RecordedEvent,
)
from projectionist.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_BYTES, STATE_BATCH_SIZE
from projectionist.projection import Kind, OnError, ProjectionOptions, ProjectionOptionsDict
from projectionist.search import SearchProjection
from projectionist.state import State, StateProjection
from projectionist.targets.redis import RedisProjection, RedisReadModelStore

EVERY_OPTION: ProjectionOptionsDict = {
    "version": 3,
    "kind": "async",
    "batch_size": 17,
    "max_batch_bytes": 4096,
    "start": Position(5, 1),
    "partitions": 4,
    "on_error": "skip",
    "retries": 2,
}
KINDS: dict[str, Callable[..., Projection]] = {
    "projection": lambda **options: Projection("p", **options),
    "state": lambda **options: StateProjection("p", table="t", initial=dict, **options),
    "search": lambda **options: SearchProjection("p", table="t", text={"a": "A"}, **options),
    "redis": lambda **options: RedisProjection("p", RedisReadModelStore(), **options),
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_takes_every_option(kind: str) -> None:
    projection = KINDS[kind](**EVERY_OPTION)
    assert projection.options == ProjectionOptions(
        version=3,
        kind=Kind.ASYNC,
        batch_size=17,
        max_batch_bytes=4096,
        start=Position(5, 1),
        partitions=4,
        on_error=OnError.SKIP,
        retries=2,
    )
    assert (projection.partitions, projection.on_error, projection.retries) == (4, "skip", 2)
    assert projection.start == Position(5, 1) and projection.units[-1] == "p#3/4"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_takes_one_shared_options_object(kind: str) -> None:
    shared = ProjectionOptions.of(partitions=2, on_error="skip")
    projection = KINDS[kind](options=shared, retries=5)  # keywords override the object
    assert projection.options == ProjectionOptions(partitions=2, on_error=OnError.SKIP, retries=5)
    assert shared.retries == 0  # options are frozen: the shared object is unchanged


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("option", "value", "error", "message"),
    [
        ("version", 0, ConfigurationError, "version must be an integer >= 1"),
        ("kind", "eventually", ConfigurationError, "kind must be one of async, inline"),
        ("batch_size", 0, InvalidInputError, "batch size must be an integer"),
        ("max_batch_bytes", 0, InvalidInputError, "max_bytes must be a positive integer"),
        ("start", (1, 2), ConfigurationError, "start must be a Position"),
        ("partitions", 0, ConfigurationError, "partitions must be an integer from 1 to"),
        ("on_error", "ignore", ConfigurationError, "on_error must be one of stop, skip"),
        ("retries", 101, ConfigurationError, "retries must be an integer 0..100"),
    ],
)
def test_every_kind_checks_every_option_the_same_way(
    kind: str, option: str, value: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^projection 'p': {message}"):
        KINDS[kind](**{option: value})


def test_defaults_come_from_one_place() -> None:
    assert Projection("p").batch_size == DEFAULT_BATCH_SIZE
    assert SearchProjection("p", table="t", text={"a": "A"}).batch_size == DEFAULT_BATCH_SIZE
    assert StateProjection("p", table="t", initial=dict).batch_size == STATE_BATCH_SIZE
    assert Projection("p").max_batch_bytes == DEFAULT_MAX_BATCH_BYTES
    assert Projection("p").options == ProjectionOptions()


def test_an_inline_projection_has_no_partitions_and_redis_is_never_inline() -> None:
    with pytest.raises(ConfigurationError, match="inline projections have no partitions"):
        StateProjection("p", table="t", initial=dict, kind="inline", partitions=2)
    with pytest.raises(ConfigurationError, match="a projection on Redis is async"):
        RedisProjection("p", RedisReadModelStore(), kind="inline")


def test_a_changed_option_is_checked_again() -> None:
    projection = Projection("p")
    projection.version = 2
    projection.start = Position(3, 0)
    assert projection.options == ProjectionOptions(version=2, start=Position(3, 0))
    with pytest.raises(ConfigurationError, match="projection 'p': version must be"):
        projection.version = 0


def test_kinds_that_fold_batches_declare_their_types_without_handlers() -> None:
    state = StateProjection("s", table="t", initial=dict)
    state.evolve("A", "B")(lambda state, event: state)
    search = SearchProjection("i", table="t", text={"a": "A"})
    search.upsert("A")(lambda event: event.data)
    search.delete("C")
    assert state.types == {"A", "B"} and search.types == {"A", "C"}
    assert state._handlers == {} and search._handlers == {}  # nothing that could be called
    with pytest.raises(ConfigurationError, match="already has a handler for 'B'"):
        state.evolve("B")(lambda state, event: state)
    plain = Projection("p")
    plain.handles("X")
    assert plain.types == {"X"}


async def test_a_state_projection_starts_where_it_is_told(app_url: str) -> None:
    counts = StateProjection(
        "counts", table="counts", initial=lambda: {"n": 0}, columns={"n": "BIGINT"}
    )

    @counts.evolve("Counted")
    def counted(state: State, event: RecordedEvent) -> State:
        return {"n": state["n"] + 1}

    async with Application(app_url, [counts]) as app:
        await app.prepare_schema()
        await app.store.append("early", [NewEvent("Counted", {}) for _ in range(3)])
        counts.start = await app.store.head()  # before its checkpoint exists
        await app.setup()
        await app.store.append("late", [NewEvent("Counted", {}) for _ in range(2)])
        await app.run_until_caught_up()
        async with app.read_models.transaction() as tx:
            rows = await tx.fetch("SELECT key, n FROM counts ORDER BY key")
        assert rows == [("late", 2)]  # the history before ``start`` was never read
        assert await app.rebuild("counts") == 2  # a rebuild replays from the same start
        checkpoint = await app.read_models.checkpoint("counts")
        assert checkpoint is not None and checkpoint.events_processed == 2
        assert counts.start != START
