"""A deterministic order domain for the demo and the benchmarks.

Customers register, products are listed and repriced, orders are created, filled with items
(some removed again), then shipped and completed, or cancelled, or refunded. The same seed
always gives the same events, so runs and benchmarks can be compared.
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
        yield Append(
            sku, [_event(rng, "ProductListed", {"sku": sku, "name": name, "price": price})]
        )
    for number in range(1, orders + 1):
        yield from _order_history(rng, number, orders, customers, prices)


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
