"""The shop example's product_search projection and the demo's search step, on every backend."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from examples.shop.demo import SEARCH
from examples.shop.history import generate_orders
from examples.shop.projections import cents, product_catalogue, product_search

from projectionist import Application, ReadModelTransaction
from projectionist.search import search
from projectionist.testing import assert_idempotent

ROOT = Path(__file__).resolve().parents[2]
HISTORY = [(append.stream_id, append.events) for append in generate_orders(30)]
WORDS = ["chocolate", "cinnamon", "baking", "chili", "pantry", "beans"]  # no stem variants


def expected_documents() -> dict[str, dict[str, Any]]:
    """The catalogue worked out from the events directly."""
    documents: dict[str, dict[str, Any]] = {}
    for _, events in HISTORY:
        for event in events:
            if event.type == "ProductDelisted":
                del documents[event.data["sku"]]
            elif event.type.startswith("Product"):
                documents.setdefault(event.data["sku"], {}).update(event.data)
    return documents


def containing(word: str) -> set[str]:
    pattern = re.compile(rf"\b{word}\b")
    return {
        sku
        for sku, document in expected_documents().items()
        if any(pattern.search(document[f].lower()) for f in ("name", "description", "category"))
    }


async def all_hits(tx: ReadModelTransaction) -> list[object]:
    return [await search(tx, product_search, word, limit=50) for word in WORDS]


def test_the_history_has_product_updates_and_a_delisting() -> None:
    types = [event.type for _, events in HISTORY for event in events]
    assert types.count("ProductListed") == 20
    assert types.count("ProductUpdated") == 2 and types.count("ProductDelisted") == 1
    assert types[-1] == "ProductDelisted"  # after the last order: no order names it later


async def test_product_search_agrees_with_the_history_and_is_safe_to_replay() -> None:
    hits = await assert_idempotent(product_search, HISTORY, all_hits)
    documents = expected_documents()
    for word, found in zip(WORDS, hits, strict=True):
        assert {hit.id for hit in found} == containing(word), word
        for hit in found:
            assert hit.fields["price"] == documents[hit.id]["price"]
            assert hit.fields["name"] == documents[hit.id]["name"]
    assert containing("chili") == set()  # delisted
    assert containing("cinnamon") == {"product-015"}  # renamed to "ceylon cinnamon"


async def test_the_catalogue_follows_updates_and_delistings() -> None:
    rows = await assert_idempotent(
        product_catalogue,
        HISTORY,
        "SELECT sku, name, price_cents, listed FROM products ORDER BY sku",
    )
    documents = expected_documents()
    assert [row[0] for row in rows if row[3]] == sorted(documents)
    assert [row[0] for row in rows if not row[3]] == ["product-020"]
    for sku, name, price, _ in rows:
        if sku in documents:
            assert (name, price) == (documents[sku]["name"], cents(documents[sku]["price"]))


DEMO = """
import asyncio, sys
from rich.console import Console
from examples.shop.demo import run_demo
asyncio.run(run_demo(sys.argv[1], 30, Console(width=200, color_system=None)))
"""


async def test_the_demo_ends_with_ranked_search_hits(app_url: str) -> None:
    # In a process of its own, as `projectionist demo` runs it (the demo's live projection
    # is a module-level object, bound to the event loop that first ran it).
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", DEMO, app_url],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = done.stdout
    search_table = text[text.index(f"product_search (search projection): {SEARCH!r}") :]
    skus = [line.split("│")[2].strip() for line in search_table.splitlines() if "product-" in line]
    # The name match first, then the two description matches (bm25 orders those by length;
    # on PostgreSQL they tie and go by sku).
    assert skus[0] == "product-004" and sorted(skus[1:]) == ["product-001", "product-007"]
    assert "dark chocolate 85%" in search_table and "Peruvian" in search_table
    if app_url == "memory://":
        return  # the demo's store went with its process
    async with Application(app_url, []) as app:
        hits = await search(app.read_models, product_search, SEARCH)
        assert [hit.id for hit in hits] == skus
        assert set(skus) == containing(SEARCH)
        assert await search(app.read_models, product_search, "chili") == []
