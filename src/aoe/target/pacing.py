"""When the serving loop naps to let a trickle of frames gather, and when it must not.

A stream that arrives a frame or two per wake-up (writes on a 100 Mbit/s link) costs a
wake-up per frame. After such a wake-up the loop naps until about NAP_FRAMES more are due,
if they come at NAP_RATE frames/s or faster, never past NAP_MAX, and not at all below
NAP_MIN (a nap costs a system call too). A lone request never waits.

A nap only pays when frames keep coming on their own. A peer that sends its next request
only once it has the answer (a filesystem reading its metadata, any I/O at depth one)
looks just as fast from here, yet all it sends during a nap is that one request, right
after the answer: every round trip would last the nap, about ten times longer. Counting
frames cannot tell the two apart once the naps have set the pace. Timing can: a stream
spreads its frames over the nap, the waiting peer's request comes in one piece. So the
loop splits some naps in two halves and counts what arrived in each (the socket's own
count, without receiving). A nap with an empty half was in vain: naps stop for a quiet
spell (QUIET_FIRST, doubled after each nap in vain up to QUIET_MAX); a nap with frames in
both halves makes the next spell short again. Judged are the first nap after a wake-up
that followed none (a waiting peer is caught at its first request) and every
JUDGE_EVERY-th nap in a row (a peer that began to wait amid a stream). A judged nap lasts
JUDGED_NAP, two frames' time at NAP_RATE, the slowest trickle that is napped for, so each
half of a steady one holds a frame however the rate was misjudged from one wake-up.
"""

from __future__ import annotations

from .counters import Counters

NAP_FRAMES = 8
NAP_RATE = 2000.0
NAP_MIN = 0.0002
NAP_MAX = 0.001
QUIET_FIRST = 0.05
QUIET_MAX = 0.4
JUDGE_EVERY = 8
JUDGED_NAP = 2 / NAP_RATE


def nap_after(taken: int, interval: float) -> float:
    """Seconds to let frames gather after a wake-up that took ``taken`` frames
    ``interval`` seconds after the one before (0: go on at once)."""
    if taken >= NAP_FRAMES or taken <= 0 or interval <= 0.0:
        return 0.0
    rate = taken / interval
    if rate < NAP_RATE:
        return 0.0
    nap = (NAP_FRAMES - taken) / rate
    if nap < NAP_MIN:
        return 0.0
    return nap if nap < NAP_MAX else NAP_MAX


class Pacer:
    """The naps of one serving loop, driven by the loop's clock and counts.

    After each wake-up the loop asks :meth:`after`; when it returns a nap and
    :attr:`judging` is set, the loop sleeps it in two halves and reports the frames that
    arrived in each with :meth:`verdict`."""

    def __init__(self, now: float, counters: Counters | None = None) -> None:
        self.counters = counters if counters is not None else Counters()
        self.judging = False  # split the nap just returned and report (verdict)
        self._last = now  # when the wake-up before ended
        self._in_a_row = 0  # naps since the last wake-up that followed none
        self._quiet_until = 0.0  # no nap before this
        self._quiet = QUIET_FIRST  # the next quiet spell

    def after(self, taken: int, now: float) -> float:
        """Seconds to nap after a wake-up that took ``taken`` frames at ``now``."""
        interval = now - self._last
        self._last = now
        self.judging = False
        nap = 0.0 if now < self._quiet_until else nap_after(taken, interval)
        if not nap:
            self._in_a_row = 0
            return 0.0
        self.counters.naps += 1
        self.judging = self._in_a_row % JUDGE_EVERY == 0
        self._in_a_row += 1
        return JUDGED_NAP if self.judging else nap

    def verdict(self, first_half: int, second_half: int, now: float) -> None:
        """Frames that arrived in each half of the nap being judged, seen at ``now``."""
        self.judging = False
        if first_half and second_half:  # spread out: a stream
            self._quiet = QUIET_FIRST
            return
        self.counters.naps_in_vain += 1  # one piece, or nothing: the peer waits for us
        self._quiet_until = now + self._quiet
        self._quiet = min(self._quiet * 2, QUIET_MAX)
        self._in_a_row = 0
