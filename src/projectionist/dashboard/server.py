"""The dashboard's web server: a page, server-sent events, ``/api/status`` and ``/metrics``.

One poller calls ``application.status()`` every ``interval`` seconds and keeps the rows and a
short history; every connected page gets each poll's rows pushed as a server-sent event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

import orjson
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..app import Application
from ..errors import ConfigurationError, InvalidInputError, ProjectionistError
from .history import Row, StatusHistory
from .metrics import metrics_registry, render
from .security import AllowedHosts, Guard

logger = logging.getLogger("projectionist.dashboard")

KEEPALIVE_SECONDS = 15.0
WORKER_SECONDS = 30.0
"""Workers whose last heartbeat is at most this old are listed (as ``health`` counts them)."""
STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere, and the browser is told so.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


class Dashboard:
    """Watches an open Application's status and serves it.

    ``async with dashboard.serve("127.0.0.1", 0) as url:`` serves until the block ends;
    ``await dashboard.serve_until_stopped(...)`` until ``stop()``. The application is opened
    and closed by the caller. ``allowed_hosts``: the names the page may be requested by
    (the ``Host`` header; default: the address it listens on, see ``security``).
    """

    def __init__(
        self,
        application: Application,
        *,
        interval: float = 1.0,
        history_seconds: float = 600.0,
        allowed_hosts: Iterable[str] | None = None,
    ) -> None:
        if not interval > 0 or not history_seconds > 0:
            raise InvalidInputError(
                f"interval and history must be positive, got {interval} and {history_seconds}"
            )
        self.allowed_hosts = (
            None if allowed_hosts is None else AllowedHosts.configured(allowed_hosts)
        )
        self.application = application
        self.interval = interval
        self.history = StatusHistory(history_seconds, interval)
        self.poll_error: str | None = None
        self.workers: list[dict[str, Any]] = []
        self._version = 0
        self._updated = asyncio.Event()
        self._stopping = asyncio.Event()
        self._registry = metrics_registry(self._metrics_snapshot)
        self.asgi = Starlette(
            routes=[
                Route("/", self._page),
                Route("/static/{name}", self._static),
                Route("/events", self._events),
                Route("/api/status", self._api_status),
                Route("/metrics", self._metrics),
            ],
            lifespan=self._lifespan,
        )

    # -- polling ----------------------------------------------------------------------------

    async def poll_once(self) -> None:
        """Read the status once; a failure is kept and shown, the poller goes on."""
        try:
            statuses = await self.application.status()
        except Exception as exc:  # noqa: BLE001 - whatever a poll raises, the page must stay up
            message = f"{type(exc).__name__}: {exc}"
            if message != self.poll_error:
                logger.warning(
                    "status poll failed: %s", message, extra={"action": "dashboard_poll_failed"}
                )
            self.poll_error = message
        else:
            rows = self.history.record((s.as_dict() for s in statuses), time.time())
            self.workers = await self._workers(rows)
            self.poll_error = None
        self._version += 1
        updated, self._updated = self._updated, asyncio.Event()
        updated.set()

    async def _workers(self, rows: Sequence[Row]) -> list[dict[str, Any]]:
        """The live workers, each with the units it holds right now."""
        try:
            live = await self.application.live_workers(WORKER_SECONDS)
        except ProjectionistError:  # the workers table missing (set up by an older release)
            return []
        held: dict[str, int] = {}
        for row in rows:
            if isinstance(row.get("owner"), str):
                held[row["owner"]] = held.get(row["owner"], 0) + 1
        return [
            {"id": worker, "heartbeat_seconds": round(age, 3), "units": held.get(worker, 0)}
            for worker, age in live
        ]

    async def _poll_forever(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            await self.poll_once()
            pause = max(0.0, self.interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)

    @asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        await self.poll_once()  # the first page and scrape already have data
        poller = asyncio.create_task(self._poll_forever())
        try:
            yield
        finally:
            self.stop()
            await poller

    def stop(self) -> None:
        """End the server, its poller and every open event stream."""
        self._stopping.set()

    # -- payloads ---------------------------------------------------------------------------

    def _metrics_snapshot(self) -> tuple[Sequence[Mapping[str, Any]], bool]:
        return self.history.rows, self.poll_error is None

    def status_payload(self, *, charts: bool = False) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "at": self.history.at,
            "interval": self.interval,
            "history_seconds": self.history.seconds,
            "error": self.poll_error,
            "projections": self.history.rows,
            "workers": self.workers,
        }
        if charts:
            payload["charts"] = self.history.charts()
        return payload

    # -- routes -----------------------------------------------------------------------------

    async def _page(self, _: Request) -> Response:
        return _static_file("index.html")

    async def _static(self, request: Request) -> Response:
        return _static_file(str(request.path_params["name"]))

    async def _api_status(self, _: Request) -> Response:
        return _json(self.status_payload())

    async def _metrics(self, _: Request) -> Response:
        return Response(render(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _events(self, _: Request) -> Response:
        return StreamingResponse(
            self._event_stream(),
            media_type="text/event-stream",
            headers={**SECURITY_HEADERS, "X-Accel-Buffering": "no"},
        )

    async def _event_stream(self) -> AsyncIterator[bytes]:
        """A snapshot with the charts' history first, then each poll's rows."""
        yield _sse("snapshot", self.status_payload(charts=True))
        seen = self._version
        while not self._stopping.is_set():
            updated = self._updated
            if self._version == seen:
                waiters = [asyncio.ensure_future(updated.wait())]
                waiters.append(asyncio.ensure_future(self._stopping.wait()))
                _, pending = await asyncio.wait(
                    waiters, timeout=KEEPALIVE_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in pending:
                    waiter.cancel()
                if self._stopping.is_set():
                    return
                if self._version == seen:
                    yield b": keep-alive\n\n"  # proxies close idle connections
                    continue
            seen = self._version
            yield _sse("status", self.status_payload())

    # -- serving ----------------------------------------------------------------------------

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on ``host:port`` (0: a free port) while the block runs; yield the base URL."""
        _check_address(host, port)
        hosts = self.allowed_hosts or AllowedHosts.for_address(host)
        listener = _listen(host, port)
        bound_port = listener.getsockname()[1]
        config = uvicorn.Config(
            Guard(self.asgi, hosts),
            log_config=None,  # the library configures no logging
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        server = _Server(config)
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        try:
            while not server.started:
                if serving.done():
                    serving.result()  # the start-up failed: raise why
                    raise ConfigurationError(f"the dashboard did not start on {host}:{port}")
                await asyncio.sleep(0.01)
            yield f"http://{_url_host(host)}:{bound_port}"
        finally:
            self.stop()
            server.should_exit = True
            await serving
            listener.close()

    async def serve_until_stopped(
        self, host: str, port: int, ready: Callable[[str], None] | None = None
    ) -> None:
        """Serve until ``stop()``; ``ready(url)`` is called once the page can be loaded."""
        async with self.serve(host, port) as url:
            if ready is not None:
                ready(url)
            await self._stopping.wait()


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: the caller decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _check_address(host: object, port: object) -> None:
    if not isinstance(host, str):
        raise ConfigurationError(f"the dashboard's host must be a string, not {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"the dashboard's port must be 0 to 65535, got {port!r}")


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        listener = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        listener.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from exc
    listener.setblocking(False)
    return listener


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _static_file(name: str) -> Response:
    media_type = STATIC_TYPES.get(name)
    if media_type is None:  # only the known assets: no path is ever built from the request
        return Response("not found", status_code=404, media_type="text/plain")
    body = files(__package__).joinpath("static", name).read_bytes()
    return Response(body, headers={**SECURITY_HEADERS, "Content-Type": media_type})


def _json(payload: Mapping[str, Any]) -> Response:
    return Response(
        orjson.dumps(payload), media_type="application/json", headers={"Cache-Control": "no-store"}
    )


def _sse(event: str, payload: Mapping[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


__all__ = ["Dashboard", "Row"]
