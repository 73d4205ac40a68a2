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

Every state an evolve function returns is checked against the declared column types before
it is written (see ``fitting``): a value that does not fit (0.5 for a ``BIGINT``, a string
longer than its ``VARCHAR(n)``) is a HandlerError naming the key and column, on every
backend, instead of being converted by one database and kept by another.
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from typing import Any, ClassVar, Final, TypeVar, Unpack, overload

import orjson

from .defaults import STATE_BATCH_SIZE
from .errors import ConfigurationError, HandlerError, InvalidInputError
from .events import RecordedEvent
from .identifiers import quote_identifier, validate_identifier
from .payloads import Event, typed_events
from .projection import Projection, ProjectionOptions, ProjectionOptionsDict, failure
from .readmodel import ReadModelTransaction

State = dict[str, Any]
Row = tuple[Any, ...]
_MISSING = object()
# Values that cannot change in place: one that passed its column's check passes again.
_IMMUTABLE = frozenset({int, float, str, bool, type(None), bytes})


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Final = _Delete()
"""Return this from an evolve function to delete the key's row."""

Evolved = State | _Delete
"""What an evolve function returns: the new state, or DELETE."""
Evolve = Callable[[State, RecordedEvent], Evolved]
P = TypeVar("P")
TypedEvolve = Callable[[State, Event[P]], Evolved]
"""An evolve function registered with ``payload=P``: it receives ``Event[P]``."""
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
        self._fits = {column: (t, fitting(t)) for column, t in self._column_types().items()}
        self.initial = initial
        self.key_of = key_function(key)
        self._evolvers: dict[str, Evolve] = {}
        self.setup(self._create_table)

    @overload
    def evolve(self, *types: str) -> Callable[[Evolve], Evolve]: ...
    @overload
    def evolve(
        self, *types: str, payload: type[P]
    ) -> Callable[[TypedEvolve[P]], TypedEvolve[P]]: ...
    def evolve(self, *types: str, payload: type[Any] | None = None) -> Callable[[Any], Any]:
        """Register a pure ``evolve(state, event) -> new state | DELETE`` for ``types``.

        With ``payload=T`` (a msgspec Struct, a pydantic model or a dataclass) it receives
        ``Event[T]``; the state stays a dict, and the key is still taken from the event as
        stored (``key="order_id"`` reads its data)."""
        # Decided once: an untyped function is stored as it is, so it costs nothing.
        typed = None if payload is None else typed_events(payload, f"projection {self.name!r}")

        def register(function: Callable[[State, Any], Evolved]) -> Callable[[State, Any], Evolved]:
            self.handles(*types)  # only these types are read
            stored = function if typed is None else _with_payloads(function, typed)
            for type_ in types:
                self._evolvers[type_] = stored
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
        rows: dict[str, Row | _Delete] = {}
        for key, event in keyed:
            state = states.get(key)
            if state is None or isinstance(state, _Delete):
                state = self.initial()
            try:
                evolved = states[key] = evolvers[event.type](state, event)
            except Exception as exc:
                raise HandlerError(self.name, event, failure(self.name, event, exc)) from exc
            # Every state is checked, not only a batch's last: the outcome must not depend on
            # how the events were batched. What the previous state of the batch already
            # passed need not pass again (see _row).
            rows[key] = (
                evolved
                if isinstance(evolved, _Delete)
                else self._row(key, evolved, event, state, rows.get(key))
            )
        async with self._as_handler_error(handled[0]):
            await self._write(tx, rows)

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

    async def _write(self, tx: ReadModelTransaction, rows: dict[str, Row | _Delete]) -> None:
        deleted = [key for key, row in rows.items() if isinstance(row, _Delete)]
        if deleted:
            key = quote_identifier(self.key_column)
            await tx.execute(
                f"DELETE FROM {quote_identifier(self.table)} WHERE {tx.sql.is_one_of(key, '$1')}",
                tx.sql.text_list(deleted),
            )
        written = [row for row in rows.values() if not isinstance(row, _Delete)]
        # The version names the table's shape: a new version may have new column types.
        await tx.bulk_upsert(
            self.table, [self.key_column], self._value_columns(), written, shape=f"v{self.version}"
        )

    def _row(
        self,
        key: str,
        state: object,
        event: RecordedEvent,
        before: object = None,
        before_row: object = None,
    ) -> Row:
        """The row to write for ``state``: each value checked against its column's declared
        type (and converted where that is exact), so that every backend stores the same.

        ``before`` is the state ``state`` was evolved from and ``before_row`` its row, if
        this batch made one: a column whose value is the very same immutable object as
        before (an int, a str...: evolve left it alone) takes the checked value of that row
        instead of being checked again. Mutable values (lists, dicts) are always checked:
        an evolve function may have changed them in place."""
        try:
            if not isinstance(state, dict):
                raise ColumnValueError(
                    f"key {key!r}: evolve returned {state!r}, not a state dict or DELETE"
                )
            if self.columns is None:
                return (key, _fit(key, "state", "JSON", _to_json, state))
            if not (isinstance(before_row, tuple) and isinstance(before, dict)):
                before, before_row = {}, ()
            return self._columns_row(key, state, before, before_row)
        except ColumnValueError as exc:
            raise HandlerError(self.name, event, failure(self.name, event, exc)) from exc

    def _columns_row(self, key: str, state: State, before: State, before_row: Row) -> Row:
        """The hot loop of a state projection (every column of every event's state): no
        call per value but its check, one handler for every misfit."""
        row: list[object] = [key]
        append = row.append
        column = ""
        try:
            for index, (column, (_, fits)) in enumerate(self._fits.items(), 1):
                value = state.get(column, _MISSING)
                if value is before.get(column, _MISSING) and type(value) in _IMMUTABLE:
                    append(before_row[index])
                elif value is _MISSING:
                    raise ColumnValueError(
                        f"key {key!r}: the state lacks column {column!r}: {state!r}"
                    )
                else:
                    append(fits(value))
        except _Misfit as exc:
            sql_type = self._fits[column][0]
            raise ColumnValueError(f"key {key!r}, column {column!r} ({sql_type}): {exc}") from None
        return tuple(row)


def _with_payloads(
    function: Callable[[State, Any], Evolved], typed: Callable[[RecordedEvent], Event[Any]]
) -> Evolve:
    """The evolve function given its event decoded; a payload that does not validate
    raises where the function would, as its failure."""

    def decoded(state: State, event: RecordedEvent) -> Evolved:
        return function(state, typed(event))

    return decoded


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


# -- values and their declared column types ----------------------------------------------------
#
# PostgreSQL converts a value to its column's type (0.5 into BIGINT becomes 0); SQLite keeps
# what it is given. So that one definition stores the same on both, each value is checked
# against the declared type before the write, with the stricter database's limits (INTEGER
# is 32 bits, REAL 4 bytes, as on PostgreSQL). Types not known here are left to the database.


class ColumnValueError(InvalidInputError):
    """A state's value does not fit the type its column declares."""


class _Misfit(ColumnValueError):
    """Why a value does not fit, before the caller adds the key and the column."""


Fits = Callable[[Any], Any]
"""Returns the value to write (converted only where that is exact), or raises _Misfit."""

_CONSTRAINT_WORDS = frozenset({"NOT", "NULL", "UNIQUE", "PRIMARY", "KEY"})
_INTEGER_BITS = {"SMALLINT": 16, "INT": 32, "INTEGER": 32, "BIGINT": 64}
_DOUBLES = frozenset({"DOUBLE PRECISION", "FLOAT"})
_TEXTS = frozenset({"TEXT", "VARCHAR", "CHARACTER VARYING", "CHAR", "CHARACTER"})
_NUMERICS = frozenset({"NUMERIC", "DECIMAL"})


def fitting(sql_type: str) -> Fits:
    """How values are checked for a column declared as ``sql_type`` (``"BIGINT NOT NULL"``)."""
    if sql_type.upper() == "JSON":
        return _to_json  # None is the JSON text null, as it always was
    words = sql_type.upper().split("(")[0].split()
    name = " ".join(word for word in words if word not in _CONSTRAINT_WORDS)
    sizes = [int(n) for n in re.findall(r"\d+", sql_type)]
    fits = _fits_of_type(name, sizes)
    if "NOT NULL" in " ".join(words):
        return _not_null(fits)
    return _nullable(fits)


def _fits_of_type(name: str, sizes: list[int]) -> Fits:
    if name in _INTEGER_BITS:
        return _integer(name, _INTEGER_BITS[name])
    if name in _DOUBLES and not (sizes and sizes[0] <= 24):
        return _double
    if name == "REAL" or name == "FLOAT":
        return _real
    if name in _TEXTS:
        return _text(sizes[0] if sizes else None)
    if name in {"BOOLEAN", "BOOL"}:
        return _boolean
    if name in _NUMERICS:
        return _numeric(*sizes[:2]) if sizes else _numeric()
    return _any


def _fit(key: str, column: str, sql_type: str, fits: Fits, value: object) -> object:
    try:
        return fits(value)
    except _Misfit as exc:
        raise ColumnValueError(f"key {key!r}, column {column!r} ({sql_type}): {exc}") from None


def _not_null(fits: Fits) -> Fits:
    def checked(value: object) -> object:
        if value is None:
            raise _Misfit("None in a NOT NULL column")
        return fits(value)

    return checked


def _nullable(fits: Fits) -> Fits:
    def checked(value: object) -> object:
        return None if value is None else fits(value)

    return checked


def _number(value: object, kind: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Misfit(f"{value!r} ({type(value).__name__}) is not {kind}")
    return value


def _integer(name: str, bits: int) -> Fits:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def fits(value: object) -> int:
        if type(value) is int and low <= value <= high:
            return value  # the common case, without a call
        number = _number(value, "an integer")
        if isinstance(number, float):
            if not number.is_integer():
                raise _Misfit(f"{number!r} is not a whole number")
            number = int(number)  # exact: 2.0 is stored as 2 everywhere
        if not low <= number <= high:
            raise _Misfit(f"{number} is out of {name}'s range ({low} to {high})")
        return number

    return fits


def _double(value: object) -> float:
    if type(value) is float and value == value:  # not NaN: the common case
        return value
    number = _number(value, "a number")
    if isinstance(number, int) and float(number) != number:
        raise _Misfit(f"{number} has more digits than a DOUBLE PRECISION keeps")
    if math.isnan(number):
        raise _Misfit("NaN (SQLite would store NULL)")
    return float(number)


def _real(value: object) -> float:
    number = _double(value)
    try:
        exact = struct.unpack("f", struct.pack("f", number))[0] == number
    except OverflowError:
        exact = False
    if not exact and not math.isinf(number):
        raise _Misfit(
            f"{number!r} is not exact in a 4-byte float (REAL on PostgreSQL); "
            "declare DOUBLE PRECISION"
        )
    return number


def _text(length: int | None) -> Fits:
    def fits(value: object) -> str:
        if not isinstance(value, str):
            raise _Misfit(f"{value!r} ({type(value).__name__}) is not a string")
        if length is not None and len(value) > length:
            raise _Misfit(f"{value!r} is longer than {length} characters")
        if "\x00" in value:
            raise _Misfit(f"{value!r} holds a NUL character (PostgreSQL refuses it)")
        return value

    return fits


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Misfit(f"{value!r} ({type(value).__name__}) is not a bool")
    return value


def _numeric(precision: int | None = None, scale: int = 0) -> Fits:
    def fits(value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise _Misfit(f"{value!r} ({type(value).__name__}) is not a number")
        exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        if not exact.is_finite():
            raise _Misfit(f"{value!r} is not a finite number")
        if precision is not None:
            digits = exact.as_tuple()
            decimals = max(0, -int(digits.exponent))
            if decimals > scale or (exact and exact.adjusted() >= precision - scale):
                raise _Misfit(f"{value!r} does not fit NUMERIC({precision}, {scale}) exactly")
        return value

    return fits


def _to_json(value: object) -> str:
    # Sorted keys: one state is always one text, however it was reached.
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError as exc:
        raise _Misfit(f"not JSON: {exc}") from None


def _any(value: object) -> object:
    return value
