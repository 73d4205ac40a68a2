"""The settings of a JetStream source checked: its URL (and what of it may be shown), and
its durations."""

from __future__ import annotations

from urllib.parse import urlsplit

from ...errors import ConfigurationError
from ...urls import redact_url


def checked_url(url: object) -> str:
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"the NATS URL must be a string, got {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError as exc:
        raise ConfigurationError(f"invalid NATS URL {redacted(url)}: {exc}") from exc
    if parts.scheme not in ("nats", "tls") or not parts.hostname:
        raise ConfigurationError(
            f"invalid NATS URL {redacted(url)}: use nats://host:port (or tls://host:port)"
        )
    return url


def redacted(url: str) -> str:
    """The URL without its password, nor a token given as the user (nats://TOKEN@host)."""
    shown = redact_url(url)
    try:
        parts = urlsplit(shown)
    except ValueError:
        return "<unparsable URL>"
    if parts.username and parts.password is None:
        return parts._replace(netloc=f"***@{parts.netloc.rpartition('@')[2]}").geturl()
    return shown


def positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)
