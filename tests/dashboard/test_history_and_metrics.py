"""The dashboard's memory and metrics, fed full status rows and rows with few fields."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from projectionist.dashboard import StatusHistory, metrics_registry, row_key
from projectionist.dashboard.metrics import render

# The fields a status row carries once workers, partitions and error policies report them.
FULL_ROW: dict[str, Any] = {
    "name": "orders",
    "kind": "async",
    "version": 2,
    "partition": "1/4",
    "state": "catching up",
    "detail": None,
    "state_text": "catching up",
    "severity": "warn",
    "owner": "worker-a",
    "position": "0/950",
    "head": "0/1000",
    "lag": 50,
    "lag_seconds": 1.5,
    "events_per_second": 420.0,
    "events_processed": 900,
    "last_batch_seconds": 0.012,
    "errors": 3,
    "last_error": "HandlerError: boom",
    "dead_letters": 2,
    "parked_streams": 1,
    "updated_at": "2026-01-01T00:00:00+00:00",
    "held_back_seconds": 4.0,
    "held_back_by": "transaction of pid 7 (idle in transaction, open 9.0s)",
}
TODAY_ROW: dict[str, Any] = {
    "name": "daily",
    "kind": "async",
    "version": 1,
    "state": "behind",
    "position": "0/10",
    "head": "0/1000",
    "lag": 990,
    "events_processed": 10,
    "updated_at": None,
}


def metric_samples(text: str) -> dict[tuple[str, str, str], float]:
    return {
        (s.name, s.labels.get("projection", ""), s.labels.get("partition", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_rows_are_keyed_by_name_and_partition() -> None:
    assert row_key(FULL_ROW) == "orders[1/4]"
    assert row_key(TODAY_ROW) == "daily"
    assert row_key({**TODAY_ROW, "partition": None}) == "daily"


def test_metrics_carry_every_field_the_status_has() -> None:
    history = StatusHistory()
    history.record([FULL_ROW, {**FULL_ROW, "partition": "2/4", "errors": 0}, TODAY_ROW], 100.0)
    registry = metrics_registry(lambda: (history.rows, True))
    found = metric_samples(render(registry).decode())
    assert found[("projectionist_status_up", "", "")] == 1
    assert found[("projectionist_events_processed_total", "orders", "1/4")] == 900
    assert found[("projectionist_lag_events", "orders", "1/4")] == 50
    assert found[("projectionist_lag_seconds", "orders", "1/4")] == 1.5
    assert found[("projectionist_last_batch_seconds", "orders", "1/4")] == 0.012
    assert found[("projectionist_errors_total", "orders", "1/4")] == 3
    assert found[("projectionist_errors_total", "orders", "2/4")] == 0
    assert found[("projectionist_dead_letters", "orders", "1/4")] == 2
    assert found[("projectionist_parked_streams", "orders", "1/4")] == 1
    assert found[("projectionist_held_back_seconds", "orders", "1/4")] == 4.0
    # Today's rows have no partition (label "") and only the fields they carry.
    assert found[("projectionist_lag_events", "daily", "")] == 990
    assert found[("projectionist_events_processed_total", "daily", "")] == 10
    assert ("projectionist_lag_seconds", "daily", "") not in found
    assert ("projectionist_errors_total", "daily", "") not in found


def test_each_unit_state_is_a_labelled_sample() -> None:
    faulted = {**FULL_ROW, "partition": "2/4", "state": "faulted", "severity": "bad"}
    registry = metrics_registry(lambda: ([FULL_ROW, faulted, TODAY_ROW], True))
    states = {
        (s.labels["projection"], s.labels["partition"], s.labels["state"], s.labels["severity"])
        for family in text_string_to_metric_families(render(registry).decode())
        for s in family.samples
        if s.name == "projectionist_unit_state" and s.value == 1
    }
    # A row without a severity (not from this version's status) gets no state sample.
    assert states == {("orders", "1/4", "catching up", "warn"), ("orders", "2/4", "faulted", "bad")}


def test_a_failed_poll_reads_as_down_and_each_registry_is_its_own() -> None:
    down = metric_samples(render(metrics_registry(lambda: ([], False))).decode())
    assert down == {("projectionist_status_up", "", ""): 0}
    up = metric_samples(render(metrics_registry(lambda: ([TODAY_ROW], True))).decode())
    assert up[("projectionist_lag_events", "daily", "")] == 990


def test_the_rate_is_reported_or_derived_from_processed_events() -> None:
    history = StatusHistory(seconds=600, interval=1)
    assert history.record([TODAY_ROW], 0.0)[0]["rate"] is None  # one sample: no rate yet
    history.record([{**TODAY_ROW, "events_processed": 110}], 1.0)
    rows = history.record([{**TODAY_ROW, "events_processed": 310}], 2.0)
    assert rows[0]["rate"] == 150.0  # (310 - 10) / 2 s
    # Over the last 5 s only: the burst at the start no longer counts at t=8.
    for at in range(3, 9):
        rows = history.record([{**TODAY_ROW, "events_processed": 310}], float(at))
    assert rows[0]["rate"] == 0.0
    # A rebuild resets the count: the rate is 0, never negative.
    rows = history.record([{**TODAY_ROW, "events_processed": 5}], 9.0)
    assert rows[0]["rate"] == 0.0
    # A rate the status reports wins.
    assert history.record([FULL_ROW], 10.0)[0]["rate"] == 420.0


def test_the_history_is_a_ring_of_the_last_seconds_and_forgets_removed_rows() -> None:
    history = StatusHistory(seconds=10, interval=1)
    for at in range(30):
        history.record([{**TODAY_ROW, "lag": at}, FULL_ROW], float(at))
    samples = history.samples("daily")
    assert [s.at for s in samples] == [float(at) for at in range(19, 30)]
    assert samples[-1].lag == 29 and samples[-1].lag_seconds is None
    assert history.samples("orders[1/4]")[-1].lag_seconds == 1.5
    charts = history.charts()
    assert charts["daily"][-1] == [29.0, 29, None, 0.0]
    history.record([TODAY_ROW], 30.0)
    assert set(history.charts()) == {"daily"}


def test_values_of_the_wrong_type_are_left_out() -> None:
    odd = {**TODAY_ROW, "lag": "lots", "events_processed": True, "lag_seconds": "1"}
    history = StatusHistory()
    rows = history.record([odd], 1.0)
    assert rows[0]["rate"] is None and history.samples("daily")[0].lag is None
    found = metric_samples(render(metrics_registry(lambda: (history.rows, True))).decode())
    assert set(found) == {("projectionist_status_up", "", "")}
