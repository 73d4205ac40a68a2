"""``schema apply`` and ``demo``: commands on a store URL, no application needed."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigurationError
from ..factory import create_store
from ..identifiers import quote_identifier
from .base import SchemaOption, UrlOption, app, console, run_async, schema_app

DEFAULT_DEMO_URL = "sqlite:///projectionist-demo.db"
DEMO_SCHEMA = "projectionist_demo"


@schema_app.command("apply")
def schema_apply(url: UrlOption, schema: SchemaOption = None) -> None:
    """Create or migrate the event store's schema (idempotent)."""

    async def apply() -> int:
        async with create_store(url, schema=schema) as store:
            return await store.apply_schema()

    version = run_async(apply)
    console.print(f"schema version {version} is applied to {create_store(url, schema=schema).url}")


@app.command()
def demo(
    url: Annotated[
        str,
        typer.Option(
            "--url",
            envvar="PROJECTIONIST_DEMO_URL",
            help="Where to run the demo. On PostgreSQL it uses (and first drops) "
            f"the schema {DEMO_SCHEMA!r}.",
        ),
    ] = DEFAULT_DEMO_URL,
    orders: Annotated[
        int, typer.Option(min=1, max=100_000, envvar="PROJECTIONIST_DEMO_ORDERS")
    ] = 500,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            envvar="PROJECTIONIST_DEMO_REDIS_URL",
            help="Also project into Redis (e.g. redis://127.0.0.1:6379/0), under the key "
            "prefix 'projectionist-demo' (deleted first).",
        ),
    ] = None,
) -> None:
    """Run the shop example: history, its read models and a search (starts afresh)."""
    postgres = url.startswith(("postgresql://", "postgres://"))

    async def go() -> None:
        run_demo = _load_demo()
        await _reset_demo_store(url)
        schema = DEMO_SCHEMA if postgres else None
        await run_demo(url, orders, console, schema=schema, redis_url=redis_url)

    run_async(go)


def _load_demo() -> Callable[..., Awaitable[None]]:
    """The demo is the repository's examples/shop, readable code to copy; find it."""
    checkout = Path(__file__).resolve().parents[3]
    for root in (Path.cwd(), checkout):
        if (root / "examples" / "shop" / "demo.py").exists() and str(root) not in sys.path:
            sys.path.insert(0, str(root))
    try:
        from examples.shop.demo import run_demo
    except ImportError as exc:
        raise ConfigurationError(
            "the demo runs the repository's examples/shop: run it from a checkout of "
            f"projectionist ({exc})"
        ) from exc
    return run_demo


async def _reset_demo_store(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
    elif url.startswith(("postgresql://", "postgres://")):
        store = create_store(url, schema=DEMO_SCHEMA)
        async with store, store.read_models().transaction() as tx:
            await tx.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(DEMO_SCHEMA)} CASCADE")
