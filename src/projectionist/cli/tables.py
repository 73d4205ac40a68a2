"""The tables the commands print. Every cell is plain text: names, states, events and errors
are shown as written, never read as rich markup.

The status table chooses its columns by the width it is drawn in: an 80-column terminal
keeps what an operator needs first (name, state, lag, the error) and drops the rest in a
fixed order; ``status --json`` always carries every field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console, ConsoleOptions, RenderResult
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

ERROR_MIN_WIDTH = 24
"""The last error column is shortened (with an ellipsis) down to this, then dropped."""
ERROR_MAX_WIDTH = 60
STATE_MIN_WIDTH = 16
"""A longer state ("needs rebuild (read model is version 1)") wraps onto more lines."""


@dataclass(frozen=True, slots=True)
class _Column:
    header: str
    cell: Callable[[ProjectionStatus], str]
    keep: int
    """Drop order when the width is short: the lowest goes first."""
    numeric: bool = False


def _name(item: ProjectionStatus) -> str:
    return item.name + (f" [{item.partition}]" if item.partition else "")


def _error(item: ProjectionStatus) -> str:
    return item.fault.error if item.fault else item.last_error or "-"


_COLUMNS = (
    _Column("name", _name, keep=100),
    _Column("kind", lambda s: s.kind, keep=3),
    _Column("version", lambda s: str(s.version), keep=2),
    _Column("state", lambda s: s.state_text, keep=99),
    _Column("owner", lambda s: s.owner or "-", keep=7),
    _Column("position", lambda s: str(s.position), keep=5),
    _Column("head", lambda s: str(s.head), keep=0),
    _Column("lag", lambda s: ("~" if s.lag_estimated else "") + f"{s.lag:,}", 98, numeric=True),
    _Column(
        "lag s",
        lambda s: "-" if s.lag_seconds is None else f"{s.lag_seconds:.1f}",
        keep=6,
        numeric=True,
    ),
    _Column(
        "ev/s",
        lambda s: "-" if s.events_per_second is None else f"{s.events_per_second:,.0f}",
        keep=4,
        numeric=True,
    ),
    _Column("dead", lambda s: str(s.dead_letters), keep=8, numeric=True),
    _Column("parked", lambda s: str(s.parked_streams), keep=7, numeric=True),
    _Column("updated", lambda s: s.updated_at.strftime("%H:%M:%S") if s.updated_at else "-", 1),
    _Column("last error", _error, keep=9),
)
_STATE, _ERROR = _COLUMNS[3], _COLUMNS[-1]
_SQUEEZABLE = {_STATE: STATE_MIN_WIDTH, _ERROR: ERROR_MIN_WIDTH}
"""Columns narrower than their text when the width is short, and how narrow."""


class StatusTable:
    """The ``status`` table (the demo prints it too), laid out for the width it gets."""

    def __init__(self, statuses: Sequence[ProjectionStatus]) -> None:
        self.statuses = list(statuses)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)

    def columns(self, width: int) -> list[_Column]:
        """The columns that fit ``width``, dropping the least needed first."""
        kept = list(_COLUMNS)
        while _width(kept, self.statuses, squeezed=True) > width and len(kept) > 2:
            kept.remove(min(kept, key=lambda column: column.keep))
        return kept

    def table(self, width: int) -> Table:
        table = Table(title="Projections", title_justify="left")
        columns = self.columns(width)
        others = _width([c for c in columns if c is not _ERROR], self.statuses, squeezed=False)
        room = max(ERROR_MIN_WIDTH, min(ERROR_MAX_WIDTH, width - others - 3))
        for column in columns:
            table.add_column(
                column.header,
                justify="right" if column.numeric else "left",
                # The state wraps rather than be cut; the error is shortened, on one line.
                no_wrap=column is not _STATE,
                overflow="ellipsis" if column is _ERROR else "fold",
                max_width=room if column is _ERROR else None,
            )
        state = columns.index(_STATE)
        for item in self.statuses:
            cells = [Text(column.cell(item)) for column in columns]
            cells[state].stylize(SEVERITY_STYLES[item.severity])
            table.add_row(*cells)
        table.caption = _held_back_caption(self.statuses)
        return table


def _width(
    columns: Sequence[_Column], statuses: Sequence[ProjectionStatus], *, squeezed: bool
) -> int:
    """The columns at their natural widths, with borders and padding; ``squeezed``: the
    state wrapped and the error shortened as far as they may be."""
    total = 1  # the left border
    for column in columns:
        natural = max([len(column.header), *(len(column.cell(item)) for item in statuses)])
        if squeezed and column in _SQUEEZABLE:
            natural = min(natural, _SQUEEZABLE[column])
        total += natural + 3
    return total


def _held_back_caption(statuses: Sequence[ProjectionStatus]) -> Text | None:
    held = next((s for s in statuses if s.held_back_seconds > 0), None)
    if held is None:
        return None
    by = f" by an open {held.held_back_by}" if held.held_back_by else ""
    return Text(
        f"committed events have been held back from readers for {held.held_back_seconds:.1f}s{by}"
    )


def status_table(statuses: Sequence[ProjectionStatus]) -> StatusTable:
    """The ``status`` table: columns chosen by the width it is printed in."""
    return StatusTable(statuses)


def plain_texts(*cells: str) -> list[Text]:
    """Table cells as plain text: rich would read "[...]" in them as markup."""
    return [Text(cell) for cell in cells]


def dead_letter_table(letters: Sequence[DeadLetter]) -> Table:
    table = Table(title=f"Dead letters ({len(letters)})", title_justify="left")
    for column in ("id", "projection", "position", "stream", "event", "error", "attempts"):
        table.add_column(column)
    table.add_column("parked")
    for letter in letters:
        event = letter.event
        table.add_row(
            *plain_texts(
                str(letter.id),
                letter.unit,
                str(event.position),
                event.stream_id if event.version is None else f"{event.stream_id} v{event.version}",
                event.type,
                letter.error,
                str(letter.attempts),
                "parked" if letter.parked else "-",
            )
        )
    return table
