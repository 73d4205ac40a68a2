"""The tables the commands print. Every cell is plain text: names, states, events and errors
are shown as written, never read as rich markup."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from ..operations import DeadLetter
from ..status import ProjectionStatus, Severity

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
        cells = plain_texts(*_status_cells(item))
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


def plain_texts(*cells: str) -> list[Text]:
    """Table cells as plain text: rich would read "[...]" in them as markup."""
    return [Text(cell) for cell in cells]


def dead_letter_table(letters: Sequence[DeadLetter]) -> Table:
    table = Table(title=f"Dead letters ({len(letters)})", title_justify="left")
    for column in ("id", "projection", "position", "stream", "event", "error", "attempts"):
        table.add_column(column)
    for letter in letters:
        event = letter.event
        table.add_row(
            *plain_texts(
                str(letter.id),
                letter.unit,
                str(event.position),
                f"{event.stream_id} v{event.version}",
                event.type,
                letter.error,
                str(letter.attempts),
            )
        )
    return table
