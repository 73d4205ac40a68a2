"""The shop application: ``projectionist run --app examples.shop.app:app`` runs its projections.

The store URL comes from ``PROJECTIONIST_URL`` (default: an SQLite file next to you).
"""

from __future__ import annotations

import os

from projectionist import Application

from .projections import ALL, live_counts

app = Application(os.environ.get("PROJECTIONIST_URL", "sqlite:///shop.db"), ALL, live=[live_counts])
