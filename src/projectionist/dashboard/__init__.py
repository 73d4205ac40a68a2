"""A live operations dashboard and Prometheus metrics for an Application.

``projectionist dashboard APP`` serves it; a program can embed it::

    async with app:
        async with Dashboard(app).serve("127.0.0.1", 8000) as url:
            ...  # the page, /api/status and /metrics are served at url meanwhile
"""

from .history import StatusHistory, row_key
from .metrics import StatusCollector, metrics_registry
from .server import Dashboard

__all__ = ["Dashboard", "StatusCollector", "StatusHistory", "metrics_registry", "row_key"]
