"""Prometheus metrics over the dashboard's latest status snapshot.

A custom collector reads the snapshot at scrape time, in its own registry: importing this
module registers nothing globally.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LABELS = ["projection", "partition"]
Snapshot = Callable[[], tuple[Sequence[Mapping[str, Any]], bool]]
"""Returns the latest rows and whether the last poll of the status succeeded."""


_FIELDS: Sequence[tuple[type[CounterMetricFamily | GaugeMetricFamily], str, str, str]] = [
    (
        CounterMetricFamily,
        "projectionist_events_processed",
        "Events the projection has processed since its last rebuild",
        "events_processed",
    ),
    (
        GaugeMetricFamily,
        "projectionist_lag_events",
        "Committed events after the projection's position, visible or held back "
        "(estimated beyond 10,000)",
        "lag",
    ),
    (
        GaugeMetricFamily,
        "projectionist_lag_seconds",
        "Age of the oldest committed event the projection has not processed yet",
        "lag_seconds",
    ),
    (
        GaugeMetricFamily,
        "projectionist_held_back_seconds",
        "How long committed events have waited, invisible to readers, behind an "
        "older open transaction that appended to the store",
        "held_back_seconds",
    ),
    (
        GaugeMetricFamily,
        "projectionist_last_batch_seconds",
        "Duration of the projection's last batch",
        "last_batch_seconds",
    ),
    (CounterMetricFamily, "projectionist_errors", "Handler errors of the projection", "errors"),
    (
        GaugeMetricFamily,
        "projectionist_dead_letters",
        "Events of the projection in its dead-letter table",
        "dead_letters",
    ),
    (
        GaugeMetricFamily,
        "projectionist_parked_streams",
        "Streams the projection holds back behind a dead letter (on_error='park')",
        "parked_streams",
    ),
]
"""(kind, metric name, help, status field) of the numeric series."""


class StatusCollector(Collector):
    """One time series per projection (and partition) and status field."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        rows, ok = self._snapshot()
        up = GaugeMetricFamily(
            "projectionist_status_up",
            "1 if the dashboard's last poll of the application status succeeded, else 0",
        )
        up.add_metric([], 1.0 if ok else 0.0)
        yield up
        for kind, name, documentation, field in _FIELDS:
            family = kind(name, documentation, labels=LABELS)
            for row in rows:
                value = row.get(field)
                # A field the status does not carry (or not yet: None) has no sample.
                if isinstance(value, int | float) and not isinstance(value, bool):
                    family.add_metric(_labels(row), float(value))
            yield family
        yield _states(rows)


def _states(rows: Sequence[Mapping[str, Any]]) -> GaugeMetricFamily:
    """1 per unit, labelled with its state and that state's severity: alert on
    ``projectionist_unit_state{severity="bad"}`` rather than on words."""
    family = GaugeMetricFamily(
        "projectionist_unit_state",
        "1, labelled with the projection unit's state and its severity (ok, warn, bad, idle)",
        labels=[*LABELS, "state", "severity"],
    )
    for row in rows:
        state, severity = row.get("state"), row.get("severity")
        if isinstance(state, str) and isinstance(severity, str):
            family.add_metric([*_labels(row), state, severity], 1.0)
    return family


def _labels(row: Mapping[str, Any]) -> list[str]:
    partition = row.get("partition")
    return [str(row.get("name", "")), "" if partition is None else str(partition)]


def metrics_registry(snapshot: Snapshot) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(snapshot))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
