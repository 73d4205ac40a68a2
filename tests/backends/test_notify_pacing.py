"""The NOTIFY pacer: a burst goes out at once, then one NOTIFY per interval on average."""

from __future__ import annotations

from projectionist.backends.postgres.notifications import NOTIFY_BURST, Pacer


def test_a_burst_goes_out_at_once_then_one_per_interval() -> None:
    # An interval far longer than any pause of a loaded machine between two calls: the
    # bounds hold however slowly this test runs.
    pacer = Pacer(interval=1000.0)
    assert [pacer.delay() for _ in range(NOTIFY_BURST)] == [0.0] * NOTIFY_BURST
    first, second = pacer.delay(), pacer.delay()
    assert 990 < first <= 1000  # the next token arrives one interval after the burst
    assert 1990 < second <= 2000  # and the one after it, an interval later again


def test_no_interval_means_no_pacing() -> None:
    pacer = Pacer(interval=0.0)
    assert [pacer.delay() for _ in range(3 * NOTIFY_BURST)] == [0.0] * (3 * NOTIFY_BURST)
