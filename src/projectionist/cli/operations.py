"""Commands on an application's projections: status, rebuild, verify, restart, dead letters."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Annotated

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..app import Application
from ..operations import DeadLetter
from ..status import ProjectionStatus
from ..verify import TableDifference, Verification
from .base import (
    AppOption,
    AppUrlOption,
    JsonOption,
    app,
    console,
    load_application,
    on_app,
    run_async,
)
from .tables import dead_letter_table, status_table


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

    letters = on_app(application, url, use)
    if as_json:
        for letter in letters:
            print(orjson.dumps(letter.as_dict()).decode())
        return
    console.print(dead_letter_table(letters))


IdsArgument = Annotated[list[int], typer.Argument(help="Dead letter ids (see list)")]


@dead_letters_app.command("retry")
def dead_letters_retry(ids: IdsArgument, application: AppOption, url: AppUrlOption = None) -> None:
    """Apply the events again (after a fix); those that succeed leave the list."""

    async def use(app: Application) -> list[tuple[int, str | None]]:
        return await app.retry_dead_letters(ids)

    results = on_app(application, url, use)
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
