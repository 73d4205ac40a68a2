"""A Redis projector run as a child process by test_redis_crash.py, to be killed with SIGKILL.

    python -m tests.targets.redis_projector_child STORE_URL PREFIX [--kill-after-commit N | --step]

opens an Application whose ``ledger`` (tests/targets/redis_ledger.py) lives in Redis under
PREFIX, runs ``setup()``, prints ``catching-up``, brings the projection up to the head and
prints ``caught-up TX/SEQ``. With ``--kill-after-commit N`` it SIGKILLs itself right after its
N-th Redis transaction (EXEC) has succeeded. With ``--step`` it prints ``committed`` after each
batch's EXEC and waits for a line on stdin before it goes on, so the parent kills it on
progress (after a chosen number of batches), never on a clock, and it can never run ahead to
the head. The ledger only increments, so a batch applied twice or lost would show in the
parent's comparison.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from projectionist import Application
from projectionist.targets.redis import RedisReadModelStore
from tests.faults.projector_child import DONE, READY, kill_after_commits
from tests.faults.stepping import step_after_commits
from tests.targets.conftest import REDIS_URL
from tests.targets.redis_ledger import make_ledger

BATCH_SIZE = 50
LOCK_TTL = 1.0  # a child killed while holding the set-up lock delays the next by at most this


async def project(url: str, prefix: str, kill_after_commit: int | None, step: bool) -> None:
    store = RedisReadModelStore(REDIS_URL, prefix=prefix, lock_ttl=LOCK_TTL)
    ledger = make_ledger(store, batch_size=BATCH_SIZE)
    async with Application(url, [ledger]) as app:
        if kill_after_commit is not None:
            kill_after_commits(store, kill_after_commit)
        await app.setup()
        if step:
            step_after_commits(store)
        print(READY, flush=True)
        await app.run_until_caught_up()
        checkpoint = await store.checkpoint(ledger.name)
        assert checkpoint is not None
        print(DONE, checkpoint.position, flush=True)


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2:
        asyncio.run(project(argv[0], argv[1], None, step=False))
    elif len(argv) == 3 and argv[2] == "--step":
        asyncio.run(project(argv[0], argv[1], None, step=True))
    elif len(argv) == 4 and argv[2] == "--kill-after-commit" and argv[3].isdigit():
        asyncio.run(project(argv[0], argv[1], int(argv[3]), step=False))
    else:
        print(
            "usage: python -m tests.targets.redis_projector_child URL PREFIX "
            "[--kill-after-commit N | --step]",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
