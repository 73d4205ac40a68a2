"""The ``projectionist`` command: a thin face over the library.

Every option also reads an environment variable (shown in ``--help``). Errors print one line
and exit with status 1. Only this module configures logging; the library just names loggers.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, TypeVar

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .app import Application, ProjectionStatus
from .errors import ConfigurationError, ProjectionistError
from .factory import create_store
from .identifiers import quote_identifier

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
# Piped output (a log, CI) gets 120 columns rather than 80: the tables stay readable.
console = Console(width=None if sys.stdout.isatty() else 120)
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
    """Run the shop example: history, four read models, their status (starts afresh)."""
    postgres = url.startswith(("postgresql://", "postgres://"))

    async def go() -> None:
        run_demo = _load_demo()
        await _reset_demo_store(url)
        schema = DEMO_SCHEMA if postgres else None
        await run_demo(url, orders, console, schema=schema, redis_url=redis_url)

    _run(go)


def _load_demo() -> Callable[..., Awaitable[None]]:
    """The demo is the repository's examples/shop, readable code to copy; find it."""
    checkout = Path(__file__).resolve().parents[2]
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
        from .backends.postgres import PostgresEventStore

        store = create_store(url, schema=DEMO_SCHEMA)
        assert isinstance(store, PostgresEventStore)
        async with store, store.pool.acquire() as connection:
            await connection.execute(
                f"DROP SCHEMA IF EXISTS {quote_identifier(DEMO_SCHEMA)} CASCADE"
            )


# -- applications -------------------------------------------------------------------------

AppOption = Annotated[
    str,
    typer.Option(
        "--app",
        envvar="PROJECTIONIST_APP",
        help="The application as module:attribute (a projectionist.Application)",
    ),
]
AppUrlOption = Annotated[
    str | None,
    typer.Option("--url", envvar="PROJECTIONIST_URL", help="Override the application's store URL"),
]


def load_application(path: str) -> Application:
    """Import ``module:attribute`` (the current directory is importable) and check it."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"application {path!r} must look like 'module:attribute'")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot import application module {module_name!r}: {exc}"
        ) from exc
    application = getattr(module, attribute, None)
    if not isinstance(application, Application):
        raise ConfigurationError(
            f"{path!r} is {type(application).__name__}, not a projectionist.Application"
        )
    return application


@app.command("run")
def run_command(
    application: Annotated[
        str, typer.Argument(envvar="PROJECTIONIST_APP", help="module:attribute of the Application")
    ],
    url: AppUrlOption = None,
) -> None:
    """Run the application's projections until SIGINT or SIGTERM (the batch finishes)."""

    async def go() -> None:
        target = load_application(application)
        await target.open(url)
        try:
            await target.setup()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, target.stop)
            await target.run()
        finally:
            await target.close()

    _run(go)


@app.command()
def status(
    application: AppOption,
    url: AppUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per line")] = False,
) -> None:
    """Show each projection: kind, version, state, position, head, lag, last update."""

    async def go() -> list[ProjectionStatus]:
        target = load_application(application)
        await target.open(url)
        try:
            return await target.status()
        finally:
            await target.close()

    statuses = _run(go)
    if as_json:
        for item in statuses:
            print(orjson.dumps(item.as_dict()).decode())
    else:
        console.print(status_table(statuses))


@app.command("rebuild")
def rebuild_command(name: str, application: AppOption, url: AppUrlOption = None) -> None:
    """Drop NAME's read model and replay all history into it, showing progress."""

    async def go() -> int:
        target = load_application(application)
        target.projection(name)  # fail fast on an unknown name
        await target.open(url)
        try:
            # Not setup(): it refuses a read model of another version, which is what a
            # rebuild is for.
            await target.store.apply_schema()
            await target.read_models.apply_schema()
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} events/s"),
                TimeRemainingColumn(),
                console=console,
            ) as bar:
                task = bar.add_task(f"rebuilding {name}", total=None, rate="-")
                started = time.monotonic()

                def report(done: int, total: int) -> None:
                    rate = done / max(time.monotonic() - started, 1e-9)
                    bar.update(task, completed=done, total=total, rate=f"{rate:,.0f}")

                return await target.rebuild(name, report)
        finally:
            await target.close()

    total = _run(go)
    console.print(f"rebuilt {name} from {total:,} events")


def status_table(statuses: Sequence[ProjectionStatus]) -> Table:
    table = Table(title="Projections", title_justify="left")
    table.add_column("name", no_wrap=True)
    for column in ("kind", "version", "state", "position", "head", "lag", "updated"):
        table.add_column(column)
    for item in statuses:
        table.add_row(
            item.name,
            item.kind,
            str(item.version),
            item.state,
            str(item.position),
            str(item.head),
            f"{item.lag:,}",
            item.updated_at.strftime("%H:%M:%S") if item.updated_at else "-",
        )
    return table


def main() -> None:
    app()


if __name__ == "__main__":
    main()
