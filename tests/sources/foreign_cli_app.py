"""The application the foreign-source CLI tests run (test_foreign_operations.py): the
``lenient`` and ``strict`` projections of cli_operations_app, reading another system's
PostgreSQL table (``posted_log`` in the schema ``$FOREIGN_SCHEMA``, no id or version column)
through ``PostgresTableSource``, with read models in ``$FOREIGN_READ_MODELS``."""

from __future__ import annotations

import os

from projectionist import Application
from projectionist.backends.postgres import PostgresTableSource
from tests.cli_operations_app import numbered
from tests.conftest import PG_DSN

TABLE = "posted_log"

source = PostgresTableSource(
    PG_DSN,
    TABLE,
    schema=os.environ.get("FOREIGN_SCHEMA", "public"),
    strategy="commit_order_promised",  # the tests' writer inserts one row at a time
    poll_interval=0.05,
)
app = Application(
    source=source,
    read_models=os.environ.get("FOREIGN_READ_MODELS", "memory://"),
    projections=[numbered("lenient", "skip"), numbered("strict", "stop")],
    poll_interval=0.05,
)
