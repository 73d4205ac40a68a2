"""/api/status, /metrics and the event stream over real HTTP, on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from examples.shop.history import generate_orders
from examples.shop.projections import ALL
from prometheus_client.parser import text_string_to_metric_families

from projectionist import Application, ConfigurationError, InvalidInputError
from projectionist.dashboard import Dashboard
from tests.cli_operations_app import PROJECTIONS
from tests.conftest import PG_DSN

from .conftest import TAKER, append_all, faulted_and_taken_over, http_get


def samples(text: str) -> dict[tuple[str, str, str], float]:
    """(sample name, projection, partition) -> value, from the Prometheus text format."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (
                sample.name,
                sample.labels.get("projection", ""),
                sample.labels.get("partition", ""),
            )
            found[key] = sample.value
    return found


async def until(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll an async check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


async def test_api_status_and_metrics_on_postgres(pg_schema: str) -> None:
    application = Application(f"{PG_DSN}?schema={pg_schema}", ALL)
    history = list(generate_orders(30))
    async with application:
        await application.setup()
        await append_all(application, history)
        await application.runner("order_summaries").run_until_caught_up()
        dashboard = Dashboard(application, interval=0.1)
        async with dashboard.serve("127.0.0.1", 0) as url:
            status, content_type, body = await http_get(url + "/api/status")
            assert status == 200 and content_type == "application/json"
            payload = json.loads(body)
            assert payload["error"] is None and payload["interval"] == 0.1
            rows = {row["key"]: row for row in payload["projections"]}
            expected = {s.name: s.as_dict() for s in await application.status()}
            assert set(rows) == set(expected)
            for name, row in rows.items():
                for field in ("state", "position", "head", "lag", "events_processed"):
                    assert row[field] == expected[name][field], (name, field)
            assert rows["order_summaries"]["lag"] == 0
            assert rows["daily_sales"]["lag"] > 100

            status, content_type, text = await http_get(url + "/metrics")
            assert status == 200 and content_type.startswith("text/plain; version=")
            metrics = samples(text)
            assert metrics[("projectionist_status_up", "", "")] == 1
            for name, row in expected.items():
                assert metrics[("projectionist_lag_events", name, "")] == row["lag"]
                assert (
                    metrics[("projectionist_events_processed_total", name, "")]
                    == row["events_processed"]
                )
            assert metrics[("projectionist_events_processed_total", "order_summaries", "")] > 0

            # The next polls see the other projections catch up.
            await application.run_until_caught_up()
            head = str(await application.store.head())

            async def all_caught_up() -> dict[tuple[str, str, str], float] | None:
                found = samples((await http_get(url + "/metrics"))[2])
                lags = [v for k, v in found.items() if k[0] == "projectionist_lag_events"]
                return found if lags and not any(lags) else None

            metrics = await until(all_caught_up)
            assert metrics, "the metrics never showed every projection caught up"
            assert metrics[("projectionist_events_processed_total", "daily_sales", "")] > 0
            payload = json.loads((await http_get(url + "/api/status"))[2])
            assert {row["position"] for row in payload["projections"]} == {head}


async def test_event_stream_sends_a_snapshot_then_each_poll(tmp_path: Path) -> None:
    application = Application(f"sqlite:///{tmp_path / 'shop.db'}", ALL)
    async with application:
        await application.setup()
        await append_all(application, list(generate_orders(10)))
        dashboard = Dashboard(application, interval=0.05, history_seconds=60)
        async with dashboard.serve() as url:
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET /events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            events: list[tuple[str, dict[str, Any]]] = []
            while len(events) < 4:
                line = (await asyncio.wait_for(reader.readline(), 5)).decode()
                if line.startswith("event: "):
                    name = line.removeprefix("event: ").strip()
                    data = (await reader.readline()).decode().removeprefix("data: ")
                    events.append((name, json.loads(data)))
            writer.close()
        assert [name for name, _ in events] == ["snapshot", "status", "status", "status"]
        snapshot = events[0][1]
        assert snapshot["history_seconds"] == 60
        assert set(snapshot["charts"]) == {p.name for p in ALL}
        # Each poll is newer than the last; the charts' samples are [at, lag, lag_s, rate].
        times = [payload["at"] for _, payload in events]
        assert times == sorted(times) and len(set(times[1:])) == 3
        lag = next(r["lag"] for r in events[-1][1]["projections"] if r["name"] == "daily_sales")
        assert snapshot["charts"]["daily_sales"][-1][1] == lag > 0


async def test_a_failing_status_is_shown_and_the_server_stays_up(tmp_path: Path) -> None:
    application = Application(f"sqlite:///{tmp_path / 'shop.db'}", ALL)
    async with application:
        await application.setup()
        dashboard = Dashboard(application, interval=0.05)
        async with dashboard.serve() as url:
            await application.close()  # the store goes away under the dashboard

            async def failing() -> dict[str, Any] | None:
                # A poll under way when the store closed may fail on the store itself
                # (StoreUnavailableError); every poll after it finds the application closed.
                payload = json.loads((await http_get(url + "/api/status"))[2])
                error = payload["error"] or ""
                return payload if error.startswith("ConfigurationError: ") else None

            payload = await until(failing)
            assert payload and "not open" in payload["error"]
            text = (await http_get(url + "/metrics"))[2]
            assert samples(text)[("projectionist_status_up", "", "")] == 0

            await application.open()  # back: the next poll clears the error

            async def recovered() -> dict[str, Any] | None:
                payload = json.loads((await http_get(url + "/api/status"))[2])
                return payload if payload["error"] is None else None

            payload = await until(recovered)
            assert payload and len(payload["projections"]) == len(ALL)
            text = (await http_get(url + "/metrics"))[2]
            assert samples(text)[("projectionist_status_up", "", "")] == 1
            with pytest.raises(urllib.error.HTTPError) as missing:
                await http_get(url + "/static/../server.py")
            assert missing.value.code == 404


async def test_bad_settings_and_a_busy_port_are_clear_errors(tmp_path: Path) -> None:
    application = Application(f"sqlite:///{tmp_path / 'shop.db'}", ALL)
    with pytest.raises(InvalidInputError, match="interval and history must be positive"):
        Dashboard(application, interval=0)
    async with application:
        await application.setup()
        async with Dashboard(application).serve() as url:
            port = int(url.rsplit(":", 1)[1])
            with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{port}"):
                async with Dashboard(application).serve("127.0.0.1", port):
                    pass


async def test_a_faulted_unit_taken_over_keeps_its_fault_errors_and_error(tmp_path: Path) -> None:
    async with Application(f"sqlite:///{tmp_path / 'ops.db'}", PROJECTIONS) as application:
        error = await faulted_and_taken_over(application)
        dashboard = Dashboard(application, interval=0.05)
        await dashboard.poll_once()
        payload = dashboard.status_payload()
    rows = {row["name"]: row for row in payload["projections"]}
    strict = rows["strict"]
    assert (strict["state"], strict["severity"], strict["owner"]) == ("faulted", "bad", TAKER)
    assert strict["errors"] >= 1 and strict["last_error"] == error  # not 0 and None
    assert strict["fault"]["error"] == error and strict["fault"]["event_type"] == "Posted"
    assert error in strict["fault"]["traceback"]
    assert payload["workers"] == [{"id": TAKER, "heartbeat_seconds": ANY, "units": 1}]
    assert rows["lenient"]["severity"] != "bad"
