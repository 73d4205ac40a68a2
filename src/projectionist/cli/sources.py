"""``source prepare``: make a table of another system's events readable gap-safely.

It adds a transaction id column (default ``pg_current_xact_id()``, so the writers need no
change) and an index, for ``PostgresTableSource(strategy="transaction_id")``. ``--sql``
prints the migration for review; without it the command applies it after asking.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..backends.postgres.table_source import DEFAULT_TX_COLUMN, apply_sql, prepare_sql
from .base import app, checked, console, run_async
from .operations import YesOption, confirm, plain

source_app = typer.Typer(
    help="Sources of events that projectionist did not store.", no_args_is_help=True
)
app.add_typer(source_app, name="source")


@source_app.command("prepare")
def prepare(
    url: Annotated[
        str,
        typer.Option(
            "--url",
            envvar="PROJECTIONIST_SOURCE_URL",
            help="The table's database: postgresql://...",
        ),
    ],
    table: Annotated[
        str, typer.Option("--table", envvar="PROJECTIONIST_SOURCE_TABLE", help="The events table")
    ],
    schema: Annotated[
        str | None,
        typer.Option(
            "--schema",
            envvar="PROJECTIONIST_SOURCE_SCHEMA",
            help="The table's schema [default: the search_path]",
        ),
    ] = None,
    position_column: Annotated[
        str,
        typer.Option(
            "--position-column",
            envvar="PROJECTIONIST_SOURCE_POSITION_COLUMN",
            help="The table's sequence column (the index is on the new column, then it)",
        ),
    ] = "id",
    column: Annotated[
        str,
        typer.Option(
            "--column", envvar="PROJECTIONIST_SOURCE_TX_COLUMN", help="The column to add (xid8)"
        ),
    ] = DEFAULT_TX_COLUMN,
    sql: Annotated[
        bool,
        typer.Option(
            "--sql", envvar="PROJECTIONIST_SOURCE_SQL", help="Print the migration, apply nothing"
        ),
    ] = False,
    yes: YesOption = False,
) -> None:
    """Add a transaction id column to a table, for strategy 'transaction_id'."""
    migration = checked(
        lambda: prepare_sql(table, schema=schema, column=column, position=position_column)
    )
    if sql:
        plain(migration.rstrip("\n"))
        return
    plain(migration.rstrip("\n"))
    confirm("Apply this migration (it rewrites the table under an exclusive lock)?", yes)
    run_async(lambda: apply_sql(url, migration))
    console.print(
        f"prepared {table}: read it with columns.tx={column!r}, strategy='transaction_id'"
    )
