"""Transient failures: which errors pass if the work is simply tried again, and how long to wait.

The runner retries a batch from its checkpoint after a lost connection, a serialization
failure or a timeout, waiting longer after each failure in a row. The backends say which
failures those are by the type of error they raise (StoreUnavailableError,
TransactionConflictError, TransientBackendError); the Redis target uses the
same cause-chain walk to find a lost connection under whatever wrapped it, and the same
doubling delay while it polls for a projection's lock.

Transient means that *the store's or the target's* connection failed. A handler's own
exception is its failure even when it is a ``ConnectionError`` or another ``OSError`` (a
service it calls is down): under a ``HandlerError`` only the backends' errors and a driver's
transient SQLSTATE count, so a poison event meets its projection's ``on_error`` policy
instead of being retried forever.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

from .errors import (
    HandlerError,
    StoreUnavailableError,
    TransactionConflictError,
    TransientBackendError,
)

RETRY_BASE_DELAY = 0.1
RETRY_MAX_DELAY = 30.0
# SQLSTATE classes of failures that pass: connection exceptions, transaction rollbacks
# (serialization failures, deadlocks), insufficient resources, operator intervention.
_TRANSIENT_SQLSTATES = ("08", "40", "53", "57P")
_BACKEND_TRANSIENT_TYPES = (StoreUnavailableError, TransactionConflictError, TransientBackendError)
# Raw, untranslated: transient where the library itself met them, not when a handler raised.
_BUILTIN_TRANSIENT_TYPES = (ConnectionError, TimeoutError)


@runtime_checkable
class _DriverError(Protocol):
    """A SQL driver's own error (asyncpg's, psycopg's): it names its SQLSTATE.

    The backends translate the errors of ``tx.execute``/``fetch``; a handler that uses the
    driver's connection (``tx.connection``) directly gets the driver's errors raw, and the
    runner wraps them in a HandlerError: their SQLSTATE still tells a serialization failure
    from a bug, without importing the driver that raised it.
    """

    sqlstate: object


def cause_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then each exception it was raised from (cause, else context), once each."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # a chain may loop
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def in_cause_chain(exc: BaseException, matches: Callable[[BaseException], bool]) -> bool:
    """Whether ``exc`` or any exception it was raised from (cause or context) ``matches``."""
    return any(matches(current) for current in cause_chain(exc))


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is worth retrying as is.

    Below a HandlerError the chain is the handler's own: there a built-in ConnectionError
    or TimeoutError is the handler's failure, not the store's (see the module docstring).
    """
    in_handler = False
    for current in cause_chain(exc):
        raw = not in_handler and isinstance(current, _BUILTIN_TRANSIENT_TYPES)
        if _backend_transient(current) or raw:
            return True
        in_handler = in_handler or isinstance(current, HandlerError)
    return False


def _backend_transient(exc: BaseException) -> bool:
    if isinstance(exc, _BACKEND_TRANSIENT_TYPES):
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
