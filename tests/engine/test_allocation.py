"""Fewer collections while batches run: raised for the batch, shared, put back after."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from projectionist import Application, NewEvent, Projection, ReadModelTransaction, RecordedEvent
from projectionist.allocation import BATCH_THRESHOLD, fewer_collections


@pytest.fixture(autouse=True)
def default_threshold() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, *saved[1:])
    yield
    gc.set_threshold(*saved)


def test_raised_inside_nested_blocks_and_put_back_by_the_last() -> None:
    with fewer_collections():
        assert gc.get_threshold()[0] == BATCH_THRESHOLD
        with fewer_collections():
            assert gc.get_threshold()[0] == BATCH_THRESHOLD
        assert gc.get_threshold()[0] == BATCH_THRESHOLD
    assert gc.get_threshold()[0] == 700


def test_a_higher_threshold_or_collection_turned_off_is_left_alone() -> None:
    gc.set_threshold(200_000)
    with fewer_collections():
        assert gc.get_threshold()[0] == 200_000
    assert gc.get_threshold()[0] == 200_000
    gc.set_threshold(0)
    with fewer_collections():
        assert gc.get_threshold()[0] == 0
    assert gc.get_threshold()[0] == 0


def test_a_threshold_changed_meanwhile_is_kept() -> None:
    with fewer_collections():
        gc.set_threshold(1234)
    assert gc.get_threshold()[0] == 1234


def test_a_failing_block_puts_it_back() -> None:
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("boom")
    assert gc.get_threshold()[0] == 700


async def test_a_runners_batches_run_with_it_and_it_is_back_after() -> None:
    seen: list[int] = []
    projection = Projection("thresholds")

    @projection.on("Tick")
    async def tick(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        seen.append(gc.get_threshold()[0])

    async with Application("memory://", [projection]) as app:
        await app.setup()
        await app.store.append("clock", [NewEvent("Tick", {}) for _ in range(3)])
        await app.run_until_caught_up()
    assert seen == [BATCH_THRESHOLD] * 3
    assert gc.get_threshold()[0] == 700
