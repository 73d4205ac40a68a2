"""Parsing and redacting store URLs."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_OPTIONS = {"password", "sslpassword"}
# A libpq key=value connection string: a value is 'quoted' (with \' escapes) or unspaced.
_KEY_VALUE_SECRET = re.compile(
    r"\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)", re.IGNORECASE
)


def is_key_value_dsn(url: str) -> bool:
    """Whether ``url`` is a libpq ``host=... password=...`` string rather than a URL."""
    return "://" not in url and "=" in url


def redact_url(url: str) -> str:
    """The URL with its passwords (in the user part or the query) replaced by ``***``;
    a libpq key=value string gets its ``password=`` values replaced likewise."""
    if is_key_value_dsn(url):
        return _KEY_VALUE_SECRET.sub(r"\1***", url)
    try:
        parts = original = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(key in _SECRET_OPTIONS for key, _ in pairs):
        hidden = [(key, "***" if key in _SECRET_OPTIONS else value) for key, value in pairs]
        parts = parts._replace(query=urlencode(hidden, safe="*"))
    # Unchanged as given when there is nothing to hide (urlunsplit would turn memory:// into
    # memory:).
    return url if parts == original else urlunsplit(parts)


def pop_query_option(url: str, name: str) -> tuple[str, str | None]:
    """Remove ``name=value`` from the URL's query string; return the new URL and the value."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    values = [value for key, value in pairs if key == name]
    rest = [(key, value) for key, value in pairs if key != name]
    return urlunsplit(parts._replace(query=urlencode(rest))), (values[-1] if values else None)
