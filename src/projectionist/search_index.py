"""The full-text engines behind search projections: PostgreSQL's ``tsvector``, SQLite's FTS5.

``search.py`` holds what a search read model is (documents, fields, replays) and the query
API; this module holds the SQL of each full-text engine: how the index is created and how a
query is ranked. The backend says which engine its database has (``tx.sql.full_text``); the
engine's SQL errors arrive as our errors (a missing table, a malformed query), translated by
the backend, and become the search's own errors here.
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from .errors import (
    BackendError,
    ConfigurationError,
    InvalidInputError,
    MalformedStatementError,
    MissingTableError,
    UnsupportedFeatureError,
)
from .identifiers import MAX_IDENTIFIER_LENGTH, quote_identifier
from .readmodel import FullText, ReadModelTransaction

Syntax = Literal["websearch", "native"]
Row = tuple[Any, ...]

# PostgreSQL's default ts_rank_cd weights for A..D are 1.0, 0.4, 0.2 and 0.1; bm25() on SQLite
# gets the same ratios, so a field ranks the same against another on both.
_BM25_WEIGHTS = {"A": 10.0, "B": 4.0, "C": 2.0, "D": 1.0}


class SearchQueryError(InvalidInputError):
    """The search query cannot be run: bad native syntax (FTS5 or tsquery), too long, or not
    a string. Nothing was changed; on PostgreSQL a failed query aborts the transaction."""


class IndexedFields(Protocol):
    """What an engine needs to know of a search projection (``SearchProjection`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def text(self) -> Mapping[str, str]: ...
    @property
    def language(self) -> str: ...


class FullTextEngine(abc.ABC):
    """How one database indexes documents' text and ranks them against a query."""

    @abc.abstractmethod
    async def create(self, tx: ReadModelTransaction, index: IndexedFields) -> None:
        """Create the documents table and its index (idempotent)."""

    @abc.abstractmethod
    async def query(
        self, tx: ReadModelTransaction, index: IndexedFields, query: str, limit: int, syntax: Syntax
    ) -> list[Row]:
        """The best ``limit`` rows: id, rank, stored fields (JSON text), the text fields."""


def engine_for(tx: ReadModelTransaction) -> FullTextEngine:
    """The full-text engine of ``tx``'s database."""
    full_text = tx.sql.full_text
    if full_text is None:
        raise ConfigurationError(f"{type(tx).__name__}'s database has no full-text search")
    return _ENGINES[full_text]


def derived_name(table: str, suffix: str) -> str:
    """The name of an object that belongs to ``table`` (its index, FTS5 table, triggers):
    ``table + suffix`` when that is a valid identifier, else the table's start, a digest
    of the whole name and the suffix. Every table name the constructor accepts has them."""
    name = table + suffix
    if len(name) <= MAX_IDENTIFIER_LENGTH:
        return name
    digest = hashlib.md5(table.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{table[: MAX_IDENTIFIER_LENGTH - len(suffix) - 9]}_{digest}{suffix}"


def fts_table(table: str) -> str:
    """SQLite's FTS5 table of the search table ``table``."""
    return derived_name(table, "_fts")


def _text_columns(index: IndexedFields) -> str:
    return ", ".join(f"{quote_identifier(name)} TEXT" for name in index.text)


async def _fetch_hits(
    tx: ReadModelTransaction, index: IndexedFields, sql: str, query: str, limit: int
) -> list[Row]:
    """Run a search statement, its failures in the search's terms."""
    try:
        return await tx.fetch(sql, query, limit)
    except MissingTableError as exc:
        raise BackendError(
            f"search index {index.table!r} does not exist: set up projection {index.name!r} "
            "first (app.setup() or projectionist run)"
        ) from exc
    except MalformedStatementError as exc:  # the database could not parse the query
        raise SearchQueryError(f"invalid search query {query!r}: {exc}") from exc
    except BackendError as exc:
        raise BackendError(f"searching {index.table!r} failed: {exc}") from exc


class TsvectorEngine(FullTextEngine):
    """PostgreSQL: a generated ``tsvector`` column with a GIN index, ranked by ts_rank_cd."""

    async def create(self, tx: ReadModelTransaction, index: IndexedFields) -> None:
        table = quote_identifier(index.table)
        vector = " || ".join(
            f"setweight(to_tsvector('{index.language}'::regconfig, "
            f"coalesce({quote_identifier(name)}, '')), '{weight}')"
            for name, weight in index.text.items()
        )
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, "
            "position_tx BIGINT NOT NULL, position_seq BIGINT NOT NULL, "
            f"deleted BOOLEAN NOT NULL, {_text_columns(index)}, stored JSONB NOT NULL, "
            f"document tsvector GENERATED ALWAYS AS ({vector}) STORED)"
        )
        gin = quote_identifier(derived_name(index.table, "_document"))
        await tx.execute(f"CREATE INDEX IF NOT EXISTS {gin} ON {table} USING GIN (document)")

    async def query(
        self, tx: ReadModelTransaction, index: IndexedFields, query: str, limit: int, syntax: Syntax
    ) -> list[Row]:
        parse = "websearch_to_tsquery" if syntax == "websearch" else "to_tsquery"
        text = ", ".join(quote_identifier(name) for name in index.text)
        sql = (
            f"SELECT id, ts_rank_cd(document, q) AS rank, stored::text, {text} "
            f"FROM {quote_identifier(index.table)}, {parse}('{index.language}'::regconfig, $1) q "
            "WHERE document @@ q AND NOT deleted ORDER BY rank DESC, id LIMIT $2"
        )
        return await _fetch_hits(tx, index, sql, query, limit)


class Fts5Engine(FullTextEngine):
    """SQLite: an external-content FTS5 table kept by triggers, ranked by bm25()."""

    async def create(self, tx: ReadModelTransaction, index: IndexedFields) -> None:
        # An INTEGER PRIMARY KEY keeps rowids stable (VACUUM may renumber implicit ones), and
        # the FTS5 table indexes the documents' text by rowid ("external content").
        table, fts = quote_identifier(index.table), quote_identifier(fts_table(index.table))
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (doc_rowid INTEGER PRIMARY KEY, "
            "id TEXT NOT NULL UNIQUE, position_tx INTEGER NOT NULL, "
            f"position_seq INTEGER NOT NULL, deleted INTEGER NOT NULL, {_text_columns(index)}, "
            "stored TEXT NOT NULL)"
        )
        tokenizer = "porter unicode61 remove_diacritics 2"
        if index.language != "english":
            tokenizer = "unicode61 remove_diacritics 2"
        names = [quote_identifier(name) for name in index.text]
        columns = ", ".join(names)
        try:
            await tx.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts} USING fts5({columns}, "
                f"content={table}, content_rowid='doc_rowid', tokenize='{tokenizer}')"
            )
        except UnsupportedFeatureError as exc:
            raise ConfigurationError(
                f"projection {index.name!r} needs SQLite's FTS5 extension: {exc}"
            ) from exc
        await self._create_triggers(tx, index, names)

    async def _create_triggers(
        self, tx: ReadModelTransaction, index: IndexedFields, names: list[str]
    ) -> None:
        table, fts = quote_identifier(index.table), quote_identifier(fts_table(index.table))
        columns = ", ".join(names)
        new = ", ".join(f"new.{name}" for name in names)
        old = ", ".join(f"old.{name}" for name in names)
        insert = f"INSERT INTO {fts} (rowid, {columns}) VALUES (new.doc_rowid, {new});"
        remove = (
            f"INSERT INTO {fts} ({fts}, rowid, {columns}) VALUES ('delete', old.doc_rowid, {old});"
        )
        for suffix, when, body in [
            ("ai", "AFTER INSERT", insert),
            ("ad", "AFTER DELETE", remove),
            ("au", "AFTER UPDATE", remove + " " + insert),
        ]:
            trigger = quote_identifier(derived_name(index.table, f"_{suffix}"))
            await tx.execute(
                f"CREATE TRIGGER IF NOT EXISTS {trigger} {when} ON {table} BEGIN {body} END"
            )

    async def query(
        self, tx: ReadModelTransaction, index: IndexedFields, query: str, limit: int, syntax: Syntax
    ) -> list[Row]:
        if syntax == "websearch":
            query = websearch_to_fts5(query)
            if not query:
                return []
        table, fts = quote_identifier(index.table), quote_identifier(fts_table(index.table))
        weights = ", ".join(str(_BM25_WEIGHTS[weight]) for weight in index.text.values())
        text = ", ".join(f"d.{quote_identifier(name)}" for name in index.text)
        sql = (
            f"SELECT d.id, -bm25({fts}, {weights}) AS rank, d.stored, {text} "
            f"FROM {fts} JOIN {table} d ON d.doc_rowid = {fts}.rowid "
            f"WHERE {fts} MATCH $1 AND NOT d.deleted ORDER BY rank DESC, d.id LIMIT $2"
        )
        return await _fetch_hits(tx, index, sql, query, limit)


_ENGINES: dict[FullText, FullTextEngine] = {"tsvector": TsvectorEngine(), "fts5": Fts5Engine()}

_TERM = re.compile(r'"([^"]*)"?|(\S+)')
_WORD = re.compile(r"\w")


def websearch_to_fts5(query: str) -> str:
    """Translate search-box syntax into an FTS5 query that cannot be malformed.

    Like PostgreSQL's ``websearch_to_tsquery``: words and ``"phrases"`` must all match,
    ``or`` separates alternatives, ``-term`` excludes. Every term becomes a quoted FTS5
    string, so punctuation and FTS5 keywords are only text. Returns "" when nothing is left
    to search for (a group of only exclusions is dropped: FTS5 cannot match "anything but").
    """
    groups: list[tuple[list[str], list[str]]] = [([], [])]
    for match in _TERM.finditer(query):
        phrase, word = match.group(1), match.group(2)
        if word is not None and word.lower() == "or":
            groups.append(([], []))
            continue
        negated = word is not None and word.startswith("-") and len(word) > 1
        term = phrase if phrase is not None else word.removeprefix("-") if negated else word
        if term is None or not _WORD.search(term):
            continue  # nothing a tokenizer would keep
        quoted = '"' + term.replace('"', '""') + '"'
        groups[-1][1 if negated else 0].append(quoted)
    alternatives = [
        "(" + " ".join(positive) + "".join(f" NOT {term}" for term in negative) + ")"
        for positive, negative in groups
        if positive
    ]
    return " OR ".join(alternatives)
