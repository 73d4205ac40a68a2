"""The ``projectionist`` command: a thin face over the library.

Every option also reads an environment variable (shown in ``--help``). Errors print one line
and exit with status 1. Only this module configures logging; the library just names loggers.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from .demo import generate_orders
from .errors import ProjectionistError
from .events import START, RecordedEvent
from .factory import create_store
from .store import EventStore

T = TypeVar("T")
DEFAULT_DEMO_URL = "sqlite:///projectionist-demo.db"
DEMO_SCHEMA = "projectionist_demo"

app = typer.Typer(
    name="projectionist",
    help="Read models from event streams: event store, projections, workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
schema_app = typer.Typer(help="Manage the event store's schema.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")
console = Console()
errors = Console(stderr=True)

UrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="PROJECTIONIST_URL",
        help="Event store URL: postgresql://..., sqlite:///path.db or memory://",
    ),
]
SchemaOption = Annotated[
    str | None,
    typer.Option(
        "--schema",
        envvar="PROJECTIONIST_SCHEMA",
        help="PostgreSQL schema of the event store [default: projectionist]",
    ),
]


class _KeyValueFormatter(logging.Formatter):
    """``time level logger action=... message key=value``: greppable, stable keys."""

    _standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in vars(record).items() if k not in self._standard}
        action = extras.pop("action", "-")
        fields = " ".join(f"{key}={value}" for key, value in extras.items())
        line = f"{self.formatTime(record)} {record.levelname} {record.name} action={action} "
        line += f"{record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


@app.callback()
def main_options(
    log_level: Annotated[
        str, typer.Option(envvar="PROJECTIONIST_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR")
    ] = "WARNING",
) -> None:
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    root = logging.getLogger("projectionist")
    root.handlers = [handler]
    root.setLevel(level)


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; turn a ProjectionistError into one red line and exit status 1."""
    try:
        return asyncio.run(_awaited(factory))
    except ProjectionistError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


async def _awaited(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


@schema_app.command("apply")
def schema_apply(url: UrlOption, schema: SchemaOption = None) -> None:
    """Create or migrate the event store's schema (idempotent)."""

    async def apply() -> int:
        async with create_store(url, schema=schema) as store:
            return await store.apply_schema()

    version = _run(apply)
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
) -> None:
    """Append a shop's order history to a fresh store and show it back."""
    _run(lambda: _demo(url, orders))


async def _demo(url: str, orders: int) -> None:
    store = await _fresh_demo_store(url)
    async with store:
        started = time.perf_counter()
        appended = 0
        for append in generate_orders(orders):
            result = await store.append(append.stream_id, append.events)
            appended += len(result.events)
        seconds = time.perf_counter() - started
        console.print(
            f"[bold]Appended {appended:,} events[/bold] to {store.url} in {seconds:.2f}s "
            f"({appended / seconds:,.0f} events/s, one transaction per append); "
            f"the last is at position {result.position}\n"
        )
        await _show_history(store)


async def _fresh_demo_store(url: str) -> EventStore:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
    store = create_store(url, schema=DEMO_SCHEMA if url.startswith("postgres") else None)
    await store.open()
    try:
        await _drop_demo_schema(store)
        await store.apply_schema()
    except BaseException:
        await store.close()
        raise
    return store


async def _drop_demo_schema(store: EventStore) -> None:
    from .backends.postgres import PostgresEventStore

    if isinstance(store, PostgresEventStore):
        async with store.pool.acquire() as connection:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{DEMO_SCHEMA}" CASCADE')


async def _show_history(store: EventStore) -> None:
    counts: Counter[str] = Counter()
    latest: list[RecordedEvent] = []
    checkpoint = START
    while True:
        batch = await store.read_all(checkpoint, limit=1000)
        if not batch.events:
            break
        counts.update(event.type for event in batch.events)
        latest = (latest + batch.events)[-8:]
        checkpoint = batch.checkpoint
    table = Table(title="The global order, latest events")
    for column in ("position", "stream", "version", "type"):
        table.add_column(column)
    table.add_column("data", overflow="fold")
    for event in latest:
        table.add_row(
            str(event.position),
            event.stream_id,
            str(event.version),
            event.type,
            orjson.dumps(event.data).decode(),
        )
    console.print(table)
    by_type = Table(title="Events by type")
    by_type.add_column("type")
    by_type.add_column("count", justify="right")
    for type_, count in counts.most_common():
        by_type.add_row(type_, f"{count:,}")
    console.print(by_type)
    order = await store.read_stream("order-000001")
    console.print("[bold]Stream order-000001[/bold], read back:")
    for event in order:
        console.print(
            f"  v{event.version} {event.type} {orjson.dumps(event.data).decode()}",
            highlight=False,
            soft_wrap=True,
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
