"""``MessageDbSource``: the messages of chosen categories of a Message DB, read gap-safely.

Message DB (https://github.com/message-db/message-db) keeps every message in one table,
``message_store.messages``, numbered by the sequence ``messages_global_position_seq``. Read
in ``global_position`` order alone, it would lose messages: a writer that drew 104 and
commits after 105 was read is never seen. What makes a safe order possible is how its
writers write. In the installed SQL (npm ``@eventide/message-db`` 1.3.1, file
``database/functions/write-message.sql``) ``write_message`` first calls ``acquire_lock``
(``database/functions/acquire-lock.sql``), which takes
``pg_advisory_xact_lock(hash_64(category(stream_name)))``, and only then inserts, drawing
its global position. The lock is held until the transaction ends. So within one category
the writers are serialized: they draw and commit in global_position order. Across
categories they do not.

Each read computes a horizon H from three statements, in this order:

- t0: L, the last value the sequence handed out (non-transactional).
- t1: which chosen categories' advisory locks are held now (pg_locks, the bigint key split
  into classid/objid, objsubid 1, computed with ``message_store.hash_64``).
- t2: the page, in a snapshot taken after t1. For each category c, h_c is its highest
  visible global_position (or the checkpoint, if higher). Its floor f_c is L when its lock
  was free at t1; when held, the L of the last read of this source object that saw it free
  (0 if none did). c's horizon is max(h_c, f_c); H is the least of them, and only messages
  up to H are returned.

Why no message can appear at or below H later. Take a message m of category c that is not
visible at t2. Its writer W held c's lock from before drawing m until it ended, and the
writer of h_c (committed, visible) held the same lock; the two did not overlap, and W did
not end before t2, so W drew after h_c was drawn: m > h_c. If c's lock was free at the t1
of some read k (this one or an earlier one), W did not hold it then; W has not ended by
t2, which is later, so it took the lock after t1 of k and drew m after t0 of k: m > L_k
= f_c. (PostgreSQL makes a commit visible before it releases the locks, so a lock free at
t1 means its last holder is visible to any later snapshot.) Either way m lies beyond c's
horizon, so beyond H; and messages up to the checkpoint were vouched for by the read that
returned it. A page that is not cut short by ``limit`` or ``max_bytes`` has therefore seen
everything up to H: its checkpoint is H, which may lie past its last message (even at a
message of a category not read). Floors are read and raised in the same step, after t1's
answer and before t2 is sent, so a floor raised by a concurrent read's t1 is used only by
snapshots taken after that t1.

The promise rests on the writers: they must write through ``write_message`` (a direct
INSERT takes no lock), and the sequence must hand out values one at a time (``CACHE 1``,
Message DB's default; ``open()`` refuses another cache size, with which a later writer can
draw a smaller value). A writer that keeps its transaction open holds back the messages
of every chosen category beyond its category's floor; ``held_back()`` names it.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import UTC

import asyncpg
import orjson

from ...defaults import DEFAULT_BATCH_SIZE, DEFAULT_POLL_INTERVAL
from ...errors import ConfigurationError
from ...events import (
    START,
    JsonObject,
    Position,
    RecordedEvent,
    validate_position,
)
from ...partitions import Partition
from ...source import (
    BACKLOG_COUNTED,
    Backlog,
    Decoder,
    EventBatch,
    HeldBack,
    decoded,
    validated_read,
)
from ...urls import redact_url
from . import message_db_sql as sql
from .connections import Connection
from .pooled_source import PooledPostgresSource

INSTALL_HINT = (
    "install Message DB there first (its database/install.sh, from the npm package "
    "@eventide/message-db, with DATABASE_NAME set to that database)"
)


class MessageDbSource(PooledPostgresSource):
    """The messages of ``categories`` of a Message DB, in a gap-safe global order."""

    def __init__(
        self,
        url: str,
        categories: Collection[str],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        pool_size: int = 4,
        decode: Decoder | None = None,
    ) -> None:
        # decode gets a message's data (its jsonb as text): e.g. to unwrap an envelope.
        super().__init__(
            _checked_url(url), poll_interval=poll_interval, pool_size=pool_size, decode=decode
        )
        self.categories = validate_categories(categories)
        self.what = f"the Message DB categories {', '.join(self.categories)}"
        self._floors = dict.fromkeys(self.categories, 0)
        """Per category, a position no message of it that is not visible yet can be at or
        below (the sequence's last value when its lock was last seen free)."""

    async def check_opened(self, pool: asyncpg.Pool) -> None:
        with self._translated("checking Message DB in"):
            [row] = await pool.fetch(sql.INSTALLED)
        missing = [
            name for name in ("messages", "sequence", "hash_64", "category") if not row[name]
        ]
        if missing:
            raise ConfigurationError(
                f"Message DB is not installed at {self.url}: no message_store "
                f"{', '.join(missing)}; {INSTALL_HINT}"
            )
        if row["cache_size"] != 1:
            raise ConfigurationError(
                f"message_store.messages_global_position_seq at {self.url} caches "
                f"{row['cache_size']} values per session: a later writer could then draw a "
                "smaller global position, and no reader can order such messages safely. "
                "Set it back with ALTER SEQUENCE ... CACHE 1 (Message DB's default)"
            )

    async def _before_reading(self, connection: Connection) -> tuple[list[int], list[str]]:
        """t0 then t1, each a statement of its own, before the statement that reads (t2):
        the last position drawn, then the categories whose writer's lock is held. Returns
        each category's floor and the held ones."""
        with self._translated("reading the horizon of"):
            drawn: int = await connection.fetchval(sql.LAST_DRAWN)
            held: list[str] = await connection.fetchval(sql.HELD, self.categories)
        # A category free at t1 can get no message at or below ``drawn`` that a later
        # snapshot misses, and that stays true: a held category keeps the floor of the last
        # read that saw it free. Floors are taken after our own t1 answered, so any raise
        # in them comes from a t1 that ended before our t2 is even sent.
        for category in self.categories:
            if category not in held:
                self._floors[category] = max(self._floors[category], drawn)
        return [self._floors[category] for category in self.categories], held

    async def read_all(
        self,
        after: Position = START,
        limit: int = DEFAULT_BATCH_SIZE,
        types: Collection[str] | None = None,
        max_bytes: int | None = None,
        partition: Partition | None = None,
    ) -> EventBatch:
        after, limit, budget, type_list, part = validated_read(
            after, limit, types, max_bytes, partition
        )
        async with self.pool.acquire() as connection:
            floors, _ = await self._before_reading(connection)
            with self._translated("reading messages from"):
                rows = await connection.fetch(
                    sql.PAGE,
                    *(self.categories, floors, after.seq, limit, type_list),
                    *(part.count, part.index, budget),
                )
        events = [_event(row, self.decode) for row in rows if row["seq"] is not None]
        if len(events) == limit or (events and rows[0]["fetched"] > len(events)):
            return EventBatch(events, events[-1].position)  # cut by count or by bytes
        # Everything up to the horizon was scanned: no message can appear below it.
        return EventBatch(events, Position(0, max(after.seq, rows[0]["h"])))

    async def head(self) -> Position:
        async with self.pool.acquire() as connection:
            floors, _ = await self._before_reading(connection)
            with self._translated("reading the head of"):
                seq = await connection.fetchval(sql.HEAD, self.categories, floors)
        return START if seq is None else Position(0, seq)

    async def last_committed(self) -> Position:
        with self._translated("reading the last message of"):
            seq = await self.pool.fetchval(sql.LAST, self.categories)
        return START if seq is None else Position(0, seq)

    async def count_after(self, after: Position, partition: Partition | None = None) -> int:
        after = validate_position(after, "after")
        part = partition.validate() if partition is not None else Partition(0, 1)
        async with self.pool.acquire() as connection:
            floors, _ = await self._before_reading(connection)
            with self._translated("counting the messages of"):
                counted: int = await connection.fetchval(
                    sql.COUNT, *(self.categories, floors, after.seq, part.count, part.index)
                )
        return counted

    async def backlog(self, after: Position, partition: Partition | None = None) -> Backlog:
        """Counted up to BACKLOG_COUNTED committed messages (held back ones too), estimated
        from global positions beyond (other categories' messages make that read high)."""
        after = validate_position(after, "after")
        part = partition.validate() if partition is not None else Partition(0, 1)
        with self._translated("counting the backlog of"):
            [row] = await self.pool.fetch(
                sql.BOUNDED_COUNT,
                *(self.categories, after.seq, part.count, part.index, BACKLOG_COUNTED),
            )
        last = await self.last_committed()
        oldest = None if row["oldest"] is None else row["oldest"].replace(tzinfo=UTC)
        return Backlog.measured(
            row["counted"], row["reached"], last.seq if last > START else None, oldest, part.count
        )

    async def held_back(self) -> HeldBack | None:
        """Committed messages beyond the horizon, held by an open writer's category lock:
        how long the first has waited, and the lock holder's process id, state and age."""
        async with self.pool.acquire() as connection:
            floors, held = await self._before_reading(connection)
            with self._translated("reading what is held back in"):
                row = await connection.fetchrow(sql.HELD_BACK, self.categories, floors, held)
                if row is None:
                    return None
                holders = await connection.fetch(sql.HOLDERS, row[1] or [])
        return HeldBack(max(0.0, row[0]), _holder(holders))


def _holder(holders: list[asyncpg.Record]) -> str | None:
    """The oldest lock holder, said without its SQL text (None: it has ended meanwhile)."""
    if not holders:
        return None
    first = holders[0]
    age = "" if first["age"] is None else f", transaction open {first['age']:.1f} s"
    return (
        f"pid {first['pid']} ({first['state'] or 'state unknown'}{age}) holds the write "
        f"lock of category {first['category']!r}"
    )


def _event(row: asyncpg.Record, decode: Decoder) -> RecordedEvent:
    return RecordedEvent(
        id=uuid.UUID(str(row["id"])),
        stream_id=row["stream_name"],
        version=row["version"],
        type=row["type"],
        data=_json_object(row["data"], "data", row, decode),
        metadata=_json_object(row["metadata"], "metadata", row, orjson.loads),
        recorded_at=row["time"].replace(tzinfo=UTC),  # Message DB stores UTC, zone-less
        position=Position(0, row["seq"]),
    )


def _json_object(text: str | None, what: str, row: asyncpg.Record, decode: Decoder) -> JsonObject:
    """A message's jsonb (NULL: empty) as a dict; anything else is an EventDecodingError."""
    if text is None:
        return {}
    return decoded(decode, text, f"the {what} of message {row['id']} at {row['seq']}")


def validate_categories(categories: object) -> list[str]:
    """A non-empty collection of Message DB category names, in the order given, once each.

    A category is what ``message_store.category(stream_name)`` returns, the stream name up
    to its first '-': so a name with '-' in it is a stream, never a category."""
    if isinstance(categories, str | bytes) or not isinstance(categories, Collection):
        raise ConfigurationError(
            "categories must be a collection of category names, e.g. ['account'], "
            f"not {type(categories).__name__}"
        )
    names = list(dict.fromkeys(categories))
    if not names:
        raise ConfigurationError("categories is empty: name at least one category to read")
    for name in names:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ConfigurationError(f"a category must be a non-empty string, got {name!r}")
        if "-" in name:
            raise ConfigurationError(
                f"{name!r} is not a category: Message DB's category is the stream name up "
                f"to its first '-' ({name.split('-', 1)[0]!r} here)"
            )
    return names


def _checked_url(url: object) -> str:
    if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
        shown = redact_url(url) if isinstance(url, str) else type(url).__name__
        raise ConfigurationError(
            f"a Message DB source needs a postgresql:// URL of the database Message DB is "
            f"installed in, got {shown}"
        )
    return url
