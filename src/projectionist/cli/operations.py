"""Commands on an application's projections: status, rebuild, verify, restart, faults,
dead letters.

Destructive commands (``rebuild``, ``faults skip``, ``dead-letters discard``) ask first;
``--yes`` (or ``PROJECTIONIST_YES=1``) answers for scripts. A prompt that gets no answer
(end of input) is a no: nothing is done, exit status 1.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, NoReturn

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..app import Application
from ..operations import DeadLetter, Fault
from ..remedies import StreamRetry
from ..status import ProjectionStatus
from ..verify import TableDifference, Verification
from .base import (
    AppOption,
    AppUrlOption,
    JsonOption,
    app,
    checked,
    console,
    load_application,
    on_app,
    run_async,
)
from .tables import dead_letter_table, status_table

YesOption = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", envvar="PROJECTIONIST_YES", help="Do it without asking for confirmation"
    ),
]


def confirm(question: str, yes: bool) -> None:
    """Ask ``question`` (unless ``yes``); anything but yes ends the command, exit status 1."""
    if not yes:
        typer.confirm(question, abort=True)


def fail(message: str) -> NoReturn:
    """A usage error: the flags given do not go together (exit status 2)."""
    raise typer.BadParameter(message)


def plain(text: str) -> None:
    """Print data (names, errors, tracebacks) as it is: never read as markup."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command()
def restart(name: str, application: AppOption, url: AppUrlOption = None) -> None:
    """Resume a faulted projection (after a fix): its workers retry the event that failed."""

    async def use(app: Application) -> int:
        return await app.restart(name)

    cleared = on_app(application, url, use)
    console.print(
        f"{name}: cleared {cleared} fault(s); workers resume it at their next heartbeat"
        if cleared
        else f"{name} was not faulted"
    )


faults_app = typer.Typer(
    help="Faults: events that stopped projections with on_error='stop'.", no_args_is_help=True
)
app.add_typer(faults_app, name="faults")


@faults_app.command("show")
def faults_show(
    application: AppOption,
    name: Annotated[str | None, typer.Argument(help="Only this projection's")] = None,
    url: AppUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the faults (of NAME, or of every projection): the event, the error, the traceback."""

    async def use(app: Application) -> list[Fault]:
        return await app.faults(name)

    faults = on_app(application, url, use)
    if as_json:
        for fault in faults:
            print(orjson.dumps({**fault.as_dict(), "traceback": fault.traceback}).decode())
        return
    if not faults:
        plain(f"{name} is not faulted" if name else "no faults")
    for fault in faults:
        show_fault(fault)


def show_fault(fault: Fault) -> None:
    failed_at = datetime.fromtimestamp(fault.failed_at, UTC).isoformat(timespec="seconds")
    plain(f"{fault.unit} (version {fault.version}) faulted at {failed_at}")
    plain(
        f"  event:     {fault.event_type}, stream {fault.stream_id}"
        f"{'' if fault.stream_version is None else f' version {fault.stream_version}'}, "
        f"position {fault.position}"
    )
    plain(f"  error:     {fault.error}")
    plain(f"  attempts:  {fault.attempts}")
    plain("  traceback:")
    plain("\n".join(f"    {line}" for line in fault.traceback.rstrip().splitlines()))


@faults_app.command("skip")
def faults_skip(
    name: str, application: AppOption, url: AppUrlOption = None, yes: YesOption = False
) -> None:
    """Move the event that stopped NAME to the dead letters; its workers resume after it.

    For an event no fix will let through (after a fix, 'restart' retries it instead)."""

    async def use(app: Application) -> list[Fault]:
        faults = await app.faults(name)  # shown before the question: what will be skipped
        for fault in faults:
            show_fault(fault)
        if faults:
            confirm(_skip_question(faults), yes)
        return await app.skip_fault(name)

    for fault in on_app(application, url, use):
        plain(
            f"{fault.unit}: moved {fault.event_type} at {fault.position} to the dead letters; "
            "workers resume it at their next heartbeat"
        )


def _skip_question(faults: Sequence[Fault]) -> str:
    them = "them" if len(faults) > 1 else "it"
    return f"Move {them} to the dead letters, and resume {faults[0].projection} after {them}?"


dead_letters_app = typer.Typer(
    help="Events skipped by projections with on_error='skip', or parked with their streams "
    "by on_error='park'.",
    no_args_is_help=True,
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

    letters = on_app(application, url, use)
    if as_json:
        for letter in letters:
            print(orjson.dumps(letter.as_dict()).decode())
        return
    console.print(dead_letter_table(letters))


IdsArgument = Annotated[list[int], typer.Argument(help="Dead letter ids (see list)")]
OptionalIdsArgument = Annotated[
    list[int] | None, typer.Argument(help="Dead letter ids (see list); or --stream")
]
StreamOption = Annotated[
    str | None,
    typer.Option(
        "--stream",
        envvar="PROJECTIONIST_STREAM",
        help="Retry this parked stream, in order (with --projection)",
    ),
]
ProjectionOption = Annotated[
    str | None,
    typer.Option("--projection", envvar="PROJECTIONIST_PROJECTION", help="The stream's projection"),
]


@dead_letters_app.command("retry")
def dead_letters_retry(
    application: AppOption,
    ids: OptionalIdsArgument = None,
    stream: StreamOption = None,
    projection: ProjectionOption = None,
    url: AppUrlOption = None,
) -> None:
    """Apply the events again (after a fix); those that succeed leave the list.

    A parked stream (on_error='park') is retried in order with --stream STREAM --projection
    NAME, or by the id of its first letter; it stops at a letter that fails again (exit 1)."""
    if stream is not None or projection is not None:
        _retry_stream(application, url, ids, stream, projection)
        return
    if not ids:
        fail("give dead letter ids, or --stream STREAM --projection NAME")

    async def use(app: Application) -> list[tuple[int, str | None]]:
        return await app.retry_dead_letters(ids)

    results = on_app(application, url, use)
    for letter_id, error in results:
        outcome = "applied" if error is None else f"failed again: {error}"
        console.print(f"{letter_id}: {outcome}", markup=False, highlight=False)
    if any(error is not None for _, error in results):
        raise typer.Exit(1)


def _retry_stream(
    application: str,
    url: str | None,
    ids: list[int] | None,
    stream: str | None,
    projection: str | None,
) -> None:
    if ids:
        fail("give dead letter ids or --stream, not both")
    if stream is None or projection is None:
        fail("--stream and --projection go together")

    async def use(app: Application) -> list[StreamRetry]:
        return await app.retry_parked_stream(projection, stream)

    results = on_app(application, url, use)
    for result in results:
        outcome = (
            f"applied {result.applied} letter(s) in order; un-parked"
            if result.unparked
            else f"applied {result.applied} letter(s); letter {result.failed} failed again: "
            f"{result.error}; it and the rest stay parked"
        )
        plain(f"{result.unit} {result.stream_id}: {outcome}")
    if not all(result.unparked for result in results):
        raise typer.Exit(1)


@dead_letters_app.command("discard")
def dead_letters_discard(
    ids: IdsArgument, application: AppOption, url: AppUrlOption = None, yes: YesOption = False
) -> None:
    """Forget dead letters for good."""
    checked(lambda: load_application(application))  # a wrong --app fails before the question
    confirm(f"Discard dead letter(s) {', '.join(map(str, ids))} for good?", yes)

    async def use(app: Application) -> int:
        return await app.discard_dead_letters(ids)

    console.print(f"discarded {on_app(application, url, use)} dead letter(s)")


@app.command()
def status(
    application: AppOption,
    url: AppUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show each projection: kind, version, state, position, head, lag, last update."""

    async def use(app: Application) -> list[ProjectionStatus]:
        return await app.status()

    statuses = on_app(application, url, use)
    if as_json:
        for item in statuses:
            print(orjson.dumps(item.as_dict()).decode())
    else:
        console.print(status_table(statuses))


@app.command("rebuild")
def rebuild_command(
    name: str, application: AppOption, url: AppUrlOption = None, yes: YesOption = False
) -> None:
    """Drop NAME's read model and replay all history into it, showing progress."""
    checked(lambda: load_application(application).projection(name))  # fail fast: unknown name
    confirm(f"Drop the read model of {name} and replay all history into it?", yes)

    async def go() -> int:
        target = load_application(application)
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

    total = run_async(go)
    console.print(f"rebuilt {name} from {total:,} events")


ToleranceOption = Annotated[
    float,
    typer.Option(
        "--float-tolerance",
        envvar="PROJECTIONIST_FLOAT_TOLERANCE",
        help="Floats equal within this relative difference (0: exactly)",
    ),
]


@app.command("verify")
def verify_command(
    name: str,
    application: AppOption,
    url: AppUrlOption = None,
    float_tolerance: ToleranceOption = 0.0,
) -> None:
    """Rebuild NAME in scratch space and compare it with the live read model, row by row.

    Exit 1 when they differ (a handler that is not deterministic or not replay-safe, or a
    manual edit)."""

    async def use(app: Application) -> Verification:
        with _progress_bar(f"verifying {name}") as report:
            return await app.verify(name, float_tolerance=float_tolerance, progress=report)

    result = on_app(application, url, use)
    rows = ", ".join(f"{table}: {count:,} rows" for table, count in result.rows.items())
    if result.ok:
        console.print(f"{name}: the live read model equals a rebuild ({rows})", markup=False)
        return
    for diff in result.differences:
        _print_difference(diff)
    raise typer.Exit(1)


@contextlib.contextmanager
def _progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A bar of events replayed; the callback moves it."""
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report


def _print_difference(diff: TableDifference) -> None:
    """Data is printed as text, never as markup: values come from events."""
    say = functools.partial(console.print, markup=False, highlight=False)
    say(
        f"{diff.table}: {diff.extra} row(s) only in the live table, "
        f"{diff.missing} only in the rebuild, {diff.differing} differ"
        + (f" ({diff.problem})" if diff.problem else ""),
        style="red",
    )
    for cell in diff.changed:
        key = ", ".join(f"{c}={v!r}" for c, v in zip(diff.key_columns, cell.key, strict=True))
        say(f"  {key}: {cell.column}: live {cell.live!r}, rebuilt {cell.rebuilt!r}")
    for row in diff.only_live:
        say(f"  live only:    {row}")
    for row in diff.only_rebuilt:
        say(f"  rebuild only: {row}")
