"""What the dashboard exposes: only to requests for its own name (the ``Host`` check against
DNS rebinding), with ``nosniff`` on every response, never another database's query text,
and a port out of range is refused before anything listens."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import asyncpg
import pytest
from examples.shop.projections import ALL

from projectionist import Application, ConfigurationError, NewEvent
from projectionist.backends.postgres.statements import STORE_LOCK_CLASS
from projectionist.dashboard import Dashboard
from tests.conftest import PG_DSN

from .conftest import dashboard_process

PATHS = ("/", "/static/app.js", "/static/style.css", "/api/status", "/metrics", "/nowhere")


async def request(url: str, path: str, host: str | None) -> tuple[int, dict[str, str], str]:
    """A GET with the ``Host`` header given (None: none at all, as HTTP/1.0, which may omit
    it): status, headers, body. The event stream is read up to its first event."""
    address, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(address.strip("[]"), int(port))
    lines = [f"GET {path} HTTP/{'1.0' if host is None else '1.1'}", "Connection: close"]
    if host is not None:
        lines.append(f"Host: {host}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
    status_line, *header_lines = head.strip().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if path == "/events":
        body = (await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)).decode()
    else:
        body = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    return int(status_line.split()[1]), headers, body


async def test_only_its_own_names_are_answered_and_every_response_says_nosniff(
    tmp_path: Path,
) -> None:
    async with Application(f"sqlite:///{tmp_path / 'shop.db'}", ALL) as application:
        await application.setup()
        async with Dashboard(application, interval=0.05).serve("127.0.0.1", 0) as url:
            port = url.rsplit(":", 1)[1]
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", "[::1]"):
                for path in (*PATHS, "/events"):
                    status, headers, _ = await request(url, path, host)
                    assert status == (404 if path == "/nowhere" else 200), (host, path)
                    assert headers.get("x-content-type-options") == "nosniff", (host, path)
            # A rebinding page sends its own name; a client may send none.
            for refused in (f"evil.example:{port}", "evil.example", "127.0.0.2", "", None):
                for path in PATHS:
                    status, headers, body = await request(url, path, refused)
                    assert status == 400 and "invalid Host header" in body, (refused, path)
                    assert headers.get("x-content-type-options") == "nosniff"
                    assert "projections" not in body


async def test_a_configured_list_replaces_the_default(tmp_path: Path) -> None:
    async with Application(f"sqlite:///{tmp_path / 'shop.db'}", ALL) as application:
        await application.setup()
        dashboard = Dashboard(application, allowed_hosts=["dash.internal", "10.0.0.7"])
        async with dashboard.serve("127.0.0.1", 0) as url:
            assert (await request(url, "/api/status", "dash.internal:8000"))[0] == 200
            assert (await request(url, "/api/status", "DASH.internal."))[0] == 200
            assert (await request(url, "/api/status", "10.0.0.7"))[0] == 200
            assert (await request(url, "/api/status", "127.0.0.1"))[0] == 400
        anyone = Dashboard(application, allowed_hosts=["*"])
        async with anyone.serve("127.0.0.1", 0) as url:
            assert (await request(url, "/api/status", "whatever.example"))[0] == 200
        async with Dashboard(application).serve("0.0.0.0", 0) as url:
            local = url.replace("0.0.0.0", "127.0.0.1")
            assert (await request(local, "/api/status", "192.0.2.10:80"))[0] == 200
            assert (await request(local, "/api/status", "[2001:db8::1]:80"))[0] == 200
            assert (await request(local, "/api/status", "evil.example"))[0] == 400


async def test_bad_addresses_and_lists_are_configuration_errors(tmp_path: Path) -> None:
    async with Application(f"sqlite:///{tmp_path / 'shop.db'}", ALL) as application:
        for port in (70000, -1, 65536, True, "8000", 80.0):
            with pytest.raises(ConfigurationError, match="port must be 0 to 65535"):
                async with Dashboard(application).serve("127.0.0.1", port):  # type: ignore[arg-type]
                    pass
        for names, message in (([], "list is empty"), (["a.example:80"], "without a port")):
            with pytest.raises(ConfigurationError, match=message):
                Dashboard(application, allowed_hosts=names)


async def test_the_command_takes_the_allowed_hosts_from_its_environment(tmp_path: Path) -> None:
    env = {
        "PROJECTIONIST_URL": f"sqlite:///{tmp_path / 'shop.db'}",
        "PROJECTIONIST_DASHBOARD_ALLOWED_HOSTS": "dash.internal,ops.internal",
    }
    async with dashboard_process(
        "--app", "examples.shop.app:app", env=env, log=tmp_path / "stderr.log"
    ) as dashboard:
        assert (await request(dashboard.url, "/api/status", "ops.internal"))[0] == 200
        assert (await request(dashboard.url, "/api/status", "127.0.0.1"))[0] == 400


async def test_no_query_text_of_this_or_another_database_is_shown(pg_schema: str) -> None:
    """An appending transaction holds events back; another database's transaction takes
    the same advisory lock first. The page names the holder in this database, by pid, and
    no query text of either."""
    other_db = f"i12e_other_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_DSN)
    await admin.execute(f'CREATE DATABASE "{other_db}"')
    application = Application(f"{PG_DSN}?schema={pg_schema}", ALL)
    other = await asyncpg.connect(PG_DSN.rsplit("/", 1)[0] + "/" + other_db)
    ours = await asyncpg.connect(PG_DSN)
    try:
        async with application:
            await application.setup()
            key = await ours.fetchval(f'SELECT "{pg_schema}".store_lock_key()::oid::bigint')
            await other.execute("BEGIN")
            await other.execute(
                f"SELECT pg_advisory_xact_lock_shared({STORE_LOCK_CLASS}, {key}::oid::int)"
                " /* other-database-secret */"
            )
            await ours.transaction().start()
            await application.store.append_on(ours, "a", [NewEvent("Open", {})])
            await ours.execute("SELECT 'our-own-secret'")
            await application.store.append("b", [NewEvent("Behind", {})])
            pid = await ours.fetchval("SELECT pg_backend_pid()")
            dashboard = Dashboard(application, interval=0.05)
            async with dashboard.serve() as url:
                shown = ""
                for path in ("/api/status", "/metrics", "/"):
                    shown += (await request(url, path, "127.0.0.1"))[2]
                rows = json.loads((await request(url, "/api/status", "127.0.0.1"))[2])
            [held] = {row["held_back_by"] for row in rows["projections"]}
            assert held.startswith(f"transaction of pid {pid} (idle in transaction"), held
            assert "secret" not in shown
    finally:
        await ours.close()
        await other.close()
        await admin.execute(f'DROP DATABASE "{other_db}" WITH (FORCE)')
        await admin.close()
