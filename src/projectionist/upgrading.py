"""``events upgrade``: rewrite stored events to their current shape, for those who want it.

Upcasting on read (``upcasting``) already shows every consumer the current shapes; an
upgrade makes the stored events match, so the upcasters of old versions can be retired
later. It pages through the whole global order of our own store (only the types some
upcaster starts from), upcasts each page's old events and has the store rewrite them in
place (``EventStore.rewrite_events``: one transaction per batch, keeping ids, positions,
order, stream versions and recorded_at). It is idempotent: a second run finds nothing to
change, and a page that another upgrade rewrote meanwhile is left alone. What projections
see does not change, so no read model needs a rebuild.

It refuses while a blue/green build runs (a lease of a build unit is held by a live
worker), checked before every batch: a build's replay and the rewrite would race over the
same history, and an operator should see one finish before the other starts.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from . import leases
from .bluegreen import is_build_unit
from .defaults import DEFAULT_BATCH_SIZE
from .errors import ConfigurationError
from .events import START, Position, validate_batch_size
from .readmodel import ReadModelStore
from .source import EventSource
from .store import EventStore

logger = logging.getLogger("projectionist.upgrading")


@dataclass
class UpgradeReport:
    """What an upgrade did: events scanned and rewritten, per kind of change."""

    scanned: int = 0
    """Events read (of the types some upcaster starts from)."""
    upgraded: int = 0
    """Events rewritten to their current shape."""
    batches: int = 0
    changes: Counter[str] = field(default_factory=Counter)
    """Rewritten events per change, e.g. ``"OrderCreated v1 -> OrderPlaced v3": 12``."""
    position: Position = START
    """Where the scan ended."""


Progress = Callable[[UpgradeReport], None]
"""Called after every batch with the report so far."""


async def upgrade_events(
    store: EventSource,
    *,
    leases_in: ReadModelStore | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> UpgradeReport:
    """Rewrite every stored event that an upcaster of ``store.upcasters`` applies to into
    its current shape, ``batch_size`` events per transaction; report the counts.

    Only our own ``EventStore``: another system's events are not ours to rewrite
    (ConfigurationError). Refused while a blue/green build holds a lease in ``leases_in``
    (default: the store's own read models)."""
    validate_batch_size(batch_size)
    if not isinstance(store, EventStore):
        raise ConfigurationError(
            f"events upgrade rewrites events of our own store only; {store.url} is another "
            "system's source, read as it is: its events are upcast as they are read instead"
        )
    upcasters = store.upcasters
    if not upcasters:
        raise ConfigurationError(
            "events upgrade: no upcasters are registered on the store (Application("
            "..., upcasters=...) or store.use_upcasters(...)): there is nothing to upgrade"
        )
    read_models = leases_in or store.read_models()
    types = {step.from_type for step in upcasters}
    report = UpgradeReport()
    while True:
        await refuse_during_builds(read_models)
        batch = await store.read_all(report.position, limit=batch_size, types=types)
        if batch.checkpoint == report.position:
            break
        rewrites = upcasters.rewrites(batch.events)
        changed = await store.rewrite_events(rewrites) if rewrites else 0
        report.scanned += len(batch.events)
        report.upgraded += changed
        report.batches += 1
        report.changes.update(
            f"{r.old_type} v{r.old_version} -> {r.type} v{r.version}" for r in rewrites
        )
        report.position = batch.checkpoint
        if progress is not None:
            progress(report)
    logger.info(
        "events upgraded: %d of %d scanned",
        report.upgraded,
        report.scanned,
        extra={"action": "events_upgraded", "store": store.url},
    )
    return report


async def refuse_during_builds(read_models: ReadModelStore) -> None:
    """ConfigurationError naming the blue/green builds that run now (a held lease)."""
    held = await leases.all_leases(read_models)
    building = sorted(
        f"{row.unit} (by {row.owner})"
        for row in held.values()
        if is_build_unit(row.unit) and row.owner is not None
    )
    if building:
        raise ConfigurationError(
            f"events upgrade refused: a blue/green build is running ({', '.join(building)}); "
            "run it again once the build has swapped in (see 'projectionist status')"
        )
