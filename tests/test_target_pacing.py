"""When the serving loop naps to let a trickle of frames gather, and when it must not
(aoe.target.pacing): driven by a simulated clock, then a real `aoe serve` in the lab."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from bisect import bisect_left, bisect_right
from pathlib import Path

import pytest

from aoe.lab import Lab
from aoe.lab.pair import make_two_hosts
from aoe.protocol import AtaOpcode
from aoe.target.pacing import (
    JUDGE_EVERY,
    NAP_FRAMES,
    NAP_MAX,
    NAP_MIN,
    QUIET_FIRST,
    QUIET_MAX,
    Pacer,
    nap_after,
)

from .support.target import Client, make_image, start_pyaoe


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


# --- the pacer against simulated peers ---------------------------------------------------
# The loop as simulated: a wake-up takes what has arrived, spends WORK answering it, asks
# the pacer, and naps; a judged nap is counted in halves, as the loop counts with the
# socket's PACKET_STATISTICS.

WORK = 20e-6


class NapAfterAlone:
    """The loop as it was before the pacer judged its naps: nap_after on every wake-up."""

    judging = False

    def __init__(self, now: float) -> None:
        self.last = now

    def after(self, taken: int, now: float) -> float:
        interval, self.last = now - self.last, now
        return nap_after(taken, interval)

    def verdict(self, first_half: int, second_half: int, now: float) -> None:
        raise AssertionError("never judges")


def _in(times: list[float], start: float, end: float) -> int:
    return bisect_left(times, end) - bisect_left(times, start)


def chain(pacer: Pacer | NapAfterAlone, requests: int, turnaround: float, frames: int = 1,
          start: float = 0.0) -> float:
    """A peer that sends its next request (``frames`` frames at once) ``turnaround``
    seconds after it has the answer to the one before; the clock once all are answered."""
    now = start + WORK
    for _ in range(requests):
        nap = pacer.after(frames, now)  # the request was taken and answered
        comes = now + turnaround  # the next one
        if nap and pacer.judging:
            half = now + nap / 2
            pacer.verdict(_in([comes], now, half), _in([comes], half, now + nap), now + nap)
        now = max(now + nap, comes) + WORK
    return now


def stream(pacer: Pacer | NapAfterAlone, frames: int, spacing: float,
           start: float = 0.0) -> tuple[int, float]:
    """A peer whose frames arrive every ``spacing`` seconds whatever the loop does (writes
    paced by a slow wire). Returns (wake-ups, the clock at the end)."""
    arrivals = [start + (i + 1) * spacing for i in range(frames)]
    now, taken_all, wakeups = start, 0, 0
    while taken_all < frames:
        now = max(now, arrivals[taken_all])  # the receive blocks until a frame is there
        taken = bisect_right(arrivals, now) - taken_all
        taken_all += taken
        wakeups += 1
        now += WORK
        nap = pacer.after(taken, now)
        if nap and pacer.judging:
            half = now + nap / 2
            pacer.verdict(_in(arrivals, now, half), _in(arrivals, half, now + nap), now + nap)
        now += nap
    return wakeups, now


@pytest.mark.parametrize(("frames", "turnaround"),
                         [(1, 100e-6), (1, 300e-6), (2, 300e-6), (3, 300e-6), (4, 300e-6),
                          (4, 600e-6)])
def test_a_peer_that_waits_for_each_answer_is_not_made_to_wait(frames: int,
                                                              turnaround: float) -> None:
    # 2,000 requests (a filesystem reading its metadata, fio at depth one) look like a
    # fast trickle to nap_after, which alone naps for every request or every other one:
    # the round trip grows from `turnaround` towards NAP_MAX.
    unpaced = 2000 * (turnaround + WORK)
    old = chain(NapAfterAlone(0.0), 2000, turnaround, frames)
    assert old - unpaced >= 2000 * NAP_MIN
    pacer = Pacer(0.0)
    end = chain(pacer, 2000, turnaround, frames)
    assert pacer.counters.naps_in_vain >= 1
    assert end - unpaced <= NAP_MAX * pacer.counters.naps_in_vain * 1.000001
    assert end - unpaced < 0.02 * unpaced


@pytest.mark.parametrize("frames", [1, 4])
def test_a_long_chain_tries_a_nap_again_at_most_every_quiet_max(frames: int) -> None:
    pacer = Pacer(0.0)
    end = chain(pacer, 20_000, 400e-6, frames)  # eight seconds
    spells_growing = 1
    while QUIET_FIRST * 2 ** spells_growing < QUIET_MAX:
        spells_growing += 1
    assert 1 <= pacer.counters.naps_in_vain <= spells_growing + 1 + end / QUIET_MAX
    assert pacer.counters.naps == pacer.counters.naps_in_vain


@pytest.mark.parametrize("spacing", [50e-6, 87e-6, 120e-6, 200e-6, 300e-6])
def test_a_trickle_is_gathered_as_before(spacing: float) -> None:
    # Frames every 87 µs: 1 KiB writes on a 100 Mbit/s wire.
    pacer = Pacer(0.0)
    wakeups, _ = stream(pacer, 4000, spacing)
    # (a nap judged after the last frame finds none: the stream ended)
    assert pacer.counters.naps_in_vain <= 1 and pacer.counters.naps >= wakeups // 3
    assert wakeups <= 4000 // 2  # against one wake-up per frame without naps
    assert wakeups <= stream(NapAfterAlone(0.0), 4000, spacing)[0]


def test_a_trickle_after_a_chain_is_gathered_again_within_quiet_max() -> None:
    pacer = Pacer(0.0)
    now = chain(pacer, 20_000, 200e-6)  # long enough for the spells to reach QUIET_MAX
    _, now = stream(pacer, int(QUIET_MAX / 87e-6) + 1, 87e-6, start=now)  # quiet still
    wakeups, end = stream(pacer, 10_000, 87e-6, start=now)
    assert wakeups <= 10_000 // 3
    # The naps that gathered made the spells short again (the one judged after the
    # stream's last frame, in vain, doubled it once): a chain that starts later has one
    # nap in vain, and tries again well before QUIET_MAX.
    in_vain = pacer.counters.naps_in_vain
    end = chain(pacer, 5, 100e-6, start=end + QUIET_MAX)
    assert pacer.counters.naps_in_vain == in_vain + 1
    chain(pacer, 10, 100e-6, start=end + 2 * QUIET_FIRST)
    assert pacer.counters.naps_in_vain == in_vain + 2 and 2 * QUIET_FIRST < QUIET_MAX


def test_a_peer_that_starts_to_wait_amid_a_stream_is_caught() -> None:
    # Naps in a row (each topping up the last) are judged every JUDGE_EVERY-th time.
    pacer = Pacer(0.0)
    _, end = stream(pacer, 100, 87e-6)
    in_vain = pacer.counters.naps_in_vain
    chain(pacer, 50, 300e-6, 4, start=end)
    assert pacer.counters.naps_in_vain == in_vain + 1
    assert pacer.counters.naps <= 100 // 2 + JUDGE_EVERY


# --- a real target -------------------------------------------------------------------------

def _counters(rt_proc: subprocess.Popen[str]) -> dict[str, int]:
    """The target's counters, dumped on SIGUSR1 as a JSON line."""
    rt_proc.send_signal(signal.SIGUSR1)
    assert rt_proc.stdout is not None
    return json.loads(rt_proc.stdout.readline())["counters"]  # type: ignore[no-any-return]


@pytest.mark.netns
def test_aoe_serve_naps_for_a_paced_stream_but_not_for_a_chain(lab: Lab,
                                                                tmp_path: Path) -> None:
    """On a cable shaped to 100 Mbit/s: writes sent all at once reach the target paced by
    the wire, and it gathers them; reads sent one after the other's answer never nap
    more than a try per quiet spell."""
    th = make_two_hosts(lab, rate="100mbit")
    rt = start_pyaoe(th, make_image(tmp_path / "d.img", 4 << 20), tmp_path / "st", "--json")
    client = Client(th.initiator)
    try:
        for i in range(300):  # the chain
            req = client.ata(rt.mac, rt.shelf, rt.slot, AtaOpcode.READ_SECTORS_EXT, i * 2, 2)
            assert client.request(req) is not None
        after_chain = _counters(rt.proc)
        assert after_chain["reads"] == 300
        assert after_chain["naps"] <= 5 and after_chain["naps_in_vain"] <= 5

        time.sleep(QUIET_MAX)  # the chain's last nap in vain began a quiet spell
        data = bytes(range(256)) * 4
        tags = []
        for i in range(400):  # the stream: tbf lets one frame through every 90 µs
            req = client.ata(rt.mac, rt.shelf, rt.slot, AtaOpcode.WRITE_SECTORS_EXT, i * 2, 2,
                             data, write=True)
            tags.append(req.tag)
            client.send(req)
        got = client.gather(None, 10.0, want=400)
        assert {r.frame.tag for r in got} == set(tags)
        after_stream = _counters(rt.proc)
        assert after_stream["writes"] == 400
        naps = after_stream["naps"] - after_chain["naps"]
        bursts = after_stream["bursts"] - after_chain["bursts"]
        assert naps >= 10 and bursts <= 400 // 3
        assert after_stream["naps_in_vain"] - after_chain["naps_in_vain"] <= 3
    finally:
        client.close()
        rt.stop(lab)
