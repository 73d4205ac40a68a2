"""What the dashboard does to every request before a route sees it: the ``Host`` check and
the headers every response carries.

The ``Host`` check defeats DNS rebinding: a page of another site whose name is re-pointed at
this address would make the browser send that site's name as ``Host``, and is refused.
Allowed by default are the address the dashboard listens on and, on a loopback address,
``localhost``; on a wildcard address (``0.0.0.0``, ``::``) any IP literal and this machine's
own names. A configured list (``allowed_hosts``, ``--allowed-host``,
``PROJECTIONIST_DASHBOARD_ALLOWED_HOSTS``) replaces the default; ``*`` allows any name.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigurationError

EVERY_RESPONSE_HEADERS: Sequence[tuple[bytes, bytes]] = [(b"x-content-type-options", b"nosniff")]
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


class AllowedHosts:
    """Which ``Host`` header names the dashboard answers."""

    def __init__(self, names: Iterable[str], *, ip_literals: bool = False) -> None:
        self.names = frozenset(_normal(name) for name in names)
        self.ip_literals = ip_literals

    @classmethod
    def configured(cls, names: Iterable[str]) -> AllowedHosts:
        listed = [name.strip() for name in names if name.strip()]
        for name in listed:
            if any(c in name for c in "/@ \t") or name.count(":") == 1:
                raise ConfigurationError(
                    f"allowed host {name!r} must be a host name or an address, without a port"
                )
        if not listed:
            raise ConfigurationError("the allowed hosts list is empty: name at least one")
        return cls(listed)

    @classmethod
    def for_address(cls, host: str) -> AllowedHosts:
        """The default for a dashboard listening on ``host``."""
        if host in WILDCARDS:
            own = {socket.gethostname(), socket.getfqdn(), *LOOPBACK_NAMES}
            return cls(own, ip_literals=True)
        if _is_loopback(host):
            return cls({host, *LOOPBACK_NAMES})
        return cls({host})

    def allows(self, header: str | None) -> bool:
        if header is None:
            return False
        name = _host_name(header)
        if "*" in self.names or name in self.names:
            return True
        return self.ip_literals and _is_ip(name)


class Guard:
    """ASGI middleware: refuse a request for another host (400); add the headers of
    ``EVERY_RESPONSE_HEADERS`` to every response, refusals and errors included."""

    def __init__(self, app: ASGIApp, hosts: AllowedHosts) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [h for h in EVERY_RESPONSE_HEADERS if h[0] not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        if not self.hosts.allows(_header(scope, b"host")):
            await _refuse(send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


async def _refuse(send: Send) -> None:
    body = b"invalid Host header: this dashboard does not answer for that name\n"
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


def _host_name(header: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``::1``."""
    header = header.strip()
    if header.startswith("["):
        return _normal(header[1:].partition("]")[0])
    return _normal(header.rpartition(":")[0] if header.count(":") == 1 else header)


def _normal(name: str) -> str:
    return name.strip().strip("[]").rstrip(".").lower()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
