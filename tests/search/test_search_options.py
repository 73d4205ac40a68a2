"""Search projections take every projection option: partitions, error policy, retries, start."""

from __future__ import annotations

from collections.abc import Mapping

from projectionist import Application, NewEvent, RecordedEvent
from projectionist.search import SearchProjection, search
from tests.search.test_search import CATALOGUE, ids, listed, open_catalogue, products


def partitioned_products(partitions: int) -> SearchProjection:
    index = SearchProjection(
        "products",
        table="products_index",
        key="sku",
        text={"name": "A", "description": "B", "category": "C"},
        stored=["price"],
        partitions=partitions,
    )

    @index.upsert("Listed", "Updated", "PriceChanged")
    def fields(event: RecordedEvent) -> Mapping[str, object]:
        return event.data

    index.delete("Delisted")
    return index


async def test_a_partitioned_index_finds_what_an_unpartitioned_one_finds(app_url: str) -> None:
    index = partitioned_products(3)
    async with Application(app_url, [index]) as app:
        await open_catalogue(app)
        assert [runner.unit for runner in app.runners("products")] == [
            "products#0/3",
            "products#1/3",
            "products#2/3",
        ]
        hits = await search(app.read_models, index, "chocolate")
        assert ids(hits) == ["p-choc", "p-coffee"]
        assert set(ids(await search(app.read_models, index, "sweets"))) == {"p-choc", "p-honey"}
        await app.store.append("p-choc", [NewEvent("Delisted", {"sku": "p-choc"})])
        await app.run_until_caught_up()
        assert ids(await search(app.read_models, index, "chocolate")) == ["p-coffee"]
        assert await app.rebuild("products") == len(CATALOGUE) + 1
        assert ids(await search(app.read_models, index, "chocolate")) == ["p-coffee"]
        # Each partition applied its own streams: together, every event once.
        processed = [
            checkpoint.events_processed
            for name, checkpoint in (await app.read_models.checkpoints()).items()
            if name.startswith("products#")
        ]
        assert sum(processed) == len(CATALOGUE) + 1


async def test_skip_dead_letters_a_bad_document_and_indexes_the_rest(app_url: str) -> None:
    index = SearchProjection(
        "products",
        table="products_index",
        key="sku",
        text={"name": "A", "description": "B", "category": "C"},
        on_error="skip",
        retries=1,
    )

    @index.upsert("Listed")
    def fields(event: RecordedEvent) -> Mapping[str, object]:
        return event.data

    async with Application(app_url, [index]) as app:
        await app.setup()
        await app.store.append("p-choc", [listed("p-choc")])
        await app.store.append("p-bad", [NewEvent("Listed", {"sku": "p-bad", "name": 42})])
        await app.store.append("p-honey", [listed("p-honey")])
        await app.run_until_caught_up()
        [letter] = await app.dead_letters("products")
        assert letter.event.stream_id == "p-bad" and letter.attempts == 2
        assert "text field 'name' must be a string" in letter.error
        assert set(ids(await search(app.read_models, index, "sweets"))) == {"p-choc", "p-honey"}
        [status] = await app.status()
        assert status.dead_letters == 1 and status.fault is None and status.lag == 0


async def test_an_index_that_starts_at_the_head_skips_history(app_url: str) -> None:
    index = products()
    async with Application(app_url, [index]) as app:
        await app.prepare_schema()
        await app.store.append("p-choc", [listed("p-choc")])
        index.start = await app.store.head()
        await app.setup()
        await app.store.append("p-honey", [listed("p-honey")])
        await app.run_until_caught_up()
        assert ids(await search(app.read_models, index, "sweets")) == ["p-honey"]
