"""``events upgrade``: rewrite stored events to their current shape (docs/schema-evolution.md).

Optional and explicit: upcasters already give every consumer the current shapes as events
are read; an upgrade makes the stored events match, in batches, keeping ids, positions,
order, stream versions and times. The upcasters are the application's (``--app``).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..app import Application
from ..defaults import DEFAULT_BATCH_SIZE
from ..upgrading import UpgradeReport
from .base import (
    AppOption,
    AppUrlOption,
    JsonOption,
    app,
    checked,
    console,
    load_application,
    on_app,
)
from .operations import YesOption, confirm, plain

events_app = typer.Typer(help="The stored events themselves.", no_args_is_help=True)
app.add_typer(events_app, name="events")

BatchSizeOption = Annotated[
    int,
    typer.Option(
        "--batch-size",
        envvar="PROJECTIONIST_UPGRADE_BATCH_SIZE",
        help="Events read, and rewritten in one transaction, at a time",
    ),
]


@events_app.command("upgrade")
def upgrade(
    application: AppOption,
    url: AppUrlOption = None,
    batch_size: BatchSizeOption = DEFAULT_BATCH_SIZE,
    json_output: JsonOption = False,
    yes: YesOption = False,
) -> None:
    """Rewrite the stored events an upcaster applies to into their current shape.

    Refused while a blue/green build runs, and over another system's source. A second run
    changes nothing."""
    checked(lambda: load_application(application))  # a wrong --app fails before the question
    confirm("Rewrite the stored events of old shapes into their current shape?", yes)

    async def go(target: Application) -> UpgradeReport:
        return await target.upgrade_events(batch_size=batch_size)

    report = on_app(application, url, go)
    if json_output:
        plain(json.dumps({"scanned": report.scanned, "upgraded": report.upgraded,
                          "batches": report.batches, "changes": dict(report.changes)}))  # fmt: skip
        return
    for change, count in sorted(report.changes.items()):
        plain(f"{change}: {count:,}")
    console.print(f"upgraded {report.upgraded:,} of {report.scanned:,} events scanned")
