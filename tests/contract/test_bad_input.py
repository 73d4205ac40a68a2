"""Bad input fails before anything is written, with a message a person can act on."""

from __future__ import annotations

import math
from typing import Any

import pytest

from projectionist import (
    START,
    Application,
    ConfigurationError,
    EventStore,
    InvalidInputError,
    NewEvent,
    Position,
    Projection,
    create_store,
)
from projectionist.targets.redis import RedisReadModelStore
from tests.conftest import PG_DSN


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


@pytest.mark.parametrize("expected", [-1, "any", 1.5, True, None, 2**63])
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


# -- issue 12: bad input that escaped the exception root or was accepted ---------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.read_all(None),
        lambda s: s.read_all("0/1"),
        lambda s: s.read_all((0, 1)),
        lambda s: s.read_all(Position(2**63, 0)),
        lambda s: s.read_all(Position(0, -1)),
        lambda s: s.read_all(Position(True, 0)),
        lambda s: s.count_after(None),
        lambda s: s.count_after(Position(0, 2**64)),
        lambda s: s.backlog("0/1"),
    ],
    ids=[
        "none",
        "text",
        "tuple",
        "tx-2**63",
        "negative",
        "bool",
        "count-none",
        "count-big",
        "backlog",
    ],
)
async def test_positions_must_be_positions(store: EventStore, call: Any) -> None:
    await store.append("s", [NewEvent("A", {})])
    with pytest.raises(InvalidInputError, match=r"after (must be a Position|Position)"):
        await call(store)


@pytest.mark.parametrize(
    "text", [None, 5, "1_000/2", "\u0661/\u0662", "٣", f"0/{2**63}", f"{2**64}/1", "+1/2", "1/ 2"]
)
def test_position_parse_refuses_what_str_never_prints(text: Any) -> None:
    with pytest.raises(InvalidInputError, match="invalid position"):
        Position.parse(text)


def test_position_parse_accepts_the_largest_positions() -> None:
    big = 2**63 - 1
    assert Position.parse(f" {big}/{big} ") == Position(big, big)


async def test_append_none_events(store: EventStore) -> None:
    with pytest.raises(InvalidInputError, match="a sequence of events, not NoneType"):
        await store.append("s", None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="a sequence of events, not int"):
        await store.append("s", 5)  # type: ignore[arg-type]
    assert await store.head() == START


@pytest.mark.parametrize("version", ["a", None, 1.0, True, -1, 2**63])
async def test_bad_from_versions(store: EventStore, version: Any) -> None:
    await store.append("s", [NewEvent("A", {})])
    with pytest.raises(InvalidInputError, match="from_version must be"):
        await store.read_stream("s", from_version=version)


async def test_expected_version_beyond_64_bits(store: EventStore) -> None:
    with pytest.raises(InvalidInputError, match="expected_version must be ANY, NO_STREAM"):
        await store.append("s", [NewEvent("A", {})], expected_version=2**70)
    assert await store.head() == START


async def test_lone_surrogates_are_refused(store: EventStore) -> None:
    with pytest.raises(InvalidInputError, match=r"stream id .* not valid Unicode"):
        await store.append("s\ud800", [NewEvent("A", {})])
    with pytest.raises(InvalidInputError, match=r"event type .* not valid Unicode"):
        NewEvent("A\udfff", {})
    with pytest.raises(InvalidInputError, match="not valid Unicode"):
        await store.read_all(START, types=["\ud800"])
    with pytest.raises(InvalidInputError, match="not JSON-serializable"):
        await store.append("s", [NewEvent("A", {"text": "\ud800"})])
    assert await store.head() == START
    await store.append("s", [NewEvent("A", {})])
    assert len((await store.read_all(START, partition=None)).events) == 1


async def test_a_backslash_u0000_is_not_a_nul(store: EventStore) -> None:
    data = {"path": "C:\\u0000", "\\u0000key": ["\\\\u0000"]}
    await store.append("s", [NewEvent("A", data, {"note": "\\u0000"})])
    [event] = await store.read_stream("s")
    assert (event.data, event.metadata) == (data, {"note": "\\u0000"})
    with pytest.raises(InvalidInputError, match="NUL"):
        await store.append("s", [NewEvent("A", {"k\x00": 1})])
    with pytest.raises(InvalidInputError, match="NUL"):
        await store.append("s", [NewEvent("A", {"k": ["\\", "\x00"]})])


async def test_wait_for_takes_a_position() -> None:
    projection = Projection("p")
    async with Application("memory://", [projection]) as app:
        with pytest.raises(InvalidInputError, match="position must be a Position"):
            await app.wait_for("p", "0/1")  # type: ignore[arg-type]


def test_duplicate_projection_names_in_a_generator() -> None:
    with pytest.raises(ConfigurationError, match="projection names must be unique"):
        Application("memory://", (Projection("same") for _ in range(2)))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u@h/db?schema=", "empty schema"),
        ("postgresql://u@h/db?schema=a&schema=", "empty schema"),
    ],
)
def test_empty_schema_in_url(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_store(url)
    with pytest.raises(ConfigurationError, match=message):
        create_store("postgresql://u@h/db", schema="")


async def test_bogus_sslmode_is_a_configuration_error() -> None:
    store = create_store(f"{PG_DSN}?sslmode=bogus")
    with pytest.raises(ConfigurationError, match="sslmode"):
        await store.open()
    await store.close()


@pytest.mark.parametrize("ttl", [math.nan, math.inf, "10", None, 0, -1])
def test_redis_lock_ttl(ttl: Any) -> None:
    with pytest.raises(ConfigurationError, match="lock_ttl"):
        RedisReadModelStore(lock_ttl=ttl)


@pytest.mark.parametrize("timeout", [math.nan, math.inf, "3"])
def test_redis_socket_timeout(timeout: Any) -> None:
    with pytest.raises(ConfigurationError, match="socket_timeout"):
        RedisReadModelStore(socket_timeout=timeout)
