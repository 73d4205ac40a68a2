"""The ``projectionist`` command: a thin face over the library.

Every option also reads an environment variable (shown in ``--help``). Errors print one line
and exit with status 1. Only this module configures logging; the library just names loggers.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, TypeVar

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .app import Application
from .errors import ConfigurationError, ProjectionistError
from .factory import create_store
from .identifiers import quote_identifier
from .operations import DeadLetter
from .status import ProjectionStatus, Severity
from .verify import Verification

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
# Piped output (a log, CI) gets $COLUMNS or 160 columns rather than 80: tables stay readable.
console = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "") or 160))
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
    return _checked(lambda: asyncio.run(_awaited(factory)))


def _checked(call: Callable[[], T]) -> T:
    """``call()``; a ProjectionistError becomes one red line (its text, never markup) and
    exit status 1."""
    try:
        return call()
    except ProjectionistError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


async def _awaited(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


def _on_app(application: str, url: str | None, use: Callable[[Application], Awaitable[T]]) -> T:
    """Load the application, open it (``url`` overrides its store), ``use`` it, close it."""

    async def go() -> T:
        target = load_application(application)
        await target.open(url)
        try:
            return await use(target)
        finally:
            await target.close()

    return _run(go)


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
    """Run the shop example: history, its read models and a search (starts afresh)."""
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
        store = create_store(url, schema=DEMO_SCHEMA)
        async with store, store.read_models().transaction() as tx:
            await tx.execute(f"DROP SCHEMA IF EXISTS {quote_identifier(DEMO_SCHEMA)} CASCADE")


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
# run and dashboard also accept the application as an argument, as they did first: scripts
# and service units written that way keep working; --app is the documented form.
OptionalAppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        envvar="PROJECTIONIST_APP",
        help="The application as module:attribute (a projectionist.Application)",
        show_default=False,
    ),
]
PositionalApp = Annotated[
    str | None, typer.Argument(metavar="[APP]", hidden=True, show_default=False)
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", envvar="PROJECTIONIST_JSON", help="Print one JSON object per line"),
]


def _application_path(option: str | None, positional: str | None) -> str:
    """The application of run/dashboard, given as ``--app`` (or, as before, positionally)."""
    if option and positional and option != positional:
        raise ConfigurationError(
            f"two applications given: --app {option!r} and {positional!r}; give one"
        )
    path = option or positional
    if not path:
        raise ConfigurationError(
            "no application: give --app module:attribute of a projectionist.Application "
            "(or set PROJECTIONIST_APP)"
        )
    return path


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
    positional: PositionalApp = None,
    application: OptionalAppOption = None,
    url: AppUrlOption = None,
    worker_id: Annotated[
        str | None,
        typer.Option(envvar="PROJECTIONIST_WORKER_ID", help="[default: host:pid:random]"),
    ] = None,
    lease_seconds: Annotated[
        float,
        typer.Option(
            min=1.0,
            envvar="PROJECTIONIST_LEASE_SECONDS",
            help="How long a dead worker's projections wait before others take them over",
        ),
    ] = 10.0,
    shutdown_seconds: Annotated[
        float,
        typer.Option(
            min=0.1,
            envvar="PROJECTIONIST_SHUTDOWN_SECONDS",
            help="On SIGTERM/SIGINT, how long the current batches may take to commit",
        ),
    ] = 30.0,
    idle_transaction_seconds: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            envvar="PROJECTIONIST_IDLE_TRANSACTION_SECONDS",
            help="PostgreSQL ends a batch left idle this long (a paused worker) "
            "[default: --lease-seconds]",
        ),
    ] = None,
) -> None:
    """Run the application's projections as a worker until SIGINT or SIGTERM.

    Any number of workers share the projections (and partitions) through leases in the
    database; on a signal the current batches commit, the leases are handed back, exit 0."""

    async def use(app: Application) -> None:
        await app.setup()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, app.stop)
        await app.run(
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            shutdown_seconds=shutdown_seconds,
            idle_transaction_seconds=idle_transaction_seconds,
        )

    _on_app(_checked(lambda: _application_path(application, positional)), url, use)


@app.command()
def health(
    application: AppOption,
    url: AppUrlOption = None,
    worker_id: Annotated[
        str | None,
        typer.Option(envvar="PROJECTIONIST_WORKER_ID", help="Check this worker [default: any]"),
    ] = None,
    max_age: Annotated[
        float,
        typer.Option(min=0.1, envvar="PROJECTIONIST_HEALTH_MAX_AGE", help="Seconds"),
    ] = 30.0,
) -> None:
    """Exit 0 if a worker (or the given one) has sent a heartbeat within MAX_AGE seconds."""

    async def use(app: Application) -> list[tuple[str, float]]:
        return await app.live_workers(max_age)

    alive = [
        (w, age) for w, age in _on_app(application, url, use) if worker_id is None or w == worker_id
    ]
    if not alive:
        errors.print(f"unhealthy: no heartbeat from {worker_id or 'any worker'} in {max_age:g}s")
        raise typer.Exit(1)
    for worker, age in alive:
        console.print(f"healthy: {worker} (heartbeat {age:.1f}s ago)")


@app.command()
def restart(name: str, application: AppOption, url: AppUrlOption = None) -> None:
    """Resume a faulted projection (after a fix): its workers retry the event that failed."""

    async def use(app: Application) -> int:
        return await app.restart(name)

    cleared = _on_app(application, url, use)
    console.print(
        f"{name}: cleared {cleared} fault(s); workers resume it at their next heartbeat"
        if cleared
        else f"{name} was not faulted"
    )


dead_letters_app = typer.Typer(
    help="Events skipped by projections with on_error='skip'.", no_args_is_help=True
)
app.add_typer(dead_letters_app, name="dead-letters")


@dead_letters_app.command("list")
def dead_letters_list(
    application: AppOption,
    name: Annotated[
        str | None,
        typer.Option("--projection", envvar="PROJECTIONIST_PROJECTION", help="Only this one"),
    ] = None,
    url: AppUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List dead letters, oldest first."""

    async def use(app: Application) -> list[DeadLetter]:
        return await app.dead_letters(name)

    letters = _on_app(application, url, use)
    if as_json:
        for letter in letters:
            print(orjson.dumps(letter.as_dict()).decode())
        return
    table = Table(title=f"Dead letters ({len(letters)})", title_justify="left")
    for column in ("id", "projection", "position", "stream", "event", "error", "attempts"):
        table.add_column(column)
    for letter in letters:
        event = letter.event
        table.add_row(
            *_texts(
                str(letter.id),
                letter.unit,
                str(event.position),
                f"{event.stream_id} v{event.version}",
                event.type,
                letter.error,
                str(letter.attempts),
            )
        )
    console.print(table)


IdsArgument = Annotated[list[int], typer.Argument(help="Dead letter ids (see list)")]


@dead_letters_app.command("retry")
def dead_letters_retry(ids: IdsArgument, application: AppOption, url: AppUrlOption = None) -> None:
    """Apply the events again (after a fix); those that succeed leave the list."""

    async def use(app: Application) -> list[tuple[int, str | None]]:
        return await app.retry_dead_letters(ids)

    results = _on_app(application, url, use)
    for letter_id, error in results:
        outcome = "applied" if error is None else f"failed again: {error}"
        console.print(f"{letter_id}: {outcome}", markup=False, highlight=False)
    if any(error is not None for _, error in results):
        raise typer.Exit(1)


@dead_letters_app.command("discard")
def dead_letters_discard(
    ids: IdsArgument, application: AppOption, url: AppUrlOption = None
) -> None:
    """Forget dead letters for good."""

    async def use(app: Application) -> int:
        return await app.discard_dead_letters(ids)

    console.print(f"discarded {_on_app(application, url, use)} dead letter(s)")


@app.command()
def status(
    application: AppOption,
    url: AppUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show each projection: kind, version, state, position, head, lag, last update."""

    async def use(app: Application) -> list[ProjectionStatus]:
        return await app.status()

    statuses = _on_app(application, url, use)
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
            await target.prepare_schema()
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


@app.command("verify")
def verify_command(name: str, application: AppOption, url: AppUrlOption = None) -> None:
    """Rebuild NAME in scratch space and compare it with the live read model, row by row.

    Exit 1 when they differ (a handler that is not deterministic or not replay-safe, or a
    manual edit)."""

    async def use(app: Application) -> Verification:
        return await app.verify(name)

    result = _on_app(application, url, use)
    rows = ", ".join(f"{table}: {count:,} rows" for table, count in result.rows.items())
    if result.ok:
        console.print(f"{name}: the live read model equals a rebuild ({rows})")
        return
    for diff in result.differences:
        console.print(
            f"[red]{escape(diff.table)}[/red]: {diff.extra} row(s) only in the live table, "
            f"{diff.missing} only in the rebuild",
            highlight=False,
        )
        for row in diff.only_live:
            console.print(f"  live only:    {row}", markup=False, highlight=False)
        for row in diff.only_rebuilt:
            console.print(f"  rebuild only: {row}", markup=False, highlight=False)
    raise typer.Exit(1)


# -- dashboard ----------------------------------------------------------------------------


@app.command("dashboard")
def dashboard_command(
    positional: PositionalApp = None,
    application: OptionalAppOption = None,
    url: AppUrlOption = None,
    host: Annotated[
        str, typer.Option(envvar="PROJECTIONIST_DASHBOARD_HOST", help="Address to listen on")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            min=0, max=65535, envvar="PROJECTIONIST_DASHBOARD_PORT", help="Port (0: any free one)"
        ),
    ] = 8000,
    interval: Annotated[
        float,
        typer.Option(
            min=0.05, envvar="PROJECTIONIST_DASHBOARD_INTERVAL", help="Seconds between status polls"
        ),
    ] = 1.0,
) -> None:
    """Serve a live web dashboard of the projections, with /metrics for Prometheus."""
    from .dashboard import Dashboard  # the web stack loads only for this command

    def ready(address: str) -> None:
        console.print(f"dashboard on {address}/  (metrics: {address}/metrics; Ctrl-C stops)")
        sys.stdout.flush()

    async def go() -> None:
        target = load_application(_application_path(application, positional))
        await target.open(url)
        try:
            dashboard = Dashboard(target, interval=interval)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, dashboard.stop)
            await dashboard.serve_until_stopped(host, port, ready)
        finally:
            await target.close()

    _run(go)


SEVERITY_STYLES = {
    Severity.OK: "green",
    Severity.WARN: "yellow",
    Severity.BAD: "bold red",
    Severity.IDLE: "dim",
}
"""How the status table colours a state, by its severity."""


def status_table(statuses: Sequence[ProjectionStatus]) -> Table:
    """The ``status`` table (the demo prints it too). Every cell is plain text: names,
    states and errors are shown as written, never read as markup."""
    table = Table(title="Projections", title_justify="left")
    table.add_column("name", no_wrap=True)
    columns = ("kind", "version", "state", "owner", "position", "head", "lag", "lag s", "ev/s")
    for column in (*columns, "dead", "updated", "last error"):
        table.add_column(column)
    for item in statuses:
        cells = _texts(*_status_cells(item))
        cells[3].stylize(SEVERITY_STYLES[item.severity])
        table.add_row(*cells)
    held = next((s for s in statuses if s.held_back_seconds > 0), None)
    if held:
        by = f" by an open {held.held_back_by}" if held.held_back_by else ""
        table.caption = Text(
            f"committed events have been held back from readers for "
            f"{held.held_back_seconds:.1f}s{by}"
        )
    return table


def _status_cells(item: ProjectionStatus) -> list[str]:
    return [
        item.name + (f" [{item.partition}]" if item.partition else ""),
        item.kind,
        str(item.version),
        item.state_text,
        item.owner or "-",
        str(item.position),
        str(item.head),
        ("~" if item.lag_estimated else "") + f"{item.lag:,}",
        "-" if item.lag_seconds is None else f"{item.lag_seconds:.1f}",
        "-" if item.events_per_second is None else f"{item.events_per_second:,.0f}",
        str(item.dead_letters),
        item.updated_at.strftime("%H:%M:%S") if item.updated_at else "-",
        (item.fault.error if item.fault else item.last_error or "-")[:60],
    ]


def _texts(*cells: str) -> list[Text]:
    """Table cells as plain text: rich would read "[...]" in them as markup."""
    return [Text(cell) for cell in cells]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
