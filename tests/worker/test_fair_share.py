"""The fair-share and hand-back arithmetic of workers, without a database.

Besides each rule on its own, a small simulation of workers sharing units through a table of
owners (what the lease rows are) checks that joining and leaving workers end with every unit
owned exactly once and nobody above its share.
"""

from __future__ import annotations

import pytest

from projectionist.fairshare import (
    Pool,
    Rebalance,
    fair_share,
    hand_back_order,
    plan,
    pools_of,
    rebalance,
    runnable_units,
)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_no_units_means_a_share_of_nothing(workers: int) -> None:
    assert fair_share(0, workers) == 0


def test_a_worker_that_sees_no_live_workers_counts_itself() -> None:
    assert fair_share(5, 0) == 5


@pytest.mark.parametrize(
    ("units", "workers", "share"),
    [(6, 3, 2), (7, 3, 3), (5, 2, 3), (1, 4, 1), (3, 5, 1), (10, 1, 10)],
)
def test_the_share_is_rounded_up(units: int, workers: int, share: int) -> None:
    assert fair_share(units, workers) == share


def test_the_shares_cover_every_unit_and_no_smaller_share_would() -> None:
    for units in range(40):
        for workers in range(1, 12):
            share = fair_share(units, workers)
            assert share * workers >= units, (units, workers)
            assert (share - 1) * workers < units or share == 0, (units, workers)


def test_more_workers_than_units_leaves_some_with_nothing_to_take() -> None:
    owners = _share_out(units=3, workers=["a", "b", "c", "d", "e"])
    assert sorted(owners.values()) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("owned", "share", "change"),
    [
        (5, 3, Rebalance(hand_back=2)),
        (0, 3, Rebalance(take=3)),
        (3, 3, Rebalance()),
        (0, 0, Rebalance()),
        (2, 0, Rebalance(hand_back=2)),
    ],
)
def test_rebalance_moves_towards_the_share(owned: int, share: int, change: Rebalance) -> None:
    assert rebalance(owned, share) == change


def test_builds_are_handed_back_last_and_the_order_is_stable() -> None:
    owned = ["a#0/2", "b~v2", "a#1/2", "b"]
    order = ["b", "a#1/2", "a#0/2", "b~v2"]
    assert hand_back_order(owned, keep_longest={"b~v2"}) == order
    assert hand_back_order(reversed(owned), keep_longest={"b~v2"}) == order
    assert hand_back_order([], keep_longest=set()) == []


def test_runnable_units_leave_out_superseded_units_and_projections_being_built() -> None:
    units = {"a#0/2": "a", "a#1/2": "a", "b": "b", "c": "c"}
    assert runnable_units(units, superseded=set(), building=set()) == list(units)
    assert runnable_units(units, superseded={"c"}, building={"a"}) == ["b"]


# -- workers joining and leaving -----------------------------------------------------------

UNITS = [f"u{n}" for n in range(7)]


def _heartbeat(worker: str, owners: dict[str, str], live: list[str], units: list[str]) -> None:
    """One heartbeat of ``worker`` as ``Worker._tick`` does it, on a table unit -> owner."""
    mine = [unit for unit, owner in owners.items() if owner == worker]
    change = rebalance(len(mine), fair_share(len(units), len(live)))
    for unit in hand_back_order(mine, keep_longest=set())[: change.hand_back]:
        del owners[unit]
    free = [unit for unit in units if unit not in owners]
    for unit in free[: change.take]:
        owners[unit] = worker


def _settle(owners: dict[str, str], live: list[str], units: list[str]) -> dict[str, str]:
    """Heartbeats in turn until nothing changes (it must within a few rounds)."""
    for _ in range(10):
        before = dict(owners)
        for worker in live:
            _heartbeat(worker, owners, live, units)
        if owners == before:
            return owners
    raise AssertionError(f"no steady state: {owners}")


def _share_out(units: int, workers: list[str]) -> dict[str, str]:
    return _settle({}, workers, [f"u{n}" for n in range(units)])


def _assert_shared(owners: dict[str, str], live: list[str], units: list[str]) -> None:
    assert sorted(owners) == sorted(units), "every unit is owned exactly once"
    share = fair_share(len(units), len(live))
    counts = {worker: list(owners.values()).count(worker) for worker in live}
    assert all(count <= share for count in counts.values()), counts
    assert set(owners.values()) <= set(live)


def test_a_joining_worker_gets_a_share_from_the_first() -> None:
    owners = _settle({}, ["w1"], UNITS[:5])
    assert list(owners.values()).count("w1") == 5
    owners = _settle(owners, ["w1", "w2"], UNITS[:5])
    counts = sorted(list(owners.values()).count(w) for w in ["w1", "w2"])
    assert counts == [2, 3]  # what tests/worker/test_worker.py sees on real leases
    _assert_shared(owners, ["w1", "w2"], UNITS[:5])


def test_workers_joining_one_by_one_share_unevenly_divided_units() -> None:
    owners: dict[str, str] = {}
    live: list[str] = []
    for worker in ["a", "b", "c", "d"]:
        live.append(worker)
        owners = _settle(owners, live, UNITS)
        _assert_shared(owners, live, UNITS)


def test_the_units_of_a_leaving_worker_are_taken_by_the_others() -> None:
    live = ["a", "b", "c"]
    owners = _settle({}, live, UNITS)
    for gone in ["b", "a"]:
        live.remove(gone)
        # Its leases expire: its units are free for the others to take.
        owners = {unit: owner for unit, owner in owners.items() if owner != gone}
        owners = _settle(owners, live, UNITS)
        _assert_shared(owners, live, UNITS)
    assert set(owners.values()) == {"c"}


# -- pools: units shared only among the workers that can run them --------------------------


def _pooled_heartbeat(
    worker: str, owners: dict[str, str], capabilities: dict[str, list[str]]
) -> None:
    """One heartbeat as ``Worker._tick`` does it now: a plan per pool of its units."""
    mine = [unit for unit, owner in owners.items() if owner == worker]
    change = plan(mine, pools_of(worker, capabilities[worker], capabilities), set())
    for unit in change.hand_back:
        del owners[unit]
    for pool, count in change.take:
        for unit in sorted(u for u in pool.units if u not in owners)[:count]:
            owners[unit] = worker


def _pooled_settle(owners: dict[str, str], capabilities: dict[str, list[str]]) -> dict[str, str]:
    for _ in range(10):
        before = dict(owners)
        for worker in capabilities:
            _pooled_heartbeat(worker, owners, capabilities)
        if owners == before:
            return owners
    raise AssertionError(f"no steady state: {owners}")


def test_pools_group_units_by_the_workers_that_can_run_them() -> None:
    capabilities = {"old": ["a", "b"], "new": ["a", "b", "c"], "other": ["x"]}
    pools = pools_of("new", capabilities["new"], capabilities)
    assert pools == [
        Pool(frozenset({"a", "b"}), frozenset({"old", "new"})),
        Pool(frozenset({"c"}), frozenset({"new"})),
    ]
    assert [pool.share for pool in pools] == [1, 1]
    # A worker counts itself before its own heartbeat is seen.
    assert pools_of("me", ["a"], {}) == [Pool(frozenset({"a"}), frozenset({"me"}))]


def test_a_share_is_never_summed_across_pools() -> None:
    """At its total (2) but above its share of one pool and below it in the other, a worker
    must still hand back in the first and take in the second, or 'c' has no owner."""
    capabilities = {"w1": ["a", "b", "c"], "w2": ["a", "b"]}
    change = plan(["a", "b"], pools_of("w1", capabilities["w1"], capabilities), set())
    assert change.hand_back == ["b"]
    assert [(sorted(pool.units), count) for pool, count in change.take] == [(["c"], 1)]


def test_two_applications_and_a_rolling_deploy_leave_no_unit_without_an_owner() -> None:
    capabilities = {"a1": ["p", "q", "r"], "a2": ["p", "q", "r"], "b1": ["x", "y"]}
    owners = _pooled_settle({}, capabilities)
    assert sorted(owners) == ["p", "q", "r", "x", "y"]
    assert {owners["x"], owners["y"]} == {"b1"}
    del capabilities["a2"]  # a2 stops: its leases expire or are handed back
    owners = {unit: owner for unit, owner in owners.items() if owner != "a2"}
    owners = _pooled_settle(owners, capabilities)
    assert owners == {"p": "a1", "q": "a1", "r": "a1", "x": "b1", "y": "b1"}

    rolling = {"old": ["p", "q"], "new": ["p", "q", "r", "s", "t"]}
    owners = _pooled_settle({"p": "old", "q": "old"}, rolling)
    assert sorted(owners) == ["p", "q", "r", "s", "t"]
    assert list(owners.values()).count("old") == 1
    del rolling["old"]
    owners = _pooled_settle({u: o for u, o in owners.items() if o != "old"}, rolling)
    assert set(owners.values()) == {"new"} and len(owners) == 5
