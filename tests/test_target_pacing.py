"""When the serving loop naps to let a trickle of frames gather (nap_after)."""

from __future__ import annotations

import pytest

from aoe.target.server import NAP_FRAMES, NAP_MAX, NAP_MIN, nap_after


def test_a_write_stream_on_a_100_mbit_link_is_gathered() -> None:
    # One 1 KiB frame every 87 µs, taken one or two per wake-up: wait for about
    # NAP_FRAMES of them, but never longer than NAP_MAX.
    one = nap_after(1, 87e-6)
    two = nap_after(2, 174e-6)
    assert NAP_MIN <= one <= NAP_MAX and NAP_MIN <= two <= NAP_MAX
    assert one == pytest.approx(min((NAP_FRAMES - 1) * 87e-6, NAP_MAX))
    assert nap_after(1, 1e-5) == 0.0  # so fast that the wait would be shorter than NAP_MIN


@pytest.mark.parametrize(("taken", "interval"), [
    (NAP_FRAMES, 1e-4),  # a burst: already efficient
    (40, 1e-3),
    (1, 0.05),  # a lone request after a pause: answered at once
    (1, 1.0),
    (0, 1e-4),  # a timeout wake-up
    (3, 0.0),
])
def test_bursts_and_lone_requests_never_wait(taken: int, interval: float) -> None:
    assert nap_after(taken, interval) == 0.0
