"""The traffic example the README points at for a lively dashboard."""

from __future__ import annotations

from pathlib import Path

from examples.shop.projections import ALL
from examples.shop.traffic import traffic

from projectionist import Application


async def test_traffic_appends_and_every_projection_catches_up(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    appended = await traffic(url, seconds=1.5, events_per_second=200, period=1.0)
    assert 150 <= appended <= 400
    async with Application(url, ALL) as app:
        statuses = await app.status()
        assert {s.name: s.lag for s in statuses} == {p.name: 0 for p in ALL}
        assert str(statuses[0].head) == f"0/{appended}"
