"""Append events and read them back: the smallest useful program.

Run: ``.venv/bin/python examples/quickstart.py [STORE_URL]`` (default: memory://).
"""

from __future__ import annotations

import asyncio
import sys

from projectionist import START, NewEvent, create_store


async def main(url: str) -> None:
    async with create_store(url) as store:
        await store.apply_schema()
        await store.append("order-1", [NewEvent("OrderCreated", {"customer_id": "c-1"})])
        await store.append("order-1", [NewEvent("OrderShipped", {})], expected_version=1)
        batch = await store.read_all(START)
        for event in batch.events:
            print(event.position, event.stream_id, event.version, event.type, event.data)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))
