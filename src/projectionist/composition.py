"""What an Application is given, checked once: where its events come from, where its read
models live, and whether its projections can run there."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .errors import ConfigurationError
from .events import RecordedEvent
from .live import LiveProjection
from .projection import Kind, OnError, Projection
from .readmodel import ReadModelTransaction
from .source import EventSource
from .store import EventStore, InlineHook
from .upcasting import Upcasters


def events_given(
    store: str | EventStore | None, url: str | EventStore | None, source: EventSource | None
) -> str | EventSource:
    """What an Application reads its events from: an event store's URL or object (given as
    ``store``, or ``url=``, its former name), or another ``source``; given exactly once."""
    given = [thing for thing in (store, url, source) if thing is not None]
    if len(given) > 1:
        raise ConfigurationError(
            "give the events once: as store (or url=), or as source=, not several"
        )
    if not given:
        raise ConfigurationError(
            "an Application needs an event store (a URL or an EventStore) or a source="
        )
    if source is not None and not isinstance(source, EventSource):
        raise ConfigurationError(f"source= must be an EventSource, not {type(source).__name__}")
    return given[0]


def read_models_url(
    read_model_url: str | None, read_models: str | None, source: EventSource | None
) -> str | None:
    if read_model_url is not None and read_models is not None:
        raise ConfigurationError("give the read models' URL once: read_models= or read_model_url=")
    chosen = read_models if read_models is not None else read_model_url
    if source is not None and not isinstance(source, EventStore) and chosen is None:
        raise ConfigurationError(
            "an application over another event source needs read_models='<URL>' "
            "(postgresql://, sqlite:///, memory:// or redis://): the source keeps no read models"
        )
    return chosen


def refuse_inline_over_a_source(projections: Iterable[Projection]) -> None:
    """Inline projections write in an append's transaction: another source has none."""
    for projection in projections:
        if projection.kind is Kind.INLINE:
            raise ConfigurationError(
                f"projection {projection.name!r} is inline, so it writes in the append's own "
                "transaction: an application over another event source has none; make it async"
            )


def check_projections(
    projections: Sequence[Projection],
    live: Sequence[LiveProjection[Any]],
    own_read_model_database: bool,
    source: EventSource | None,
) -> None:
    """Unique names; inline projections only where they can write in the append's
    transaction (our own store's database, no read-model store of their own)."""
    names = [p.name for p in projections] + [p.name for p in live]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"projection names must be unique, got {sorted(names)}")
    if source is not None and not isinstance(source, EventStore):
        refuse_inline_over_a_source(projections)
    if own_read_model_database and any(p.kind is Kind.INLINE for p in projections):
        raise ConfigurationError(
            "inline projections write in the append's transaction: their read model must "
            "live in the event store's database (drop read_model_url or make them async)"
        )
    _refuse_inline_with_own_read_models(projections)
    _refuse_park_with_own_read_models(projections)


def inline_hook(projection: Projection, store: EventStore) -> InlineHook:
    """Apply an append's events to ``projection``, upcast as any reader's are (an append
    records the current versions, so usually nothing applies; a writer may give older)."""

    async def hook(tx: ReadModelTransaction, events: Sequence[RecordedEvent]) -> None:
        await projection.apply(store.upcasters.apply(events, projection.name), tx)

    return hook


def _refuse_inline_with_own_read_models(projections: Iterable[Projection]) -> None:
    for projection in projections:
        if projection.kind is Kind.INLINE and projection.read_models is not None:
            raise ConfigurationError(
                f"projection {projection.name!r} is inline, so it writes in the append's own "
                "transaction: it cannot have a read-model store of its own (such as Redis); "
                "make it async"
            )


def checked_upcasters(upcasters: object) -> Upcasters | None:
    if upcasters is not None and not isinstance(upcasters, Upcasters):
        raise ConfigurationError(
            f"upcasters= must be an Upcasters registry, not {type(upcasters).__name__}"
        )
    return upcasters


def give_upcasters(source: EventSource, upcasters: Upcasters | None) -> None:
    """Put the application's upcasters on its source; a shared source that reads with
    other upcasters already is refused (two applications would disagree on shapes)."""
    if upcasters is None or source.upcasters is upcasters:
        return
    if source.upcasters:
        raise ConfigurationError(
            f"the source {source.url} already reads with other upcasters "
            f"({source.upcasters!r}): give the application the same registry, or none"
        )
    source.use_upcasters(upcasters)


def _refuse_park_with_own_read_models(projections: Iterable[Projection]) -> None:
    """A parked stream's letters commit with the batch that reads them; a store of its own
    (Redis) keeps its operations records in another database (``recording``)."""
    for projection in projections:
        if projection.on_error is OnError.PARK and projection.read_models is not None:
            raise ConfigurationError(
                f"projection {projection.name!r}: on_error='park' writes its dead letters in "
                "the batch's own transaction, which a read-model store of its own (such as "
                "Redis) cannot share; use on_error='skip' or 'stop'"
            )
