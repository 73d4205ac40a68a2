"""The application the command-line tests in test_cli_operations.py run (``--url`` sets the
store). Two projections of the same ``Posted`` events: ``lenient`` skips a failing event into
the dead letters, ``strict`` stops on it. Which event numbers fail is a table in the
read-model database (``broken``), so a test "fixes" the handlers of every process at once.
"""

from __future__ import annotations

from projectionist import Application, Projection, ReadModelTransaction, RecordedEvent


def numbered(name: str, on_error: str) -> Projection:
    projection = Projection(name, tables=[f"{name}_seen"], on_error=on_error, batch_size=100)

    @projection.setup
    async def create(tx: ReadModelTransaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS broken (n BIGINT PRIMARY KEY)")
        await tx.execute(f"CREATE TABLE IF NOT EXISTS {name}_seen (n BIGINT PRIMARY KEY)")

    @projection.on("Posted")
    async def posted(event: RecordedEvent, tx: ReadModelTransaction) -> None:
        n = event.data["n"]
        if await tx.fetchval("SELECT count(*) FROM broken WHERE n = $1", n):
            raise ValueError(f"event {n} is broken")
        await tx.execute(f"INSERT INTO {name}_seen VALUES ($1)", n)

    return projection


PROJECTIONS = [numbered("lenient", "skip"), numbered("strict", "stop")]
app = Application("memory://", PROJECTIONS, poll_interval=0.2)
