"""A deterministic order domain for the demo and the benchmarks.

Customers register, products are listed (with a description and a category), repriced,
now and then reworded, and one is delisted at the end; orders are created, filled with items
(some removed again), then shipped and completed, or cancelled, or refunded. The same seed
always gives the same events, so runs and benchmarks can be compared. Product rewordings and
the delisting draw from a generator of their own: the order history (and every random
choice in it) is the same as without them.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

from projectionist import NewEvent

FIRST_DAY = date(2026, 1, 1)
PRODUCT_NAMES = [
    "espresso beans", "green tea", "oat milk", "dark chocolate", "sourdough flour",
    "olive oil", "sea salt", "black pepper", "basmati rice", "red lentils",
    "maple syrup", "peanut butter", "almond flakes", "dried mango", "ground cinnamon",
    "vanilla pods", "rolled oats", "honey", "soy sauce", "chili flakes",
]  # fmt: skip
PRODUCT_DETAILS = {
    "espresso beans": ("coffee", "Dark roast arabica beans with notes of chocolate and caramel"),
    "green tea": ("tea", "Japanese sencha, grassy and fresh"),
    "oat milk": ("dairy-free", "Creamy oat drink that froths for coffee"),
    "dark chocolate": ("sweets", "70% cocoa bar from single-origin Peruvian beans"),
    "sourdough flour": ("baking", "Stone-ground wheat flour for sourdough bread"),
    "olive oil": ("pantry", "Cold-pressed extra virgin olive oil from Crete"),
    "sea salt": ("pantry", "Flaky sea salt, lovely on caramel and chocolate desserts"),
    "black pepper": ("spices", "Whole Tellicherry peppercorns for the grinder"),
    "basmati rice": ("grains", "Aged long-grain rice from the Himalayan foothills"),
    "red lentils": ("grains", "Split lentils that cook in fifteen minutes, for dal and soups"),
    "maple syrup": ("sweets", "Grade A amber syrup from Quebec"),
    "peanut butter": ("spreads", "Crunchy, roasted peanuts and nothing else"),
    "almond flakes": ("baking", "Toasted almond flakes for granola and cakes"),
    "dried mango": ("snacks", "Unsweetened mango slices from Burkina Faso"),
    "ground cinnamon": ("spices", "Cassia cinnamon for baking and porridge"),
    "vanilla pods": ("baking", "Bourbon vanilla pods from Madagascar"),
    "rolled oats": ("grains", "Wholegrain oats for porridge and baking"),
    "honey": ("sweets", "Raw wildflower honey"),
    "soy sauce": ("pantry", "Naturally brewed soy sauce"),
    "chili flakes": ("spices", "Crushed red chili, medium hot"),
}
"""Each product's category and description, so the catalogue can be searched."""


@dataclass(frozen=True, slots=True)
class Append:
    """One append of the generated history: events for one stream."""

    stream_id: str
    events: list[NewEvent]


def _event(rng: random.Random, type_: str, data: dict[str, object]) -> NewEvent:
    # Ids from the seeded generator: the same seed gives byte-identical histories.
    return NewEvent(type_, data, {"source": "demo"}, uuid.UUID(int=rng.getrandbits(128), version=4))


def generate_orders(orders: int = 500, seed: int = 7) -> Iterator[Append]:
    """The appends of a shop's history, in the order they happened (about 7 events per order)."""
    rng = random.Random(seed)
    customers = [f"customer-{n:04d}" for n in range(1, max(orders // 8, 3) + 1)]
    prices = {f"product-{n:03d}": round(rng.uniform(1.5, 40.0), 2) for n in range(1, 21)}
    for customer in customers:
        yield Append(
            customer,
            [
                _event(
                    rng,
                    "CustomerRegistered",
                    {
                        "customer_id": customer,
                        "name": f"Customer {customer[-4:]}",
                        "country": rng.choice(["DE", "FR", "NL", "SE"]),
                    },
                )
            ],
        )
    for (sku, price), name in zip(prices.items(), PRODUCT_NAMES, strict=True):
        category, description = PRODUCT_DETAILS[name]
        listed = {"sku": sku, "name": name, "description": description, "category": category}
        yield Append(sku, [_event(rng, "ProductListed", {**listed, "price": price})])
    catalogue_rng = random.Random(f"catalogue-{seed}")
    rewordings = _rewordings(orders)
    for number in range(1, orders + 1):
        yield from _order_history(rng, number, orders, customers, prices)
        for sku, data in rewordings.get(number, []):
            yield Append(sku, [_event(catalogue_rng, "ProductUpdated", {"sku": sku, **data})])
    # Delisted after the last order, so no order ever names a product no longer sold.
    yield Append(
        "product-020",
        [
            _event(
                catalogue_rng, "ProductDelisted", {"sku": "product-020", "reason": "discontinued"}
            )
        ],
    )


def _rewordings(orders: int) -> dict[int, list[tuple[str, dict[str, str]]]]:
    """ProductUpdated events by the order number after which they happen: a third and two
    thirds into the history, whatever its length."""
    planned = [
        (orders // 3, "product-004", {
            "name": "dark chocolate 85%",
            "description": "Intense 85% cocoa bar from single-origin Peruvian beans",
            "category": "sweets",
        }),
        (2 * orders // 3, "product-015", {
            "name": "ceylon cinnamon",
            "description": "True cinnamon quills, ground: sweet and mild, for baking",
            "category": "spices",
        }),
    ]  # fmt: skip
    by_order: dict[int, list[tuple[str, dict[str, str]]]] = {}
    for number, sku, data in planned:
        by_order.setdefault(max(number, 1), []).append((sku, data))
    return by_order


def _order_history(
    rng: random.Random, number: int, orders: int, customers: list[str], prices: dict[str, float]
) -> Iterator[Append]:
    order_id = f"order-{number:06d}"
    day = FIRST_DAY + timedelta(days=number * 60 // orders)
    customer = rng.choice(customers)
    opened = [
        _event(
            rng,
            "OrderCreated",
            {"order_id": order_id, "customer_id": customer, "day": day.isoformat()},
        )
    ]
    skus = rng.sample(sorted(prices), rng.randint(1, 4))
    for sku in skus:
        opened.append(
            _event(
                rng,
                "ItemAdded",
                {
                    "order_id": order_id,
                    "sku": sku,
                    "quantity": rng.randint(1, 3),
                    "unit_price": prices[sku],
                },
            )
        )
    if len(skus) > 1 and rng.random() < 0.2:
        opened.append(_event(rng, "ItemRemoved", {"order_id": order_id, "sku": skus[-1]}))
    yield Append(order_id, opened)
    if number % 50 == 0:  # prices move now and then
        sku = rng.choice(sorted(prices))
        prices[sku] = round(prices[sku] * rng.uniform(0.8, 1.25), 2)
        yield Append(sku, [_event(rng, "ProductPriceChanged", {"sku": sku, "price": prices[sku]})])
    outcome = rng.random()
    if outcome < 0.1:
        yield Append(
            order_id,
            [_event(rng, "OrderCancelled", {"order_id": order_id, "reason": "customer request"})],
        )
        return
    yield Append(
        order_id, [_event(rng, "OrderShipped", {"order_id": order_id, "day": day.isoformat()})]
    )
    yield Append(
        order_id, [_event(rng, "OrderCompleted", {"order_id": order_id, "day": day.isoformat()})]
    )
    if outcome > 0.95:
        yield Append(
            order_id, [_event(rng, "OrderRefunded", {"order_id": order_id, "reason": "damaged"})]
        )
