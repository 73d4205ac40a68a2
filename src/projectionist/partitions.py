"""Partitions: a projection's streams split by a stable hash, each part with its own checkpoint.

``partition_of`` is the one definition of the hash; the PostgreSQL backend computes the same
value in SQL (``PARTITION_SQL``) and SQLite calls this function, so every backend agrees and
an event of a stream always lands in the same partition: order within a stream is kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .errors import ConfigurationError, InvalidInputError

MAX_PARTITIONS = 1024

# The first 32 bits of md5(stream_id) as an unsigned number, modulo the count ($ parameters
# filled by the caller). ``bit(32)::bigint`` keeps it unsigned.
PARTITION_SQL = "mod(('x' || substr(md5({column}), 1, 8))::bit(32)::bigint, {count})"


def partition_of(stream_id: str, count: int) -> int:
    """The partition (0 .. count-1) that the events of ``stream_id`` belong to."""
    digest = hashlib.md5(stream_id.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % count


@dataclass(frozen=True, slots=True)
class Partition:
    """Part ``index`` of ``count``: a read returns only events of its streams."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def validate(self) -> Partition:
        index, count = self.index, self.count
        for value in (index, count):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInputError(f"partition must be two integers, got {self!r}")
        if not 1 <= count <= MAX_PARTITIONS or not 0 <= index < count:
            raise InvalidInputError(
                f"partition {index}/{count} is invalid: need 0 <= index < count <= {MAX_PARTITIONS}"
            )
        return self

    def holds(self, stream_id: str) -> bool:
        return self.count == 1 or partition_of(stream_id, self.count) == self.index


def validate_partition_count(name: str, partitions: object) -> int:
    if (
        isinstance(partitions, bool)
        or not isinstance(partitions, int)
        or not 1 <= partitions <= MAX_PARTITIONS
    ):
        raise ConfigurationError(
            f"projection {name!r}: partitions must be an integer from 1 to {MAX_PARTITIONS}"
        )
    return partitions


def unit_name(projection: str, partition: Partition | None) -> str:
    """The name of one unit of work: the projection, or one partition of it ("name#2/4").

    It is the checkpoint's and the lease's key; '#' cannot occur in a projection name, so a
    partition's key never collides with another projection's."""
    return projection if partition is None or partition.count == 1 else f"{projection}#{partition}"


def split_unit(unit: str) -> tuple[str, Partition | None]:
    name, _, part = unit.partition("#")
    if not part:
        return name, None
    index, _, count = part.partition("/")
    return name, Partition(int(index), int(count))
