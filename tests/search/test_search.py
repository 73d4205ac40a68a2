"""Full-text search read models on every backend: ranking, updates, deletes, rebuilds, errors."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from projectionist import (
    START,
    Application,
    BackendError,
    ConfigurationError,
    HandlerError,
    InvalidInputError,
    NewEvent,
    ProjectionistError,
    RecordedEvent,
)
from projectionist.search import (
    SearchHit,
    SearchProjection,
    SearchQueryError,
    search,
    websearch_to_fts5,
)

# Enough unrelated documents that bm25's document frequencies behave as in a real catalogue.
CATALOGUE = {
    "p-choc": ("dark chocolate", "a bar of 70% cocoa", "sweets", 3.5),
    "p-coffee": ("espresso beans", "dark roast with notes of chocolate", "coffee", 12.0),
    "p-salt": ("sea salt", "flaky salt for the table", "pantry", 2.0),
    "p-tea": ("green tea", "grassy sencha", "tea", 6.0),
    "p-rice": ("basmati rice", "long grain rice", "grains", 4.0),
    "p-oil": ("olive oil", "cold pressed", "pantry", 9.5),
    "p-honey": ("honey", "raw wildflower honey", "sweets", 7.0),
    "p-oats": ("rolled oats", "wholegrain oats for porridge", "grains", 2.5),
}


def products(name: str = "products", *, kind: str = "async") -> SearchProjection:
    index = SearchProjection(
        name,
        table=f"{name}_index",
        key="sku",
        text={"name": "A", "description": "B", "category": "C"},
        stored=["price"],
        kind=kind,
    )

    @index.upsert("Listed", "Updated", "PriceChanged")
    def fields(event: RecordedEvent) -> Mapping[str, object]:
        return event.data

    index.delete("Delisted")
    return index


def listed(sku: str) -> NewEvent:
    name, description, category, price = CATALOGUE[sku]
    data = {"sku": sku, "name": name, "description": description, "category": category}
    return NewEvent("Listed", {**data, "price": price})


async def open_catalogue(app: Application) -> None:
    await app.setup()
    for sku in CATALOGUE:
        await app.store.append(sku, [listed(sku)])
    await app.run_until_caught_up()


def ids(hits: list[SearchHit]) -> list[str]:
    return [hit.id for hit in hits]


async def test_a_name_match_outranks_a_description_match(app_url: str) -> None:
    index = products()
    async with Application(app_url, [index]) as app:
        await open_catalogue(app)
        hits = await search(app.read_models, index, "chocolate")
        assert ids(hits) == ["p-choc", "p-coffee"]
        assert hits[0].rank > hits[1].rank > 0
        assert hits[0].fields == {
            "name": "dark chocolate",
            "description": "a bar of 70% cocoa",
            "category": "sweets",
            "price": 3.5,
        }
        # Every word must match, in any field.
        assert ids(await index.search(app.read_models, "dark chocolate")) == ["p-choc", "p-coffee"]
        assert set(ids(await search(app.read_models, index, "sweets"))) == {"p-choc", "p-honey"}
        assert ids(await search(app.read_models, index, "honey")) == ["p-honey"]
        # Stemming on both backends: "chocolates" finds "chocolate".
        assert ids(await search(app.read_models, index, "chocolates")) == ["p-choc", "p-coffee"]
        assert await search(app.read_models, index, "caviar") == []


async def test_websearch_syntax_phrases_or_and_exclusion(app_url: str) -> None:
    index = products()
    async with Application(app_url, [index]) as app:
        await open_catalogue(app)
        rm = app.read_models
        assert ids(await search(rm, index, '"dark roast"')) == ["p-coffee"]
        assert ids(await search(rm, index, '"roast dark"')) == []
        assert set(ids(await search(rm, index, "honey or salt"))) == {"p-honey", "p-salt"}
        assert ids(await search(rm, index, "chocolate -roast")) == ["p-choc"]
        assert ids(await search(rm, index, "pantry", limit=1)) == ["p-oil"]  # ties: by id
        assert ids(await search(rm, index, "pantry", limit=5)) == ["p-oil", "p-salt"]
        # Whatever a search box sends is a query: punctuation and operators are only text.
        for query in [
            'dark-chocolate "unterminated',
            "AND OR NOT",
            '"',
            "*",
            "name:x",
            "^x",
            "&|!",
        ]:
            assert isinstance(await search(rm, index, query), list), query
        assert ids(await search(rm, index, "dark-chocolate")) in (["p-choc"], [])


async def test_an_update_changes_the_results(app_url: str) -> None:
    index = products()
    async with Application(app_url, [index]) as app:
        await open_catalogue(app)
        await app.store.append(
            "p-choc", [NewEvent("Updated", {"sku": "p-choc", "name": "cocoa nibs"})]
        )
        await app.run_until_caught_up()
        rm = app.read_models
        assert ids(await search(rm, index, "nibs")) == ["p-choc"]
        assert ids(await search(rm, index, "chocolate")) == ["p-coffee"]  # the old name is gone
        # Fields the update left out are kept.
        [hit] = await search(rm, index, "nibs")
        assert hit.fields["description"] == "a bar of 70% cocoa" and hit.fields["price"] == 3.5


async def test_a_price_change_is_reflected_and_keeps_the_text(app_url: str) -> None:
    index = products()
    async with Application(app_url, [index]) as app:
        await open_catalogue(app)
        await app.store.append("p-tea", [NewEvent("PriceChanged", {"sku": "p-tea", "price": 6.75})])
        await app.run_until_caught_up()
        [hit] = await search(app.read_models, index, "tea")
        assert hit.fields == {
            "name": "green tea",
            "description": "grassy sencha",
            "category": "tea",
            "price": 6.75,
        }


async def test_a_delete_removes_and_a_new_listing_brings_it_back(app_url: str) -> None:
    index = products()
    async with Application(app_url, [index]) as app:
        await open_catalogue(app)
        await app.store.append("p-choc", [NewEvent("Delisted", {"sku": "p-choc"})])
        await app.run_until_caught_up()
        assert ids(await search(app.read_models, index, "chocolate")) == ["p-coffee"]
        assert await search(app.read_models, index, "cocoa") == []
        await app.store.append("p-choc", [listed("p-choc")])
        await app.run_until_caught_up()
        assert ids(await search(app.read_models, index, "cocoa")) == ["p-choc"]


async def test_a_rebuild_gives_the_same_results(app_url: str) -> None:
    index = products()
    async with Application(app_url, [index]) as app:
        await open_catalogue(app)
        await app.store.append("p-choc", [NewEvent("Updated", {"sku": "p-choc", "name": "x"})])
        await app.store.append("p-salt", [NewEvent("Delisted", {"sku": "p-salt"})])
        await app.store.append("p-oil", [NewEvent("PriceChanged", {"sku": "p-oil", "price": 1.0})])
        await app.run_until_caught_up()
        queries = ["chocolate", "pantry", "sweets", "x", "grains or tea", "cocoa"]
        before = [await search(app.read_models, index, query) for query in queries]
        assert await app.rebuild("products") == len(CATALOGUE) + 3
        after = [await search(app.read_models, index, query) for query in queries]
        assert after == before
        assert ids(before[1]) == ["p-oil"] and before[1][0].fields["price"] == 1.0


async def test_duplicate_and_replayed_events_change_nothing(app_url: str) -> None:
    index = products()
    async with Application(app_url, [index]) as app:
        await open_catalogue(app)
        await app.store.append("p-choc", [NewEvent("Delisted", {"sku": "p-choc"})])
        await app.store.append("p-tea", [NewEvent("PriceChanged", {"sku": "p-tea", "price": 1.0})])
        await app.run_until_caught_up()
        before = await search(app.read_models, index, "chocolate or tea")
        assert [(hit.id, hit.fields["price"]) for hit in before] == [
            ("p-tea", 1.0),
            ("p-coffee", 12.0),
        ]
        events = (await app.store.read_all(START, limit=100)).events
        async with app.read_models.transaction() as tx:
            await index.apply(events, tx)  # the whole history again, in one batch
            await index.apply(events[:3], tx)  # and its start once more
        # The delisted product did not come back, the old price did not return.
        assert await search(app.read_models, index, "chocolate or tea") == before


async def test_an_inline_search_projection_is_never_behind(app_url: str) -> None:
    index = products("inline_products", kind="inline")
    async with Application(app_url, [index]) as app:
        await app.setup()
        await app.store.append("p-honey", [listed("p-honey")])
        assert ids(await search(app.read_models, index, "honey")) == ["p-honey"]


async def test_a_bad_native_query_is_a_search_query_error(app_url: str) -> None:
    index = products()
    async with Application(app_url, [index]) as app:
        await open_catalogue(app)
        for bad in ["dark &", "(chocolate", "chocolate AND"]:
            with pytest.raises(SearchQueryError, match="invalid search query") as caught:
                await search(app.read_models, index, bad, syntax="native")
            assert isinstance(caught.value, InvalidInputError)
            assert caught.value.__cause__ is not None  # the driver's error, kept
        # The connection is fine afterwards; native syntax works where it is valid.
        prefix = "choc:*" if app.read_models.dialect == "postgres" else "choc*"
        assert ids(await search(app.read_models, index, prefix, syntax="native")) == [
            "p-choc",
            "p-coffee",
        ]
        assert ids(await search(app.read_models, index, "honey")) == ["p-honey"]


async def test_bad_arguments_are_refused_before_the_database(app_url: str) -> None:
    index = products()
    async with Application(app_url, [index]) as app:
        await open_catalogue(app)
        rm = app.read_models
        for empty in ["", "   ", "\t\n", "!!", '""', "-chocolate"]:
            assert await search(rm, index, empty) == [], empty
        with pytest.raises(SearchQueryError, match="must be a string"):
            await search(rm, index, None)  # type: ignore[arg-type]
        with pytest.raises(SearchQueryError, match="at most 1000 characters"):
            await search(rm, index, "tea " * 300)
        with pytest.raises(SearchQueryError, match="NUL"):
            await search(rm, index, "tea\x00")
        for limit in [0, -1, 10_001, True, 2.5]:
            with pytest.raises(InvalidInputError, match="limit must be an integer"):
                await search(rm, index, "tea", limit=limit)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="syntax must be"):
            await search(rm, index, "tea", syntax="sql")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="needs a SearchProjection"):
            await search(rm, "products_index", "tea")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="needs a ReadModelTransaction"):
            await search(app.store, index, "tea")  # type: ignore[arg-type]


async def test_searching_an_index_that_was_never_set_up(app_url: str) -> None:
    index = products()
    async with Application(app_url, []) as app:
        await app.setup()
        with pytest.raises(BackendError, match="search index 'products_index' does not exist"):
            await search(app.read_models, index, "tea")


async def test_a_bad_document_fails_the_batch_with_a_handler_error(app_url: str) -> None:
    index = products()
    async with Application(app_url, [index]) as app:
        await app.setup()
        await app.store.append("p-1", [NewEvent("Listed", {"sku": "p-1", "name": 42})])
        with pytest.raises(HandlerError, match="text field 'name' must be a string"):
            await app.run_until_caught_up()
    other = products("other")
    async with Application(app_url, [other]) as app:
        other.start = await app.store.head()  # past p-1, whose own error would come first
        await app.setup()
        await app.store.append("p-2", [NewEvent("Listed", {"name": "no sku"})])
        with pytest.raises(HandlerError, match="KeyError: 'sku'"):
            await app.run_until_caught_up()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"table": "Robert'); DROP TABLE x; --"}, InvalidInputError, "invalid search table"),
        ({"table": "Products"}, InvalidInputError, "invalid search table"),
        ({"table": "t" * 49}, InvalidInputError, "at most 48"),
        ({"text": {}}, ConfigurationError, "at least one text field"),
        ({"text": {"na me": "A"}}, InvalidInputError, "invalid text field name"),
        ({"text": {'name"': "A"}}, InvalidInputError, "invalid text field name"),
        ({"text": {"id": "A"}}, ConfigurationError, "'id' is reserved"),
        ({"text": {"document": "A"}}, ConfigurationError, "'document' is reserved"),
        ({"text": {"name": "E"}}, ConfigurationError, "one of A, B, C, D"),
        ({"text": {"name": "a"}}, ConfigurationError, "one of A, B, C, D"),
        ({"stored": ["name"]}, ConfigurationError, "both text and stored"),
        ({"stored": "price"}, ConfigurationError, "list of field names"),
        ({"stored": ["pri-ce"]}, InvalidInputError, "invalid stored field name"),
        ({"language": "english'; DROP"}, InvalidInputError, "invalid text search language"),
        ({"name": "bad name"}, InvalidInputError, "invalid projection name"),
    ],
)
def test_identifiers_are_validated(
    options: dict[str, object], error: type[ProjectionistError], message: str
) -> None:
    arguments: dict[str, object] = {"name": "ok", "table": "ok_index", "text": {"name": "A"}}
    with pytest.raises(error, match=message):
        SearchProjection(**{**arguments, **options})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "fts5"),
    [
        ("dark chocolate", '("dark" "chocolate")'),
        ('"dark roast" beans', '("dark roast" "beans")'),
        ("tea or coffee", '("tea") OR ("coffee")'),
        ("tea OR coffee -decaf", '("tea") OR ("coffee" NOT "decaf")'),
        ("-decaf coffee", '("coffee" NOT "decaf")'),
        ('say "hi', '("say" "hi")'),
        ('a"b', '("a""b")'),
        ("dark-chocolate AND NOT", '("dark-chocolate" "AND" "NOT")'),
        ("choc* name:x", '("choc*" "name:x")'),
        ("-decaf", ""),
        ("!! & |", ""),
        ("or or", ""),
    ],
)
def test_websearch_syntax_becomes_an_fts5_query_that_cannot_be_malformed(
    query: str, fts5: str
) -> None:
    assert websearch_to_fts5(query) == fts5
