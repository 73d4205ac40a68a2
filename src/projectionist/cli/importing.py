"""``import``: copy existing events from JSON lines into a store, once (docs/importing.md).

One JSON object a line: ``stream_id``, ``version``, ``type``, ``data`` and optionally
``metadata``, ``id`` (a UUID) and ``recorded_at`` (ISO 8601 with a time zone). A bad line
is named by its number; nothing of its batch is written, the batches before it are, and a
re-run skips the events already imported.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated, Any

import orjson
import typer

from ..errors import ImportRejectedError, InvalidInputError, SchemaError
from ..factory import create_store
from ..importing import DEFAULT_IMPORT_BATCH_SIZE, ImportedEvent, ImportReport
from .base import JsonOption, SchemaOption, UrlOption, app, console, errors, run_async
from .operations import plain

_REQUIRED = ("stream_id", "version", "type", "data")
_FIELDS = frozenset((*_REQUIRED, "metadata", "id", "recorded_at"))


class JsonLines:
    """The events of a JSON-lines file, remembering the line numbers of the latest two
    batches' events (the import reads one batch ahead of the one it writes) so that a
    refused event is named by its line."""

    def __init__(self, source: IO[bytes], batch_size: int) -> None:
        self._source = source
        self._lines: collections.deque[int] = collections.deque(maxlen=2 * batch_size + 1)
        self._count = 0

    def __iter__(self) -> Iterator[ImportedEvent]:
        for number, text in enumerate(self._source, start=1):
            if not text.strip():
                continue  # blank lines (a trailing newline) carry no event
            event = parse_line(text, number)
            self._lines.append(number)
            self._count += 1
            yield event

    def line_of(self, index: int) -> int | None:
        """The line of input event ``index``, if it was among the latest two batches'."""
        back = self._count - 1 - index
        return self._lines[-1 - back] if 0 <= back < len(self._lines) else None


def parse_line(text: bytes, number: int) -> ImportedEvent:
    """One line as an event; InvalidInputError naming the line when it cannot be one."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise _bad(number, f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise _bad(number, f"expected a JSON object, got {type(value).__name__}")
    missing = [name for name in _REQUIRED if name not in value]
    unknown = sorted(set(value) - _FIELDS)
    if missing or unknown:
        what = [f"missing {', '.join(missing)}"] if missing else []
        what += [f"unknown field(s) {', '.join(unknown)}"] if unknown else []
        raise _bad(number, "; ".join(what) + f" (fields: {', '.join(sorted(_FIELDS))})")
    return ImportedEvent(
        value["stream_id"],
        value["version"],
        value["type"],
        value["data"],
        value.get("metadata", {}),
        _parsed(value.get("id"), uuid.UUID, number, "id"),
        _parsed(value.get("recorded_at"), datetime.fromisoformat, number, "recorded_at"),
    )


def _parsed(value: object, parse: Any, number: int, name: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(number, f"{name} must be a string, not {type(value).__name__}")
    try:
        return parse(value)
    except ValueError as exc:
        raise _bad(number, f"invalid {name} {value!r} ({exc})") from None


def _bad(number: int, reason: str) -> InvalidInputError:
    return InvalidInputError(f"line {number}: {reason}; nothing of its batch was written")


@contextlib.contextmanager
def _opened(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        source = Path(path).open("rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with source:
        yield source


class _Progress:
    """Progress on stderr at most once a second; the last report, for the error message."""

    def __init__(self) -> None:
        self.last: ImportReport | None = None
        self._shown = time.monotonic()

    def __call__(self, report: ImportReport) -> None:
        self.last = report
        if time.monotonic() - self._shown >= 1.0:
            self._shown = time.monotonic()
            errors.print(f"imported {_counts(report)}", highlight=False)


def _counts(report: ImportReport) -> str:
    skipped = f", skipped {report.skipped:,} already imported" if report.skipped else ""
    return f"{report.events:,} events{skipped} ({report.events_per_second:,.0f} events/s)"


BatchOption = Annotated[
    int,
    typer.Option(
        "--batch-size",
        envvar="PROJECTIONIST_IMPORT_BATCH_SIZE",
        min=1,
        max=100_000,
        help="Events per transaction",
    ),
]


@app.command("import")
def import_command(
    url: UrlOption,
    from_jsonl: Annotated[
        str,
        typer.Option(
            "--from-jsonl",
            envvar="PROJECTIONIST_IMPORT_FROM_JSONL",
            help="JSON lines to import (a path, or - for standard input)",
        ),
    ],
    schema: SchemaOption = None,
    batch_size: BatchOption = DEFAULT_IMPORT_BATCH_SIZE,
    create_schema: Annotated[
        bool,
        typer.Option(
            "--create-schema",
            envvar="PROJECTIONIST_CREATE_SCHEMA",
            help="Create the store's schema if it has none [default: refuse]",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Import events from JSON lines (stream_id, version, type, data, metadata?, id?,
    recorded_at?), keeping their streams, versions, ids and times."""
    progress = _Progress()

    async def go() -> ImportReport:
        store = create_store(url, schema=schema)
        async with store:
            if not create_schema and await store.schema_version() == 0:
                raise SchemaError(
                    f"no projectionist schema in {store.url}: is the URL or --schema mistyped? "
                    "Create it with 'projectionist schema apply' (or pass --create-schema)"
                )
            await store.apply_schema()
            with _opened(from_jsonl) as source:
                lines = JsonLines(source, batch_size)
                try:
                    return await store.import_events(
                        lines, batch_size=batch_size, progress=progress
                    )
                except ImportRejectedError as exc:
                    raise _named(exc, lines, progress.last) from exc
                except InvalidInputError as exc:
                    raise _with_progress(exc, progress.last) from exc

    _summary(run_async(go), as_json)


def _named(exc: ImportRejectedError, lines: JsonLines, done: ImportReport | None) -> Exception:
    line = lines.line_of(exc.index)
    where = f"line {line}" if line is not None else f"input event {exc.index}"
    text = f"{where}: {exc.reason}; nothing of its batch was written"
    return _with_progress(InvalidInputError(text), done)


def _with_progress(exc: InvalidInputError, done: ImportReport | None) -> InvalidInputError:
    if done is None or not done.events:
        return InvalidInputError(f"{exc}; nothing was imported")
    return InvalidInputError(
        f"{exc}; {done.events:,} events of earlier batches were imported (a re-run skips them)"
    )


def _summary(report: ImportReport, as_json: bool) -> None:
    if as_json:
        plain(
            orjson.dumps(
                {
                    "events": report.events,
                    "skipped": report.skipped,
                    "streams": report.streams,
                    "batches": report.batches,
                    "first": None if report.first is None else str(report.first),
                    "last": None if report.last is None else str(report.last),
                    "seconds": round(report.seconds, 3),
                }
            ).decode()
        )
        return
    span = f", positions {report.first} to {report.last}" if report.first else ""
    console.print(
        f"imported {_counts(report)} into {report.streams:,} streams in "
        f"{report.batches:,} batches, {report.seconds:.1f}s{span}",
        highlight=False,
    )
