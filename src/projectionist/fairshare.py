"""How many units of work a worker should hold, and which to give up: pure arithmetic.

Workers share units (a projection, or one partition of it) through leases. At every
heartbeat a worker computes its fair share from the units it can run and the live workers,
then hands back what it holds above that share or takes free units up to it. Nothing here
touches a database or a clock, so every rule is tested on its own
(``tests/worker/test_fair_share.py``).

The share is rounded up: the shares of all live workers then add up to at least the number
of units, so no unit is left without a worker willing to take it, at the cost of one worker
holding one unit more than another.

Today one pool holds every unit, shared by every live worker. To share each unit only over
the workers that can run it, compute ``fair_share`` per pool of (units, workers that can
run them) and add the shares up; ``rebalance`` and ``hand_back_order`` take the sum as is.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Container, Iterable, Mapping
from dataclasses import dataclass


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
