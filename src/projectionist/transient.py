"""Transient failures: which errors pass if the work is simply tried again, and how long to wait.

The runner retries a batch from its checkpoint after a lost connection, a serialization
failure or a timeout, waiting longer after each failure in a row. The backends say which
failures those are by the type of error they raise (StoreUnavailableError,
TransactionConflictError, TransientBackendError); the Redis target uses the
same cause-chain walk to find a lost connection under whatever wrapped it, and the same
doubling delay while it polls for a projection's lock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from .errors import StoreUnavailableError, TransactionConflictError, TransientBackendError

RETRY_BASE_DELAY = 0.1
RETRY_MAX_DELAY = 30.0
# SQLSTATE classes of failures that pass: connection exceptions, transaction rollbacks
# (serialization failures, deadlocks), insufficient resources, operator intervention.
_TRANSIENT_SQLSTATES = ("08", "40", "53", "57P")
_TRANSIENT_TYPES = (
    StoreUnavailableError,
    TransactionConflictError,
    TransientBackendError,
    ConnectionError,
    TimeoutError,
)


@runtime_checkable
class _DriverError(Protocol):
    """A SQL driver's own error (asyncpg's, psycopg's): it names its SQLSTATE.

    The backends translate the errors of ``tx.execute``/``fetch``; a handler that uses the
    driver's connection (``tx.connection``) directly gets the driver's errors raw, and the
    runner wraps them in a HandlerError: their SQLSTATE still tells a serialization failure
    from a bug, without importing the driver that raised it.
    """

    sqlstate: object


def in_cause_chain(exc: BaseException, matches: Callable[[BaseException], bool]) -> bool:
    """Whether ``exc`` or any exception it was raised from (cause or context) ``matches``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # a chain may loop
        seen.add(id(current))
        if matches(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is worth retrying as is."""
    return in_cause_chain(exc, _transient_itself)


def _transient_itself(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    return (
        isinstance(exc, _DriverError)
        and isinstance(exc.sqlstate, str)
        and exc.sqlstate.startswith(_TRANSIENT_SQLSTATES)
    )


def doubling_delay(attempt: int, *, base: float, cap: float) -> float:
    """``base`` doubled per earlier attempt (1 -> base, 2 -> 2*base, ...), at most ``cap``."""
    # The exponent is bounded: 2.0 ** 1024 overflows, and an outage may last that many tries.
    return min(cap, base * 2.0 ** min(attempt - 1, 64))


def backoff(failures: int) -> float:
    """Exponential backoff with jitter: 0.1 s, 0.2 s, 0.4 s ... up to 30 s, +-50%.

    The jitter keeps runners that failed together (a database restart) from retrying in step.
    """
    delay = doubling_delay(failures, base=RETRY_BASE_DELAY, cap=RETRY_MAX_DELAY)
    return delay * random.uniform(0.5, 1.5)
