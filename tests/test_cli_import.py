"""``projectionist import --from-jsonl`` through Typer's runner, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from projectionist import START, create_store
from projectionist.cli import app
from tests.conftest import PG_DSN


def lines(count: int, bad_at: int | None = None) -> str:
    made = []
    for n in range(count):
        event: dict[str, object] = {
            "stream_id": f"order-{n % 5}",
            "version": n // 5 + 1,
            "type": "Placed",
            "data": {"n": n},
        }
        if n % 2:
            event |= {"metadata": {"by": "legacy"}, "id": str(uuid.UUID(int=n + 1))}
            event["recorded_at"] = "2020-01-01T00:00:00+00:00"
        made.append(json.dumps(event) if n != bad_at else '{"stream_id": "order-0", "version"')
    return "\n".join(made) + "\n\n"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path, pg_schema: str) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    return f"{PG_DSN}?schema={pg_schema}"


async def invoke(args: list[str], **options: object) -> Result:
    """The command in a thread: it runs its own event loop (asyncio.run)."""
    return await asyncio.to_thread(CliRunner().invoke, app, args, **options)  # type: ignore[arg-type]


async def stored(url: str) -> list[tuple[str, int | None]]:
    async with create_store(url) as store:
        batch = await store.read_all(START, limit=1000)
    return [(e.stream_id, e.version) for e in batch.events]


async def test_import_from_a_file_and_stdin(url: str, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text(lines(47))
    done = await invoke(["import", "--url", url, "--from-jsonl", str(source), "--create-schema"])
    assert done.exit_code == 0, done.output
    assert "imported 47 events" in done.stdout and "into 5 streams" in done.stdout
    assert len(await stored(url)) == 47
    again = await invoke(
        ["import", "--json", "--batch-size", "10"],
        input=lines(50),
        env={"PROJECTIONIST_URL": url, "PROJECTIONIST_IMPORT_FROM_JSONL": "-"},
    )
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert (summary["events"], summary["skipped"], summary["batches"]) == (3, 47, 5)
    assert await stored(url) == [(f"order-{n % 5}", n // 5 + 1) for n in range(50)]


async def test_a_bad_line_is_named_and_its_batch_not_written(url: str, tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    source.write_text(lines(30, bad_at=23))
    args = ["import", "--url", url, "--from-jsonl", str(source), "--batch-size", "10"]
    done = await invoke([*args, "--create-schema"])
    assert done.exit_code == 1
    assert "line 24: not JSON" in done.stderr and "20 events of earlier batches" in done.stderr
    assert len(await stored(url)) == 20
    source.write_text(lines(30).replace('"version": 6', '"version": 9', 1))
    gap = await invoke(args)
    assert gap.exit_code == 1 and "line 26: stream 'order-0'" in gap.stderr, gap.stderr
    assert "a gap" in gap.stderr and len(await stored(url)) == 20


async def test_a_line_the_store_refuses_is_named_after_the_next_batch_was_read(
    url: str, tmp_path: Path
) -> None:
    """Refused when its batch is written (against the stored events), while the import has
    read the next batch already: still named by its line."""
    source = tmp_path / "events.jsonl"
    source.write_text(lines(20))
    args = ["import", "--url", url, "--from-jsonl", str(source), "--batch-size", "10"]
    assert (await invoke([*args, "--create-schema"])).exit_code == 0
    source.write_text(lines(50).replace(str(uuid.UUID(int=14)), str(uuid.UUID(int=999))))
    done = await invoke(args)
    assert done.exit_code == 1
    assert "line 14: stream 'order-3' already has version 3" in done.stderr, done.stderr
    assert len(await stored(url)) == 20


def test_refusals_before_anything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    runner = CliRunner()
    missing = runner.invoke(app, ["import", "--url", url, "--from-jsonl", "-"], input="")
    assert missing.exit_code == 1 and "no projectionist schema" in missing.stderr
    nofile = runner.invoke(
        app, ["import", "--url", url, "--from-jsonl", str(tmp_path / "x"), "--create-schema"]
    )
    assert nofile.exit_code == 1 and "cannot read" in nofile.stderr
    unknown = runner.invoke(
        app,
        ["import", "--url", url, "--from-jsonl", "-", "--create-schema"],
        input='{"stream": "a", "version": 1, "type": "T", "data": {}}\n',
    )
    assert unknown.exit_code == 1 and "line 1: missing stream_id; unknown field(s) stream" in (
        unknown.stderr
    )
