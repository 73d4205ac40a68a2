"""A child process that runs a partial replay of ``tests.replay_app.balances`` step by step
(``stepping.step_after_commits``), for the parent to SIGKILL it mid-replay.

    python -m tests.faults.replay_child URL POINT
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from projectionist import Application
from projectionist.replay import parse_point
from tests.faults.stepping import step_after_commits
from tests.replay_app import balances

BATCH_SIZE = 3


async def replay(url: str, point: str) -> None:
    async with Application(url, [balances(batch_size=BATCH_SIZE)]) as app:
        step_after_commits(app.read_models)
        result = await app.replay("balances", parse_point(point))
        print("done", result.events, flush=True)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.faults.replay_child URL POINT", file=sys.stderr)
        return 2
    asyncio.run(replay(argv[0], argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
