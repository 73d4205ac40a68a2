"""Read models on Redis: hashes, sorted sets and counters, with exactly-once batches.

A ``RedisReadModelStore`` implements the read-model contract on Redis, so the engine's
runner, rebuilds, status and ``wait_for`` work on it unchanged. Each batch is one Redis
transaction: the runner's ``load_checkpoint(lock=True)`` WATCHes the projection's checkpoint
key and reads it, the handlers queue their writes on ``tx.pipeline`` (MULTI), the engine
queues the checkpoint write after them, and EXEC applies all of it at once. If another runner
(or a rebuild) moved the checkpoint in between, EXEC applies nothing and the runner reloads
and continues (``CheckpointConflictError``); a crash before EXEC leaves nothing behind. So
increments (HINCRBY, ZINCRBY) are applied exactly once per event, as in the SQL targets.

Keys, for a store with prefix ``P``::

    P:TABLE and P:TABLE:...    a projection's read model; TABLE is one of its ``tables``
                               (``tx.key(TABLE, part, ...)`` builds these names)
    P#checkpoint:NAME          the checkpoint of projection NAME (a hash)
    P#checkpoints              the names of all checkpoints (a set)
    P#lock:NAME                held while NAME is set up or reset (with an expiry)

A rebuild deletes ``P:TABLE`` and ``P:TABLE:*`` for each declared table (SCAN, then UNLINK in
the transaction that resets the checkpoint), so counters start from zero again.

Redis does not roll back a transaction whose commands fail while running (say HINCRBY on a
key holding a string): the other commands and the checkpoint are applied, and the batch
surfaces as a ``BackendError`` that says so; rebuild the projection after fixing it.
"""

from __future__ import annotations

from .errors import START_HINT, checkpoint_from_hash, translate_error
from .projection import RedisProjection
from .store import DEFAULT_URL, RedisReadModelStore
from .transaction import RedisTransaction, as_redis

__all__ = [
    "DEFAULT_URL",
    "START_HINT",
    "RedisProjection",
    "RedisReadModelStore",
    "RedisTransaction",
    "as_redis",
    "checkpoint_from_hash",
    "translate_error",
]
