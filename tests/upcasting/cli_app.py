"""The application ``events upgrade`` runs as a real process in test_cli_upgrade.py: the
order projections over the store at ``$UPCAST_URL``, with the v3 upcasters."""

from __future__ import annotations

import os

from projectionist import Application
from tests.upcasting.domain import order_rows, order_states, upcasters

app = Application(
    os.environ.get("UPCAST_URL", "memory://"),
    [order_rows(), order_states()],
    upcasters=upcasters(3),
)
