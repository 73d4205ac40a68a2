"""The application the command-line tests in test_cli_park.py run (``--url`` sets the store):
the ``chain`` projection of tests/engine/test_park.py, ``on_error="park"``, whose failing
events are a table of the read-model database (``poison``), so a test "fixes" the handler
of every process at once."""

from __future__ import annotations

from projectionist import Application
from tests.engine.test_park import chain

PROJECTIONS = [chain(batch_size=5)]
app = Application("memory://", PROJECTIONS, poll_interval=0.1)
