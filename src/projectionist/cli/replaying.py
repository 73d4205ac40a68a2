"""``projectionist replay NAME --from POSITION|TIMESTAMP``: a partial replay (docs/replay.md).

It needs no confirmation: it drops nothing, and it is refused for a projection that does
not declare itself replay-safe. Workers keep running: the replay holds the units' leases
and hands them back.
"""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from ..app import Application
from ..replay import Replay, parse_point
from .base import AppOption, AppUrlOption, JsonOption, app, checked, console, on_app

FromOption = Annotated[
    str,
    typer.Option(
        "--from",
        envvar="PROJECTIONIST_REPLAY_FROM",
        help="Replay the events after this position (TX/SEQ, as status shows it), or from "
        "the first event recorded at or after this ISO 8601 time with a timezone "
        "(2024-05-01T12:00:00+00:00)",
        show_default=False,
    ),
]


@app.command("replay")
def replay_command(
    name: str,
    from_: FromOption,
    application: AppOption,
    url: AppUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Apply NAME's events after a point again over its current rows (a projection declared
    replay_safe=True); its checkpoints end where they were, or at the head."""
    point = checked(lambda: parse_point(from_))  # a bad point fails before connecting

    async def use(target: Application) -> Replay:
        return await target.replay(name, point)

    result = on_app(application, url, use)
    if as_json:
        print(orjson.dumps(result.as_dict()).decode())
        return
    for unit in result.units:
        if unit.left_alone is not None:
            console.print(f"{unit.unit}: left alone: {unit.left_alone}", markup=False)
        else:
            console.print(
                f"{unit.unit}: replayed {unit.events:,} events after {result.point} "
                f"(checkpoint was {unit.was}, now {unit.now})",
                markup=False,
            )
    console.print(f"replayed {result.events:,} events of {name}", markup=False)
