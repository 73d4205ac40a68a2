"""Full-text search read models: documents built from events, ranked by relevance.

A ``SearchProjection`` is an ordinary projection (setup, teardown, rebuilds, the runner)
whose read model is a search index: one document per key, with weighted text fields and a
few stored fields to show in results. On PostgreSQL the document's ``tsvector`` is a
generated column with a GIN index, queries go through ``websearch_to_tsquery`` and hits are
ranked with ``ts_rank_cd``; on SQLite (and the memory backend) an FTS5 table follows the
documents through triggers and hits are ranked with ``bm25()``, with the same field weights.

    products = SearchProjection(
        "product_search", table="product_search", key="sku",
        text={"name": "A", "description": "B"}, stored=["price"],
    )

    @products.upsert("ProductListed", "ProductUpdated", "ProductPriceChanged")
    def fields(event: RecordedEvent) -> Mapping[str, object]:
        return event.data  # the fields an event names are set; the others are kept

    products.delete("ProductDelisted")

    hits = await search(app.read_models, products, "dark chocolate", limit=10)

Replays are safe: each document remembers the global position of the last event applied to
it, so an event at or before that position (a duplicate delivery, a replay) changes nothing,
and a deleted document stays behind as a tombstone that older events cannot resurrect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, Unpack, overload

import orjson

from .errors import ConfigurationError, HandlerError, InvalidInputError
from .events import Position, RecordedEvent
from .identifiers import quote_identifier, validate_identifier
from .payloads import Event, typed_events
from .projection import Projection, ProjectionOptions, ProjectionOptionsDict, failure
from .readmodel import ReadModelStore, ReadModelTransaction
from .search_index import SearchQueryError, Syntax, engine_for, fts_table, websearch_to_fts5
from .state import KeyOf, key_function

__all__ = [
    "MAX_LIMIT",
    "MAX_QUERY_LENGTH",
    "WEIGHTS",
    "SearchHit",
    "SearchProjection",
    "SearchQueryError",
    "Syntax",
    "search",
    "websearch_to_fts5",
]

Fields = Mapping[str, object]
ToFields = Callable[[RecordedEvent], Fields]
P = TypeVar("P")
TypedToFields = Callable[[Event[P]], Fields]

WEIGHTS = ("A", "B", "C", "D")
_RESERVED = frozenset(
    {"id", "position_tx", "position_seq", "deleted", "stored", "document", "doc_rowid"}
)
MAX_QUERY_LENGTH = 1000
MAX_LIMIT = 10_000
_DELETE = object()


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One search result: the document's id, its rank (higher is better; ranks compare
    within one result list, not across backends) and its text and stored fields."""

    id: str
    rank: float
    fields: dict[str, Any]


@dataclass(slots=True)
class _Document:
    position: Position
    deleted: bool
    text: dict[str, str | None] = field(default_factory=dict)
    stored: dict[str, Any] = field(default_factory=dict)


class SearchProjection(Projection):
    """A full-text search index as a projection; see the module documentation.

    ``text`` maps each searchable field to its weight, ``"A"`` (highest) to ``"D"``;
    ``stored`` names fields kept with each document and returned in hits (any JSON value).
    ``key`` is the document id of an event: the stream id (default), a field of its data,
    or a function. ``language`` picks stemming: a PostgreSQL text search configuration
    (``"english"``, ``"simple"``, ...); on SQLite ``"english"`` uses the porter stemmer and
    anything else no stemming. Changing fields or language needs a new ``version``. It
    takes every projection option (``ProjectionOptions``): partitions, error policy, start.
    """

    def __init__(
        self,
        name: str,
        *,
        table: str,
        text: Mapping[str, str],
        stored: Iterable[str] = (),
        key: str | KeyOf = "stream_id",
        language: str = "english",
        options: ProjectionOptions | None = None,
        **settings: Unpack[ProjectionOptionsDict],
    ) -> None:
        table = validate_identifier(table, "search table name")
        # The FTS5 table exists on SQLite only.
        super().__init__(name, tables=[table, fts_table(table)], options=options, **settings)
        self.table = table
        self.text = _validate_text_fields(name, text)
        self.stored = _validate_stored_fields(name, stored, self.text)
        self.language = validate_identifier(language, "text search language")
        self.key_of = key_function(key)
        self._actions: dict[str, ToFields | object] = {}
        self.setup(self._create)

    @overload
    def upsert(self, *types: str) -> Callable[[ToFields], ToFields]: ...
    @overload
    def upsert(
        self, *types: str, payload: type[P]
    ) -> Callable[[TypedToFields[P]], TypedToFields[P]]: ...
    def upsert(self, *types: str, payload: type[Any] | None = None) -> Callable[[Any], Any]:
        """Register ``fields(event) -> {field: value}`` for ``types``: the fields it returns
        are set on the event's document (created if new); fields it leaves out keep their
        values. Keys that are neither text nor stored fields are ignored, so returning
        ``event.data`` works. With ``payload=T`` it receives ``Event[T]`` (the document's
        key is still taken from the event as stored)."""
        typed = None if payload is None else typed_events(payload, f"projection {self.name!r}")

        def register(function: Callable[[Any], Fields]) -> Callable[[Any], Fields]:
            self._declare(types, function if typed is None else _decoding(function, typed))
            return function

        return register

    def delete(self, *types: str) -> None:
        """Events of ``types`` remove their document from the index."""
        self._declare(types, _DELETE)

    def _declare(self, types: tuple[str, ...], action: ToFields | object) -> None:
        self.handles(*types)  # validates the types; only these are read
        for type_ in types:
            self._actions[type_] = action

    async def search(
        self,
        source: ReadModelTransaction | ReadModelStore,
        query: str,
        *,
        limit: int = 10,
        syntax: Syntax = "websearch",
    ) -> list[SearchHit]:
        """The best ``limit`` documents for ``query``, best first; see :func:`search`."""
        return await search(source, self, query, limit=limit, syntax=syntax)

    # -- applying events -------------------------------------------------------------------

    async def apply(self, events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        actions = self._actions
        keyed = [(self._key(event), event) for event in events if event.type in actions]
        if not keyed:
            return
        documents = await self._load(tx, list(dict.fromkeys(key for key, _ in keyed)))
        touched: dict[str, _Document] = {}
        for key, event in keyed:
            current = documents.get(key)
            if current is not None and event.position <= current.position:
                continue  # applied before: a duplicate delivery or a replay
            action = actions[event.type]
            if action is _DELETE:
                document = _Document(event.position, deleted=True)
            else:
                changes = self._fields(event, action)  # type: ignore[arg-type]
                document = _merge(current, event.position, changes, self.text, self.stored)
            documents[key] = touched[key] = document
        await self._write(tx, touched)

    def _key(self, event: RecordedEvent) -> str:
        try:
            key = self.key_of(event)
            if not isinstance(key, str) or not key:
                raise InvalidInputError(f"document id must be a non-empty string, not {key!r}")
        except Exception as exc:
            raise HandlerError(self.name, event, failure(self.name, event, exc)) from exc
        return key

    def _fields(self, event: RecordedEvent, to_fields: ToFields) -> Fields:
        try:
            changes = to_fields(event)
            if not isinstance(changes, Mapping):
                raise InvalidInputError(
                    f"the upsert function must return a mapping, not {type(changes).__name__}"
                )
            for name in self.text:
                value = changes.get(name)
                if value is not None and not isinstance(value, str):
                    raise InvalidInputError(
                        f"text field {name!r} must be a string or None, not {value!r}"
                    )
            try:  # stored fields go to the read model as JSON
                orjson.dumps({name: changes[name] for name in self.stored if name in changes})
            except TypeError as exc:
                raise InvalidInputError(f"stored fields are not JSON-serializable: {exc}") from exc
            return changes
        except Exception as exc:
            raise HandlerError(self.name, event, failure(self.name, event, exc)) from exc

    # -- storage ---------------------------------------------------------------------------

    async def _create(self, tx: ReadModelTransaction) -> None:
        await engine_for(tx).create(tx, self)

    async def _load(self, tx: ReadModelTransaction, keys: list[str]) -> dict[str, _Document]:
        table = quote_identifier(self.table)
        text = ", ".join(quote_identifier(name) for name in self.text)
        rows = await tx.fetch(
            f"SELECT id, position_tx, position_seq, deleted, stored{tx.sql.document_as_text}, "
            f"{text} FROM {table} WHERE {tx.sql.is_one_of('id', '$1')}",
            tx.sql.text_list(keys),
        )
        return {
            row[0]: _Document(
                Position(row[1], row[2]),
                bool(row[3]),
                dict(zip(self.text, row[5:], strict=True)),
                orjson.loads(row[4]),
            )
            for row in rows
        }

    async def _write(self, tx: ReadModelTransaction, documents: dict[str, _Document]) -> None:
        if not documents:
            return
        columns = ["id", "position_tx", "position_seq", "deleted", "stored"]
        columns += [quote_identifier(name) for name in self.text]
        marks = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
        updates = ", ".join(f"{column} = excluded.{column}" for column in columns[1:])
        await tx.executemany(
            f"INSERT INTO {quote_identifier(self.table)} ({', '.join(columns)}) "
            f"VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET {updates}",
            [
                (
                    key,
                    document.position.tx,
                    document.position.seq,
                    document.deleted,
                    orjson.dumps(document.stored, option=orjson.OPT_SORT_KEYS).decode(),
                    *(document.text.get(name) for name in self.text),
                )
                for key, document in documents.items()
            ],
        )


def _decoding(
    function: Callable[[Any], Fields], typed: Callable[[RecordedEvent], Event[Any]]
) -> ToFields:
    """The upsert function given its event decoded; a payload that does not validate
    raises where the function would, as its failure."""

    def decoded(event: RecordedEvent) -> Fields:
        return function(typed(event))

    return decoded


def _merge(
    current: _Document | None,
    position: Position,
    changes: Fields,
    text: Mapping[str, str],
    stored: tuple[str, ...],
) -> _Document:
    """The document after an upsert: the fields named in ``changes`` set, the others kept
    (a deleted document starts again from nothing); other keys of ``changes`` are ignored."""
    base = current if current is not None and not current.deleted else _Document(position, False)
    merged_text = dict(base.text)
    merged_stored = dict(base.stored)
    for name, value in changes.items():
        if name in text:
            merged_text[name] = value  # type: ignore[assignment]  # checked in _fields
        elif name in stored:
            merged_stored[name] = value
    return _Document(position, False, merged_text, merged_stored)


# -- querying --------------------------------------------------------------------------------


async def search(
    source: ReadModelTransaction | ReadModelStore,
    index: SearchProjection,
    query: str,
    *,
    limit: int = 10,
    syntax: Syntax = "websearch",
) -> list[SearchHit]:
    """The best ``limit`` documents of ``index`` for ``query``, best first (ties by id).

    ``source`` is an open read-model transaction, or a read-model store (``app.read_models``)
    to open one. With ``syntax="websearch"`` (the default) the query reads like a search
    box on both backends: words (all must match), ``"quoted phrases"``, ``or`` between
    alternatives, ``-word`` to exclude; it cannot be malformed. With ``syntax="native"`` it
    goes to the database as it is: ``to_tsquery`` on PostgreSQL (``dark & choc:*``), FTS5
    query syntax on SQLite (``dark AND choc*``); a malformed one raises SearchQueryError.
    A query with nothing to find (empty, blank, only punctuation, only ``-exclusions``)
    returns [] without asking the database. (One difference remains: on SQLite an ``or``
    alternative made only of exclusions is dropped, on PostgreSQL it matches.)
    """
    if not isinstance(index, SearchProjection):
        raise InvalidInputError(f"search needs a SearchProjection, not {type(index).__name__}")
    text = _validate_query(query)
    limit = _validate_limit(limit)
    if syntax not in ("websearch", "native"):
        raise InvalidInputError(f"syntax must be 'websearch' or 'native', not {syntax!r}")
    if not text or (syntax == "websearch" and not websearch_to_fts5(text)):
        return []  # nothing to find; on PostgreSQL "-word" alone would match everything else
    if isinstance(source, ReadModelStore):
        async with source.transaction() as tx:
            return await _search(tx, index, text, limit, syntax)
    if isinstance(source, ReadModelTransaction):
        return await _search(source, index, text, limit, syntax)
    raise InvalidInputError(
        f"search needs a ReadModelTransaction or ReadModelStore, not {type(source).__name__}"
    )


async def _search(
    tx: ReadModelTransaction, index: SearchProjection, query: str, limit: int, syntax: Syntax
) -> list[SearchHit]:
    rows = await engine_for(tx).query(tx, index, query, limit, syntax)
    return [
        SearchHit(
            row[0],
            float(row[1]),
            {**dict(zip(index.text, row[3:], strict=True)), **orjson.loads(row[2])},
        )
        for row in rows
    ]


# -- validation ------------------------------------------------------------------------------


def _validate_query(query: object) -> str:
    if not isinstance(query, str):
        raise SearchQueryError(f"a search query must be a string, not {type(query).__name__}")
    if len(query) > MAX_QUERY_LENGTH:
        raise SearchQueryError(
            f"a search query has at most {MAX_QUERY_LENGTH} characters, got {len(query)}"
        )
    if "\x00" in query:
        raise SearchQueryError("a search query must not contain NUL characters")
    try:
        query.encode()
    except UnicodeEncodeError as exc:  # no database can take it as text
        raise SearchQueryError(
            f"a search query must be valid Unicode text; {query!r} holds a lone surrogate"
        ) from exc
    return query.strip()


def _validate_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}")
    return limit


def _validate_text_fields(name: str, text: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(text, Mapping) or not text:
        raise ConfigurationError(f"projection {name!r}: name at least one text field")
    fields: dict[str, str] = {}
    for column, weight in text.items():
        validate_identifier(column, "text field name")
        if column in _RESERVED:
            raise ConfigurationError(
                f"projection {name!r}: {column!r} is reserved; choose another field name"
            )
        if weight not in WEIGHTS:
            raise ConfigurationError(
                f"projection {name!r}: weight of {column!r} must be one of A, B, C, D "
                f"(A ranks highest), not {weight!r}"
            )
        fields[column] = weight
    return fields


def _validate_stored_fields(
    name: str, stored: Iterable[str], text: Mapping[str, str]
) -> tuple[str, ...]:
    if isinstance(stored, str):
        raise ConfigurationError(f"projection {name!r}: stored must be a list of field names")
    fields = tuple(validate_identifier(column, "stored field name") for column in stored)
    overlap = set(fields) & set(text)
    if overlap:
        raise ConfigurationError(
            f"projection {name!r}: {sorted(overlap)} cannot be both text and stored fields"
        )
    return fields
