"""The window of one path to a target (local port + target MAC): congestion window, RTT
estimate and retransmit timer.

The window follows AIMD: slow start up to ``ssthresh``, then one frame per window of
answers (applied inline in the session's receive loop); a round of losses halves it. It
grows only while the RTT shows little queueing (see QUEUE_FACTOR), and it never exceeds
the buffer count the target announced, and the target MAC's budget is
shared by every local port reaching it. The retransmit timeout follows the classic
smoothed RTT plus four times the mean deviation, clamped, doubled on each timeout and
reset by the next clean sample. Its floor adapts: a timeout found spurious (the earlier
transmission was answered after all, as when the target was descheduled for longer than
the RTO) lifts the floor above the delay seen, and the floor halves again after
FLOOR_HOLD seconds without another.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..net.rawsock import RawSocket
from ..protocol.constants import ETHERTYPE_AOE, Command
from ..protocol.fastpath import ATA_PREFIX
from ..protocol.mac import format_mac

INITIAL_WINDOW = 4
INITIAL_SLACK = 3  # later frames answered before an earlier one counts as lost
MAX_SLACK = 1023
# The window grows only while the smoothed RTT stays under max(4 x the lowest RTT seen,
# lowest + 2 ms): beyond that, more frames in flight only queue up at the target (or at a
# shaper) and make the RTT, and so the retransmit timer, jittery, with no more throughput.
QUEUE_FACTOR = 4
# Frames in flight per path unless the caller says otherwise (the socket's receive buffer
# may allow fewer). Deep enough to keep a gigabit wire busy while a CPU-capped initiator
# is descheduled (a cgroup quota of 25 % stops it for up to 75 ms of each 100 ms; 128
# frames covered 9 ms at MTU 9000 and capped `aoe copy` at 56-58 MB/s, 1,024 gave 69-79);
# the delay check above keeps the window from filling queues when nothing stalls, and
# the adaptive RTO floor keeps such stalls from causing resends.
MAX_WINDOW = 1024
QUEUE_ALLOWANCE = 0.002
# A spurious timeout lifts the RTO floor to this many times the delay that fooled it ...
FLOOR_MARGIN = 1.5
# ... and the floor halves (down to min_rto) after this many seconds without another.
FLOOR_HOLD = 5.0
VERSION_FLAGS = 0x10  # AoE version 1, no flags


class MacBudget:
    """Frames outstanding at one target MAC, against the buffer count it announced."""

    __slots__ = ("limit", "outstanding")

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.outstanding = 0


class PathWindow:
    """Window, timers and state of one path: a (local interface, target MAC) pair."""

    __slots__ = (
        "index",
        "port",
        "io",
        "tx",
        "ifname",
        "target_mac",
        "budget",
        "frame_sectors",
        "prefix",
        "limit",
        "cwnd",
        "ssthresh",
        "outstanding",
        "srtt",
        "rttvar",
        "rto",
        "min_rto",
        "max_rto",
        "rto_floor",
        "floor_at",
        "last_rx",
        "last_probe_rx",
        "down",
        "timeouts_in_row",
        "next_probe",
        "sent",
        "answered",
        "timeouts",
        "send_errors",
        "pseq",
        "high",
        "recover",
        "txq",
        "slack",
        "min_rtt",
        "delay_target",
        "undo_cwnd",
        "undo_ssthresh",
    )

    def __init__(
        self,
        index: int,
        port: RawSocket,
        target_mac: bytes,
        shelf: int,
        slot: int,
        budget: MacBudget,
        frame_sectors: int,
        rtt0: float,
        min_rto: float,
        max_rto: float,
        max_window: int | None = None,
        now: float = 0.0,
    ) -> None:
        self.index = index
        self.port = port
        self.io: Any = None  # key of the local port this path sends on (set by the session)
        self.tx: Any = None  # the outbox frames to send are written into
        self.ifname = port.ifname
        self.target_mac = target_mac
        self.budget = budget
        self.frame_sectors = frame_sectors
        self.prefix = ATA_PREFIX.pack(
            target_mac, port.mac, ETHERTYPE_AOE, VERSION_FLAGS, 0, shelf, slot, Command.ATA
        )
        limit = budget.limit if max_window is None else max(1, min(budget.limit, max_window))
        self.limit = limit
        self.ssthresh = float(limit)
        self.cwnd = float(min(INITIAL_WINDOW, limit))
        self.outstanding = 0
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.rto_floor = min_rto  # min_rto, or higher after spurious timeouts
        self.floor_at = now
        self.srtt = max(rtt0, 1e-5)
        self.rttvar = self.srtt / 2
        self.rto = min(max_rto, max(min_rto, self.srtt + 4 * self.rttvar))
        self.last_rx = now
        self.last_probe_rx = -1.0
        self.down = False
        self.timeouts_in_row = 0
        self.next_probe = 0.0
        self.sent = 0
        self.answered = 0
        self.timeouts = 0
        self.send_errors = 0
        self.pseq = 0  # transmissions so far on this path
        self.high = 0  # highest transmission number answered
        self.recover = 0  # losses of transmissions up to here belong to the last cut
        self.txq: deque[Any] = deque()  # frames in sending order (loss detection)
        self.slack = INITIAL_SLACK
        self.min_rtt = self.srtt
        self.delay_target = self._delay_target()
        self.undo_cwnd = 0.0  # window before the last cut, while it may still be undone
        self.undo_ssthresh = 0.0

    def has_room(self) -> bool:
        return self.outstanding < self.cwnd and self.budget.outstanding < self.budget.limit

    def _delay_target(self) -> float:
        return max(QUEUE_FACTOR * self.min_rtt, self.min_rtt + QUEUE_ALLOWANCE)

    def sample_rtt(self, rtt: float, lowest: float | None = None) -> None:
        """Fold one clean round-trip measurement into srtt/rttvar and recompute the RTO.

        A batch of answers folds one sample, its latest (``rtt``), with ``lowest`` the
        smallest of the batch for min_rtt: a call per answered frame cost more Python
        than the rest of the answer loop (131,000 calls per 128 MiB at MTU 1500).
        """
        low = rtt if lowest is None or lowest > rtt else lowest
        if low < self.min_rtt:
            self.min_rtt = low
            self.delay_target = self._delay_target()
        err = rtt - self.srtt
        self.srtt += err / 8
        self.rttvar += ((err if err >= 0 else -err) - self.rttvar) / 4
        rto = self.srtt + 4 * self.rttvar
        if rto < self.rto_floor:
            rto = self.rto_floor
        elif rto > self.max_rto:
            rto = self.max_rto
        self.rto = rto

    def on_loss(self) -> None:
        """Multiplicative decrease: one round of losses halves the window."""
        self.undo_cwnd, self.undo_ssthresh = self.cwnd, self.ssthresh
        self.ssthresh = max(1.0, self.cwnd / 2)
        self.cwnd = self.ssthresh

    def reordered(self) -> None:
        """A presumed loss was reordering: widen the slack, undo the last cut once."""
        self.slack = min(MAX_SLACK, 2 * self.slack + 1)
        self._undo_cut()

    def _undo_cut(self) -> None:
        """Take back the last window cut, once: it answered a false alarm."""
        if self.undo_cwnd > self.cwnd:
            self.cwnd, self.ssthresh = self.undo_cwnd, self.undo_ssthresh
        self.undo_cwnd = 0.0

    def on_timeouts(self) -> None:
        """One round of frames unanswered within the RTO: halve, and back the RTO off."""
        self.timeouts += 1
        self.timeouts_in_row += 1
        self.on_loss()
        self.rto = min(self.max_rto, self.rto * 2)

    def late_answer(self, delay: float, now: float) -> None:
        """A timeout was spurious: an answer came ``delay`` s after the first
        transmission. Keep the RTO above such delays for a while; undo the window cut."""
        floor = min(self.max_rto, max(self.rto_floor, FLOOR_MARGIN * delay))
        self.rto_floor = floor
        self.floor_at = now
        if self.rto < floor:
            self.rto = floor
        self._undo_cut()

    def relax_floor(self, now: float) -> None:
        """Halve a raised RTO floor each FLOOR_HOLD s without another spurious timeout."""
        if self.rto_floor > self.min_rto and now - self.floor_at >= FLOOR_HOLD:
            self.rto_floor = max(self.min_rto, self.rto_floor / 2)
            self.floor_at = now

    def on_alive(self, now: float) -> None:
        """Any valid answer on this path: it works."""
        self.last_rx = now
        self.timeouts_in_row = 0
        if self.down:
            self.down = False
            self.cwnd = float(min(INITIAL_WINDOW, self.limit))

    def describe(self) -> str:
        return f"{self.ifname}->{format_mac(self.target_mac)}"
