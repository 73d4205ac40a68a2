"""The NOTIFY pacer: a burst goes out at once, then one NOTIFY per interval on average."""

from __future__ import annotations

from projectionist.backends.postgres.notifications import NOTIFY_BURST, Pacer


def test_a_burst_goes_out_at_once_then_one_per_interval() -> None:
    pacer = Pacer(interval=1.0)
    assert [pacer.delay() for _ in range(NOTIFY_BURST)] == [0.0] * NOTIFY_BURST
    first, second = pacer.delay(), pacer.delay()
    assert 0.9 < first <= 1.0  # the next token arrives one interval after the burst
    assert 1.9 < second <= 2.0  # and the one after it, an interval later again


def test_no_interval_means_no_pacing() -> None:
    pacer = Pacer(interval=0.0)
    assert [pacer.delay() for _ in range(3 * NOTIFY_BURST)] == [0.0] * (3 * NOTIFY_BURST)
