"""The library's default sizes and intervals, in one place so that every module agrees.

Plain numbers only: this module imports nothing, so the contracts, the engine and the
backends can all use it.
"""

from __future__ import annotations

DEFAULT_BATCH_SIZE = 1000
"""Events per batch a projection reads and applies in one read-model transaction."""

STATE_BATCH_SIZE = 5000
"""A state projection's default batch: it writes each touched key once per batch, so larger
batches mean fewer writes of keys that many events touch."""

DEFAULT_MAX_BATCH_BYTES = 16 * 1024 * 1024
"""A batch also ends once its events' stored payload reaches this many bytes (16 MiB), so a
run of large events cannot exhaust memory."""

STREAM_PAGE_SIZE = 1000
"""Events read per query when one stream is folded on demand."""

DEFAULT_POLL_INTERVAL = 1.0
"""Seconds between checks for new events where no notification wakes a waiting runner."""
