"""A projector over a JetStream stream, run as a child process by test_jetstream_source.py
to be killed with SIGKILL.

    python -m tests.sources.jetstream_child STREAM READ_MODELS_URL [--step]

opens an Application over ``JetStreamSource(NATS_URL, STREAM)`` with the ledger projection
(tests/sources/jetstream_support.py) in the PostgreSQL read models at READ_MODELS_URL, runs
``setup()``, prints ``catching-up``, brings the projection up to the head and prints
``caught-up TX/SEQ``. With ``--step`` it prints ``committed`` after each read-model commit and
waits for a line on stdin (tests/faults/stepping.py): the parent kills it on progress.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from projectionist import Application
from projectionist.backends.nats import JetStreamSource
from tests.faults.projector_child import DONE, READY
from tests.faults.stepping import step_after_commits
from tests.sources.jetstream_support import NATS_URL, ledger_projection

BATCH_SIZE = 25


async def project(stream: str, read_models: str, step: bool) -> None:
    source = JetStreamSource(NATS_URL, stream, poll_interval=0.05)
    ledger = ledger_projection(batch_size=BATCH_SIZE)
    async with (
        source,
        Application(source=source, read_models=read_models, projections=[ledger]) as app,
    ):
        await app.setup()
        if step:
            step_after_commits(app.read_models)
        print(READY, flush=True)
        await app.run_until_caught_up()
        checkpoint = await app.read_models.checkpoint(ledger.name)
        assert checkpoint is not None
        print(DONE, checkpoint.position, flush=True)


def main(argv: Sequence[str]) -> int:
    if len(argv) not in (2, 3) or (len(argv) == 3 and argv[2] != "--step"):
        print(
            "usage: python -m tests.sources.jetstream_child STREAM READ_MODELS_URL [--step]",
            file=sys.stderr,
        )
        return 2
    asyncio.run(project(argv[0], argv[1], step=len(argv) == 3))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
