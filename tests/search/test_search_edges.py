"""The edges of search projections on every backend: the longest names the constructor
accepts work end to end, and a query the database cannot take is a SearchQueryError."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from projectionist import Application, InvalidInputError, NewEvent, RecordedEvent
from projectionist.identifiers import MAX_IDENTIFIER_LENGTH
from projectionist.search import SearchProjection, SearchQueryError, search
from tests.conftest import settle


def longest(prefix: str) -> str:
    """The longest identifier a projection accepts (48 characters), starting with ``prefix``."""
    return prefix.ljust(MAX_IDENTIFIER_LENGTH, "x")


TITLE, BODY, PRICE = longest("title_"), longest("body_"), longest("price_")


def longest_index(table: str) -> SearchProjection:
    index = SearchProjection(
        longest("search_"),
        table=table,
        key="sku",
        text={TITLE: "A", BODY: "B"},
        stored=[PRICE],
    )

    @index.upsert("Listed")
    def fields(event: RecordedEvent) -> Mapping[str, object]:
        return event.data

    index.delete("Delisted")
    return index


def listed(sku: str, title: str, body: str) -> NewEvent:
    return NewEvent("Listed", {"sku": sku, TITLE: title, BODY: body, PRICE: 2})


@pytest.mark.parametrize("length", [39, 40, 44, 45, MAX_IDENTIFIER_LENGTH])
async def test_every_accepted_table_name_length_works_end_to_end(app_url: str, length: int) -> None:
    """The names derived from the table (its index, FTS5 table and triggers) fit whatever
    length the constructor accepted: set-up, search, rebuild and deletes all work."""
    table = "t" * length
    index = longest_index(table)
    assert all(len(name) <= MAX_IDENTIFIER_LENGTH for name in index.tables)
    async with Application(app_url, [index]) as app:
        await app.setup()
        await app.store.append("a", [listed("a", "dark chocolate", "cocoa bar")])
        await app.store.append("b", [listed("b", "green tea", "dark leaves")])
        await settle(app.store)
        await app.run_until_caught_up()
        hits = await search(app.read_models, index, "dark")
        assert [hit.id for hit in hits] == ["a", "b"]
        assert hits[0].fields == {TITLE: "dark chocolate", BODY: "cocoa bar", PRICE: 2}
        await app.rebuild(index.name)
        assert [hit.id for hit in await search(app.read_models, index, "dark")] == ["a", "b"]
        await app.store.append("a", [NewEvent("Delisted", {"sku": "a"})])
        await settle(app.store)
        await app.run_until_caught_up()
        assert [hit.id for hit in await search(app.read_models, index, "dark")] == ["b"]


def bad_native_queries(dialect: str) -> list[str]:
    """Malformed in the database's own syntax, each refused by its parser in its own way."""
    if dialect == "postgres":
        return ["dark &", "(dark", "dark:Z", "dark <-> ", "\\", "dark <16385> tea"]
    return ['"dark', "*", "NEAR(dark tea, x)", "(" * 500 + "dark", "nosuch:dark", "dark AND"]


async def test_a_malformed_native_query_is_a_search_query_error(app_url: str) -> None:
    index = longest_index("catalogue")
    async with Application(app_url, [index]) as app:
        await app.setup()
        await app.store.append("a", [listed("a", "dark chocolate", "cocoa bar")])
        await settle(app.store)
        await app.run_until_caught_up()
        for bad in bad_native_queries(app.read_models.dialect):
            with pytest.raises(SearchQueryError, match="invalid search query"):
                await search(app.read_models, index, bad, syntax="native")
        assert [hit.id for hit in await search(app.read_models, index, "dark")] == ["a"]


@pytest.mark.parametrize("syntax", ["websearch", "native"])
async def test_a_lone_surrogate_in_a_query_is_a_search_query_error(
    app_url: str, syntax: str
) -> None:
    index = longest_index("catalogue")
    async with Application(app_url, [index]) as app:
        await app.setup()
        for bad in ["\ud800", "dark \udfff chocolate"]:
            with pytest.raises(SearchQueryError, match="surrogate") as caught:
                await search(app.read_models, index, bad, syntax=syntax)  # type: ignore[arg-type]
            assert isinstance(caught.value, InvalidInputError)
        assert await search(app.read_models, index, "dark") == []
