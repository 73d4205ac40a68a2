"""The ``projectionist`` command: a thin face over the library.

Every option also reads an environment variable (shown in ``--help``). Errors print one line
and exit with status 1. Commands live in the modules named for what they work on; importing
them registers them on ``app``.
"""

from __future__ import annotations

from . import importing, operations, replaying, serving, sources, store
from .base import app, load_application
from .tables import status_table

# Imported for their commands.
_COMMANDS = (importing, operations, replaying, serving, sources, store)


def main() -> None:
    app()


__all__ = ["app", "load_application", "main", "status_table"]
