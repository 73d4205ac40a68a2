"""What the dashboard remembers: the latest status rows and a short history per row.

A row is ``ProjectionStatus.as_dict()``. Keys are read with ``.get()`` and fallbacks, so the
dashboard works whichever fields the status carries (partitions, owners, error counts and
lag in seconds may or may not be there).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]

# Rates are derived over this window when the status does not report one itself.
RATE_WINDOW_SECONDS = 5.0


def row_key(row: Mapping[str, Any]) -> str:
    """Rows are keyed by projection name and partition ("orders" or "orders[1/4]")."""
    partition = row.get("partition")
    return str(row.get("name")) if partition in (None, "") else f"{row.get('name')}[{partition}]"


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of a row's chart."""

    at: float
    """Unix time of the poll."""
    lag: int | None
    lag_seconds: float | None
    events_per_second: float | None
    events_processed: int | None

    def as_list(self) -> list[Any]:
        return [round(self.at, 3), self.lag, self.lag_seconds, self.events_per_second]


class StatusHistory:
    """The latest rows, and per row a ring buffer of samples covering ``seconds``."""

    def __init__(self, seconds: float = 600.0, interval: float = 1.0) -> None:
        self.seconds = seconds
        self._maxlen = max(2, int(seconds / max(interval, 0.01)) + 2)
        self._samples: dict[str, deque[Sample]] = {}
        self.rows: list[Row] = []
        self.at: float | None = None

    def record(self, rows: Iterable[Mapping[str, Any]], at: float) -> list[Row]:
        """Store one poll's rows; return them with ``key`` and a dashboard ``rate`` added."""
        enriched = []
        for raw in rows:
            row = dict(raw)
            key = row_key(row)
            samples = self._samples.setdefault(key, deque(maxlen=self._maxlen))
            processed = _int_or_none(row.get("events_processed"))
            reported = _float_or_none(row.get("events_per_second"))
            rate = reported if reported is not None else _derived_rate(samples, processed, at)
            samples.append(
                Sample(
                    at,
                    _int_or_none(row.get("lag")),
                    _float_or_none(row.get("lag_seconds")),
                    rate,
                    processed,
                )
            )
            while samples and samples[0].at < at - self.seconds:
                samples.popleft()
            row["key"] = key
            row["rate"] = rate
            enriched.append(row)
        # Rows that disappeared (a projection removed, a partition reassigned) lose their chart.
        live = {row["key"] for row in enriched}
        for key in set(self._samples) - live:
            del self._samples[key]
        self.rows = enriched
        self.at = at
        return enriched

    def samples(self, key: str) -> list[Sample]:
        return list(self._samples.get(key, ()))

    def charts(self) -> dict[str, list[list[Any]]]:
        """Every row's samples, compact, for a page that just connected."""
        return {key: [s.as_list() for s in samples] for key, samples in self._samples.items()}


def _derived_rate(samples: deque[Sample], processed: int | None, at: float) -> float | None:
    """Events per second from the growth of ``events_processed`` over the last few seconds."""
    if processed is None:
        return None
    base: Sample | None = None
    for sample in reversed(samples):
        if sample.events_processed is None:
            break
        base = sample
        if at - sample.at >= RATE_WINDOW_SECONDS:
            break
    if base is None or base.events_processed is None or at <= base.at:
        return None
    # A rebuild resets the count: no negative rates.
    return max(0.0, (processed - base.events_processed) / (at - base.at))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
