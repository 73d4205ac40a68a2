"""SQLite read_all pages: the byte bound counted while rows stream in chunks (past the first
chunk too), the head of a filtered page, and events built exactly as the row says."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from projectionist import START, EventStore, NewEvent, Position, create_store
from projectionist.backends.sqlite.statements import _FIRST_ROWS, uuid_from_text

EVENTS = 3 * _FIRST_ROWS  # pages that need more than one chunk of rows


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    async with create_store(f"sqlite:///{tmp_path / 'pages.db'}") as opened:
        await opened.apply_schema()
        # Sizes vary, so that the chunk sized from the average overshoots or falls short.
        events = [
            NewEvent("Small" if n % 5 else "Big", {"n": n, "pad": "x" * (n % 7) * 40})
            for n in range(EVENTS)
        ]
        await opened.append("s", events[: EVENTS // 2])
        await opened.append("t", events[EVENTS // 2 :])
        yield opened


def sizes(path: Path, types: tuple[str, ...] = ("Small", "Big")) -> list[tuple[int, int]]:
    """(position, payload size) of every event of ``types``, as the store counts them."""
    connection = sqlite3.connect(path)
    try:
        marks = ", ".join("?" * len(types))
        return list(
            connection.execute(
                "SELECT position, length(data) + length(metadata) FROM events "
                f"WHERE type IN ({marks}) ORDER BY position",
                types,
            )
        )
    finally:
        connection.close()


def expected_page(rows: list[tuple[int, int]], after: int, limit: int, budget: int) -> list[int]:
    """Positions of the page: an event is in while the payload before it is under budget."""
    page: list[int] = []
    total = 0
    for position, size in rows:
        if position <= after:
            continue
        if len(page) == limit or total >= budget:
            break
        page.append(position)
        total += size
    return page


@pytest.mark.parametrize(
    ("limit", "budget"),
    [(EVENTS, 100_000), (EVENTS, 170_000), (EVENTS, 9_000), (700, 10**9), (EVENTS, 1)],
)
async def test_pages_follow_the_byte_bound_past_the_first_chunk(
    store: EventStore, tmp_path: Path, limit: int, budget: int
) -> None:
    rows = sizes(tmp_path / "pages.db")
    after, seen = START, []
    while (batch := await store.read_all(after, limit, max_bytes=budget)).events:
        positions = [event.position.seq for event in batch.events]
        assert positions == expected_page(rows, after.seq, limit, budget)
        seen += positions
        after = batch.checkpoint
    assert seen == [position for position, _ in rows]  # no gap, no repeat
    assert after == await store.head()


async def test_a_filtered_page_ends_at_the_head_it_was_read_against(
    store: EventStore, tmp_path: Path
) -> None:
    big = sizes(tmp_path / "pages.db", ("Big",))
    head = await store.head()
    batch = await store.read_all(START, EVENTS, types=["Big"], max_bytes=10**9)
    assert [event.position.seq for event in batch.events] == [p for p, _ in big]
    assert batch.checkpoint == head  # every event up to the head was scanned
    empty = await store.read_all(Position(0, big[-1][0]), EVENTS, types=["Big"])
    assert empty.events == [] and empty.checkpoint == head
    nothing = await store.read_all(START, 10, types=["Missing"])
    assert nothing.events == [] and nothing.checkpoint == head


async def test_paged_events_equal_the_stream_read(store: EventStore) -> None:
    paged = [
        *(await store.read_all(START, EVENTS // 2, max_bytes=10**9)).events,
        *(await store.read_all(Position(0, EVENTS // 2), EVENTS)).events,
    ]
    streamed = [*await store.read_stream("s"), *await store.read_stream("t")]
    assert paged == streamed
    assert all(type(event.id) is uuid.UUID for event in paged)
    assert paged[0].data == {"n": 0, "pad": ""} and paged[-1].data["n"] == EVENTS - 1


@pytest.mark.parametrize(
    "text",
    [
        str(uuid.UUID(int=0)),
        str(uuid.UUID(int=2**128 - 1)),
        "12345678123456781234567812345678",
        "{12345678-1234-5678-1234-567812345678}",
        "urn:uuid:12345678-1234-5678-1234-567812345678",
        "12345678-1234-5678-1234-56781234567G",
        "1234",
    ],
)
def test_uuids_parse_as_uuid_does(text: str) -> None:
    try:
        expected: object = uuid.UUID(text)
    except ValueError:
        with pytest.raises(ValueError, match=r"hexadecimal UUID string|invalid literal"):
            uuid_from_text(text)
        return
    parsed = uuid_from_text(text)
    assert parsed == expected and hash(parsed) == hash(expected)
    assert str(parsed) == str(expected) and parsed.is_safe is uuid.SafeUUID.unknown
