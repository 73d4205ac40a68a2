"""How many units of work a worker should hold, and which to give up: pure arithmetic.

Workers share units (a projection, or one partition of it) through leases. Not every live
worker can run every unit: workers of two applications may share one database, and in a
rolling deploy the new code may have projections the old one has not. So the units are
split into **pools**: units that the same set of live workers can run (each worker
publishes its units with its heartbeat). At every heartbeat a worker computes its fair
share of each of its pools, then hands back what it holds above a pool's share or takes free
units of that pool up to it (``plan``). Nothing here touches a database or a clock, so every
rule is tested on its own (``tests/worker/test_fair_share.py``).

A share is rounded up: the shares of a pool's workers then add up to at least its number of
units, so no unit is left without a worker willing to take it, at the cost of one worker
holding one unit more than another. Shares are never summed across pools: a worker at its
total but above its share of one pool and below it in another would leave the second
pool's units to nobody.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Container, Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Rebalance:
    """What one heartbeat changes: units to hand back or to take (at most one is non-zero)."""

    hand_back: int = 0
    take: int = 0


def fair_share(units: int, workers: int) -> int:
    """The units one of ``workers`` live workers should hold out of ``units``, rounded up.

    A worker always counts itself, even before its first heartbeat is seen: with no live
    workers recorded the share is every unit."""
    return math.ceil(units / max(workers, 1))


def rebalance(owned: int, share: int) -> Rebalance:
    """Move a worker holding ``owned`` units towards its ``share``."""
    if owned > share:
        return Rebalance(hand_back=owned - share)
    return Rebalance(take=share - owned)


def hand_back_order(owned: Iterable[str], keep_longest: Container[str]) -> list[str]:
    """The owned units in the order they are handed back: the highest-named first, and the
    units in ``keep_longest`` (blue/green builds, whose progress is worth keeping) last.

    Any order would balance; this one is stable, so two workers rebalancing at once do not
    trade the same units back and forth."""
    return sorted(owned, key=lambda unit: (unit not in keep_longest, unit), reverse=True)


def runnable_units(
    units: Mapping[str, str], superseded: Collection[str], building: Collection[str]
) -> list[str]:
    """The units (unit -> projection name) a worker can run now: not ``superseded`` by newer
    code, and not of a projection whose newer version is ``building`` (the old version's
    units stay with the workers running the old code, so it follows new events meanwhile)."""
    return [
        unit
        for unit, projection in units.items()
        if unit not in superseded and projection not in building
    ]


@dataclass(frozen=True, slots=True)
class Pool:
    """Units that the same live workers can run, shared among those workers."""

    units: frozenset[str]
    workers: frozenset[str]

    @property
    def share(self) -> int:
        return fair_share(len(self.units), len(self.workers))


def pools_of(
    worker: str, units: Iterable[str], capabilities: Mapping[str, Collection[str]]
) -> list[Pool]:
    """The pools of ``worker``'s ``units``, given the units each live worker can run
    (``capabilities``: worker -> units). ``worker`` always counts itself, even before its
    own heartbeat is seen. Sorted by their units, so every worker sees the same order."""
    capable: dict[str, set[str]] = {unit: {worker} for unit in units}
    for other, theirs in capabilities.items():
        for unit in theirs:
            if unit in capable:
                capable[unit].add(other)
    grouped: dict[frozenset[str], set[str]] = {}
    for unit, workers in capable.items():
        grouped.setdefault(frozenset(workers), set()).add(unit)
    pools = [Pool(frozenset(units), workers) for workers, units in grouped.items()]
    return sorted(pools, key=lambda pool: sorted(pool.units))


@dataclass(frozen=True, slots=True)
class Plan:
    """What one heartbeat changes: units to hand back, and how many to take of each pool."""

    hand_back: list[str] = field(default_factory=list)
    take: list[tuple[Pool, int]] = field(default_factory=list)


def plan(owned: Collection[str], pools: Iterable[Pool], keep_longest: Container[str]) -> Plan:
    """Move a worker holding ``owned`` towards its share of each of its ``pools``; the units
    in ``keep_longest`` are handed back last (``hand_back_order``)."""
    result = Plan()
    for pool in pools:
        mine = [unit for unit in owned if unit in pool.units]
        change = rebalance(len(mine), pool.share)
        result.hand_back.extend(hand_back_order(mine, keep_longest)[: change.hand_back])
        if change.take:
            result.take.append((pool, change.take))
    return result
