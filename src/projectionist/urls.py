"""Parsing and redacting store URLs."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, safe for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[2]}"))


def pop_query_option(url: str, name: str) -> tuple[str, str | None]:
    """Remove ``name=value`` from the URL's query string; return the new URL and the value."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    values = [value for key, value in pairs if key == name]
    rest = [(key, value) for key, value in pairs if key != name]
    return urlunsplit(parts._replace(query=urlencode(rest))), (values[-1] if values else None)
