"""``tx.replaying``: False in catch-up, live and inline batches; True in rebuilds, verify
and blue/green builds (every backend; blue/green on PostgreSQL)."""

from __future__ import annotations

import asyncio

from projectionist import (
    Application,
    NewEvent,
    Projection,
    ReadModelTransaction,
    RecordedEvent,
)
from projectionist.bluegreen import BlueGreenBuild
from tests.conftest import PG_DSN


class Seen:
    """A projection that records ``tx.replaying`` of every event it applies."""

    def __init__(self) -> None:
        self.flags: list[bool] = []

    def projection(self, version: int = 1, kind: str = "async") -> Projection:
        projection = Projection("seen", version=version, kind=kind, tables=["seen"])

        @projection.setup
        async def create(tx: ReadModelTransaction) -> None:
            await tx.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY)")

        @projection.on("Happened")
        async def happened(event: RecordedEvent, tx: ReadModelTransaction) -> None:
            self.flags.append(tx.replaying)
            await tx.execute(
                "INSERT INTO seen VALUES ($1) ON CONFLICT (id) DO NOTHING", str(event.id)
            )

        return projection

    def taken(self) -> list[bool]:
        flags, self.flags = self.flags, []
        return flags


def happened(count: int) -> list[NewEvent]:
    return [NewEvent("Happened", {"n": n}) for n in range(count)]


async def test_replaying_is_set_only_by_rebuild_and_verify(app_url: str) -> None:
    seen = Seen()
    async with Application(app_url, [seen.projection()], poll_interval=0.05) as app:
        await app.setup()
        await app.store.append("s", happened(3))
        await app.run_until_caught_up()
        assert seen.taken() == [False] * 3  # catch-up

        running = asyncio.ensure_future(app.run(heartbeat_seconds=0.1, lease_seconds=1.0))
        result = await app.store.append("s", happened(2))
        await app.wait_for("seen", result.position, timeout=30)
        app.stop()
        await running
        assert seen.taken() == [False] * 2  # live, in a worker

        assert await app.rebuild("seen") == 5
        assert seen.taken() == [True] * 5
        assert (await app.verify("seen")).ok
        assert seen.taken() == [True] * 5


async def test_inline_appends_do_not_replay_and_an_inline_rebuild_does(app_url: str) -> None:
    seen = Seen()
    async with Application(app_url, [seen.projection(kind="inline")]) as app:
        await app.setup()
        await app.store.append("s", happened(2))
        assert seen.taken() == [False] * 2
        await app.rebuild("seen")
        assert seen.taken() == [True] * 2


async def test_a_blue_green_build_replays_and_the_new_version_then_runs_live(
    pg_schema: str,
) -> None:
    seen = Seen()
    url = f"{PG_DSN}?schema={pg_schema}"
    async with Application(url, [seen.projection()]) as old:
        await old.setup()
        await old.store.append("s", happened(4))
        await old.run_until_caught_up()
        seen.taken()

        raised = seen.projection(version=2)
        build = BlueGreenBuild(old.source, old.read_models, raised)
        await build.run()
        assert build.switched
        assert seen.taken() == [True] * 4

        async with Application(url, [raised]) as new:
            await new.store.append("s", happened(1))
            await new.run_until_caught_up()
            assert seen.taken() == [False]
