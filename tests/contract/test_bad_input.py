"""Bad input fails before anything is written, with a message a person can act on."""

from __future__ import annotations

import math
from typing import Any

import pytest

from projectionist import START, EventStore, InvalidInputError, NewEvent, Position


@pytest.mark.parametrize(
    ("stream_id", "message"),
    [
        ("", "1 to 200 characters"),
        ("x" * 201, "1 to 200 characters"),
        ("a\x00b", "NUL"),
        (42, "must be a string"),
    ],
)
async def test_bad_stream_ids(store: EventStore, stream_id: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        await store.append(stream_id, [NewEvent("A", {})])
    assert await store.head() == START


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: NewEvent("", {}), "event type must have 1 to 200"),
        (lambda: NewEvent("T" * 201, {}), "event type must have 1 to 200"),
        (lambda: NewEvent(None, {}), "event type must be a string"),  # type: ignore[arg-type]
        (lambda: NewEvent("A", {}, id="not-a-uuid"), "event id must be a uuid"),  # type: ignore[arg-type]
    ],
)
def test_bad_new_events(make: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        make()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "data of event 'A' must be a JSON object"),
        ("text", "must be a JSON object"),
        ({"when": object()}, "not JSON-serializable"),
        ({1: "non-string key"}, "not JSON-serializable"),
        ({"big": 2**70}, "not JSON-serializable"),
        ({"nul": "a\x00b"}, "NUL"),
        ({"ratio": math.nan}, "NaN or an infinite number"),
        ({"deep": [1, {"x": -math.inf}]}, "NaN or an infinite number"),
    ],
)
async def test_bad_data_writes_nothing(store: EventStore, data: Any, message: str) -> None:
    good = NewEvent("Fine", {})
    with pytest.raises(InvalidInputError, match=message):
        await store.append("s", [good, NewEvent("A", data)])
    assert await store.read_stream("s") == []
    assert await store.head() == START


async def test_bad_metadata(store: EventStore) -> None:
    with pytest.raises(InvalidInputError, match="metadata of event 'A'"):
        await store.append("s", [NewEvent("A", {}, {"x": {1, 2}})])


@pytest.mark.parametrize("expected", [-1, "any", 1.5, True, None])
async def test_bad_expected_versions(store: EventStore, expected: Any) -> None:
    with pytest.raises(InvalidInputError, match="expected_version must be ANY, NO_STREAM"):
        await store.append("s", [NewEvent("A", {})], expected_version=expected)


async def test_empty_and_single_event_appends(store: EventStore) -> None:
    with pytest.raises(InvalidInputError, match="no events given"):
        await store.append("s", [])
    with pytest.raises(InvalidInputError, match="wrap a single event in a list"):
        await store.append("s", NewEvent("A", {}))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="expected a NewEvent"):
        await store.append("s", [{"type": "A"}])  # type: ignore[list-item]


@pytest.mark.parametrize("limit", [0, -5, 100_001, 2.5, "10"])
async def test_bad_batch_sizes(store: EventStore, limit: Any) -> None:
    with pytest.raises(InvalidInputError, match="batch size must be an integer"):
        await store.read_all(START, limit=limit)


async def test_types_must_be_a_collection(store: EventStore) -> None:
    with pytest.raises(InvalidInputError, match="not a single string"):
        await store.read_all(START, types="OrderCreated")
    with pytest.raises(InvalidInputError, match="event type must have"):
        await store.read_all(START, types=[""])


def test_position_parse_and_order() -> None:
    assert Position.parse("12/5") == Position(12, 5)
    assert Position.parse("7") == Position(0, 7)
    assert str(Position(3, 4)) == "3/4"
    assert Position(1, 900) < Position(2, 1)
    for bad in ["", "a/b", "-1/2", "1/2/3"]:
        with pytest.raises(InvalidInputError, match="invalid position"):
            Position.parse(bad)
