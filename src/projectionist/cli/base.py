"""What every command shares: the Typer app, the consoles, options, loading an application,
and turning library errors into one line and exit status 1.

Only the command line configures logging; the library just names loggers.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..app import Application
from ..errors import ConfigurationError, ProjectionistError, SchemaError
from ..store import EventStore

T = TypeVar("T")

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


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; turn a ProjectionistError into one red line and exit status 1."""
    return checked(lambda: asyncio.run(_awaited(factory)))


def checked(call: Callable[[], T]) -> T:
    """``call()``; a ProjectionistError becomes one red line (its text, never markup) and
    exit status 1."""
    try:
        return call()
    except ProjectionistError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


async def _awaited(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


def on_app(application: str, url: str | None, use: Callable[[Application], Awaitable[T]]) -> T:
    """Load the application, open it (``url`` overrides its store), ``use`` it, close it."""

    async def go() -> T:
        target = load_application(application)
        await target.open(url)
        try:
            return await use(target)
        except SchemaError as exc:
            if isinstance(target.source, EventStore):
                raise
            raise read_models_not_set_up(target) from exc  # not 'schema apply': no store
        finally:
            await target.close()

    return run_async(go)


CreateSchemaOption = Annotated[
    bool,
    typer.Option(
        "--create-schema",
        envvar="PROJECTIONIST_CREATE_SCHEMA",
        help="Create the store's schema if it has none [default: refuse, as a mistyped URL "
        "or ?schema= would otherwise get a new, empty one]",
    ),
]


async def require_schema(app: Application, create: bool) -> None:
    """Refuse a store without a projectionist schema unless ``create``: a mistyped URL or
    ``?schema=`` must not quietly start a second, empty store. An existing schema is still
    migrated by ``setup()``. Over another source, the read models' database is checked:
    a mistyped ``read_models`` URL must not quietly rebuild everything in a new one."""
    if create:
        return
    if not isinstance(app.source, EventStore):
        await _require_read_model_schema(app)
        return
    if await app.store.schema_version() > 0:
        return
    schema = f" (schema {app.schema!r})" if app.schema else ""
    raise SchemaError(
        f"no projectionist schema in {app.store.url}{schema}: is the URL or ?schema= "
        "mistyped? Create it with 'projectionist schema apply' (or run --create-schema)"
    )


async def _require_read_model_schema(app: Application) -> None:
    try:
        await app.read_models.checkpoints()
    except SchemaError as exc:
        raise read_models_not_set_up(app) from exc


def read_models_not_set_up(app: Application) -> SchemaError:
    """Over another source there is no store schema to apply: the read models' tables are
    made by the application's setup."""
    return SchemaError(
        f"no projectionist tables in the read models' database {app.read_model_url} (this "
        f"application reads its events from {app.source.url}): is the read_models URL "
        "mistyped? Create them with 'projectionist run --create-schema' (or app.setup())"
    )


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
    str | None, typer.Argument(metavar="APP", hidden=True, show_default=False)
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", envvar="PROJECTIONIST_JSON", help="Print one JSON object per line"),
]


def application_path(option: str | None, positional: str | None) -> str:
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
    application = vars(module).get(attribute)  # a name the user gave, not a capability
    if not isinstance(application, Application):
        raise ConfigurationError(
            f"{path!r} is {type(application).__name__}, not a projectionist.Application"
        )
    return application
