"""Validation and quoting of names that reach SQL as identifiers (schemas, tables)."""

from __future__ import annotations

import re

from .errors import InvalidInputError

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
MAX_IDENTIFIER_LENGTH = 48  # leaves room for prefixes within PostgreSQL's 63-byte limit


def validate_identifier(value: object, what: str = "identifier") -> str:
    """Return ``value`` if it is a safe lower-case SQL identifier, else raise InvalidInputError."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise InvalidInputError(
            f"invalid {what} {value!r}: use lower-case letters, digits and underscores, "
            "starting with a letter or underscore"
        )
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise InvalidInputError(
            f"invalid {what} {value!r}: at most {MAX_IDENTIFIER_LENGTH} characters"
        )
    return value


def quote_identifier(value: str) -> str:
    """Quote a validated identifier for SQL (validation makes the quoting a formality)."""
    return '"' + validate_identifier(value).replace('"', '""') + '"'
