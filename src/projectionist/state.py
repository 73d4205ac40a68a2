"""State projections: one row (or JSON document) per key, folded per batch, written set-based.

The most common read model is "the current state of each order / customer / day". Declare
the key of each event, an initial state and pure evolve functions; the engine then, per
batch: loads the current state of every key the batch touches in one query, folds the
batch's events in memory in order, and writes only each touched key's final state in one
set-based statement (the read-model transaction's ``bulk_upsert``: on PostgreSQL a COPY
into a temporary table, then one ``INSERT ... ON CONFLICT DO UPDATE``), deletes included, in
the transaction that also moves the checkpoint.

    orders = StateProjection(
        "order_totals", table="order_totals", key_column="order_id",
        columns={"status": "TEXT", "total": "DOUBLE PRECISION"},
        initial=lambda: {"status": "open", "total": 0.0},
    )

    @orders.evolve("ItemAdded")
    def item_added(state: State, event: RecordedEvent) -> State:
        return {**state, "total": state["total"] + event.data["price"]}

Without ``columns`` each key's state is one JSON document (``jsonb`` on PostgreSQL). A column
of type ``"JSON"`` holds any JSON value (lists, nested dicts) the same way.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar, Final, Unpack

import orjson

from .defaults import STATE_BATCH_SIZE
from .errors import ConfigurationError, HandlerError
from .events import RecordedEvent
from .identifiers import quote_identifier, validate_identifier
from .projection import Projection, ProjectionOptions, ProjectionOptionsDict, failure
from .readmodel import ReadModelTransaction

State = dict[str, Any]


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Final = _Delete()
"""Return this from an evolve function to delete the key's row."""

Evolved = State | _Delete
"""What an evolve function returns: the new state, or DELETE."""
Evolve = Callable[[State, RecordedEvent], Evolved]
KeyOf = Callable[[RecordedEvent], str]
_SQL_TYPE = re.compile(r"[A-Za-z][A-Za-z ]*(\(\d+(, ?\d+)?\))?")


class StateProjection(Projection):
    """A projection of one state per key; see the module documentation.

    It takes every projection option (``ProjectionOptions``); its batches default to
    ``STATE_BATCH_SIZE`` events, since each batch writes every touched key once.
    """

    default_options: ClassVar[ProjectionOptions] = ProjectionOptions(batch_size=STATE_BATCH_SIZE)

    def __init__(
        self,
        name: str,
        *,
        table: str,
        initial: Callable[[], State],
        key: str | KeyOf = "stream_id",
        key_column: str = "key",
        columns: dict[str, str] | None = None,
        options: ProjectionOptions | None = None,
        **settings: Unpack[ProjectionOptionsDict],
    ) -> None:
        super().__init__(name, tables=[table], options=options, **settings)
        self.table = table
        self.key_column = validate_identifier(key_column, "key column")
        self.columns = dict(columns) if columns is not None else None
        for column, sql_type in (self.columns or {}).items():
            validate_identifier(column, "column name")
            if column == key_column or not _SQL_TYPE.fullmatch(sql_type):
                raise ConfigurationError(f"projection {name!r}: bad column {column} {sql_type!r}")
        self.initial = initial
        self.key_of = key_function(key)
        self._evolvers: dict[str, Evolve] = {}
        self.setup(self._create_table)

    def evolve(self, *types: str) -> Callable[[Evolve], Evolve]:
        """Register a pure ``evolve(state, event) -> new state | DELETE`` for ``types``."""

        def register(function: Evolve) -> Evolve:
            self.handles(*types)  # only these types are read
            for type_ in types:
                self._evolvers[type_] = function
            return function

        return register

    async def apply(self, events: Sequence[RecordedEvent], tx: ReadModelTransaction) -> None:
        evolvers = self._evolvers
        handled = [event for event in events if event.type in evolvers]
        if not handled:
            return
        keyed = [(self._key(event), event) for event in handled]
        keys = list(dict.fromkeys(key for key, _ in keyed))
        async with self._as_handler_error(handled[0]):
            states: dict[str, State | _Delete] = dict(await self._load(tx, keys))
        for key, event in keyed:
            state = states.get(key)
            if state is None or isinstance(state, _Delete):
                state = self.initial()
            try:
                states[key] = evolvers[event.type](state, event)
            except Exception as exc:
                raise HandlerError(self.name, event, failure(self.name, event, exc)) from exc
        async with self._as_handler_error(handled[0]):
            await self._write(tx, {key: states[key] for key in keys})

    @contextlib.asynccontextmanager
    async def _as_handler_error(self, event: RecordedEvent) -> AsyncIterator[None]:
        """The set-based SQL failing (a constraint, a type) is the projection's failure, so
        its error policy applies; the first event of the batch stands for it (the runner
        narrows a failing batch down to its event)."""
        try:
            yield
        except HandlerError:
            raise
        except Exception as exc:
            raise HandlerError(self.name, event, failure(self.name, event, exc)) from exc

    def _key(self, event: RecordedEvent) -> str:
        try:
            return self.key_of(event)
        except Exception as exc:
            raise HandlerError(self.name, event, failure(self.name, event, exc)) from exc

    # -- storage ---------------------------------------------------------------------------

    def _value_columns(self) -> list[str]:
        return list(self._column_types())

    def _column_types(self) -> dict[str, str]:
        return self.columns if self.columns is not None else {"state": "JSON"}

    def _json_columns(self) -> set[str]:
        return {c for c, t in self._column_types().items() if t.upper() == "JSON"}

    async def _create_table(self, tx: ReadModelTransaction) -> None:
        document = tx.sql.document_type
        definitions = [
            f"{quote_identifier(c)} {document if t.upper() == 'JSON' else t}"
            for c, t in self._column_types().items()
        ]
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {quote_identifier(self.table)} "
            f"({quote_identifier(self.key_column)} TEXT PRIMARY KEY, {', '.join(definitions)})"
        )

    async def _load(self, tx: ReadModelTransaction, keys: list[str]) -> dict[str, State]:
        table, key = quote_identifier(self.table), quote_identifier(self.key_column)
        values = self._value_columns()
        json_columns = self._json_columns()
        as_text = tx.sql.document_as_text
        selected = ", ".join(
            quote_identifier(column) + (as_text if column in json_columns else "")
            for column in values
        )
        rows = await tx.fetch(
            f"SELECT {key}, {selected} FROM {table} WHERE {tx.sql.is_one_of(key, '$1')}",
            tx.sql.text_list(keys),
        )
        if self.columns is None:
            return {row[0]: orjson.loads(row[1]) for row in rows}
        decoded = [column in json_columns for column in values]
        return {
            row[0]: {
                column: orjson.loads(value) if is_json else value
                for column, value, is_json in zip(values, row[1:], decoded, strict=True)
            }
            for row in rows
        }

    async def _write(self, tx: ReadModelTransaction, states: dict[str, State | _Delete]) -> None:
        deleted = [key for key, state in states.items() if state is DELETE]
        rows = [
            (key, *self._row_values(state))
            for key, state in states.items()
            if not isinstance(state, _Delete)
        ]
        if deleted:
            key = quote_identifier(self.key_column)
            await tx.execute(
                f"DELETE FROM {quote_identifier(self.table)} WHERE {tx.sql.is_one_of(key, '$1')}",
                tx.sql.text_list(deleted),
            )
        # The version names the table's shape: a new version may have new column types.
        await tx.bulk_upsert(
            self.table, [self.key_column], self._value_columns(), rows, shape=f"v{self.version}"
        )

    def _row_values(self, state: State) -> list[Any]:
        # Sorted keys: one state is always one text, however it was reached.
        if self.columns is None:
            return [orjson.dumps(state, option=orjson.OPT_SORT_KEYS).decode()]
        json_columns = self._json_columns()
        try:
            return [
                orjson.dumps(state[column], option=orjson.OPT_SORT_KEYS).decode()
                if column in json_columns
                else state[column]
                for column in self.columns
            ]
        except KeyError as exc:
            raise ConfigurationError(
                f"projection {self.name!r}: state lacks column {exc.args[0]!r}: {state!r}"
            ) from None


def key_function(key: str | KeyOf) -> KeyOf:
    """How a document or state is keyed: ``"stream_id"``, a data field's name, or a function."""
    if callable(key):
        return key
    if key == "stream_id":
        return _stream_key
    field = key

    def data_key(event: RecordedEvent) -> str:
        return str(event.data[field])

    return data_key


def _stream_key(event: RecordedEvent) -> str:
    return event.stream_id
