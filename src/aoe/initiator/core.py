"""The session core: every decision of an initiator session, without sockets or clocks.

The core is driven from outside, in the manner of a sans-I/O protocol object: the I/O
layer (session.py) hands it requests, batches of received frames and the time, and the
core answers with frames to send and requests that are over. It never reads a clock,
opens a socket or sleeps, so its hardest logic (window, RTT/RTO, retransmit, dead target,
multipath) can be tested with a fake clock and hand-made answers.

* :meth:`SessionCore.submit` queues a request; :meth:`SessionCore.next_frames` cuts queued
  requests into frames while windows have room;
* :meth:`SessionCore.on_answers` takes one received batch (a buffer of fixed-size slots and
  their lengths, as recvmmsg fills it) and copies read data straight from the slots into
  the callers' buffers;
* :meth:`SessionCore.on_timer` retransmits what is overdue, marks silent paths down, builds
  Query Config probes for them, and says when the target is to be declared dead;
* :meth:`SessionCore.take_completed` hands back the requests that ended (``error`` says how).

Frames to send are written as send instructions into each path's *outbox* (``path.tx``),
an object the I/O layer provides: ``BATCH`` header slots of ``TX_HEAD`` bytes in ``buf``,
``queued``, and per slot ``data_addrs``/``data_lens`` naming a write's payload where the
caller's buffer holds it (so payload is never copied). When an outbox is full the core
calls its ``flush()`` to have it drained; everything else about sending is the I/O
layer's business. ``path.io`` is an opaque key for the local port a path sends on: an
answer counts only if it arrived on the port its tag went out on.

Tags: every transmission gets a fresh tag (sequence number << 8 | path index); a frame
keeps all its tags while outstanding, so a late answer to an earlier transmission still
counts, while answers to unknown tags (stale, duplicated, forged) are dropped and counted.
A frame is resent at once when frames sent after it on its path were answered (with a
slack that widens if the path turns out to reorder), otherwise by the timer once it is
older than its path's RTO, preferring another path. The timer also declares the target
dead when nothing at all was heard for ``dead_timeout`` seconds while work was
outstanding. A path that keeps timing out is marked down and probed with Query Config
until it answers. Window and RTT arithmetic lives in window.py; the growth step is inlined
in on_answers, the per-frame hot path.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from .. import accel
from ..lazylog import get_logger
from ..net.mmsg import buffer_address
from ..protocol import (
    AoeError,
    AtaErrorBits,
    AtaFlag,
    AtaOpcode,
    AtaStatus,
    Command,
    ConfigBody,
    ConfigCommand,
    Frame,
    encode,
)
from ..protocol import fastpath as fp
from ..protocol.constants import ATA_HEADER_LEN, ETH_MIN_FRAME, SECTOR_SIZE
from .errors import (
    AtaCommandError,
    InitiatorError,
    MtuMismatchError,
    TargetDeadError,
    TargetError,
    TargetReadOnlyError,
    TargetReservedError,
)
from .window import MacBudget, PathWindow

log = get_logger("aoe.initiator")

ATA_TX = fp.ATA_REQUEST
RX = fp.ATA_ANSWER
RX_HEADER = fp.AOE_AFTER_MACS
TAG_LE = fp.TAG_LE
ERR_STATUS = int(AtaStatus.ERR | AtaStatus.DF)
EXTENDED = int(AtaFlag.EXTENDED)
WRITE = int(AtaFlag.WRITE)  # plain ints: enum arithmetic costs a call per request
BATCH = 64  # header slots per outbox (frames per sendmmsg)
TX_HEAD = 64  # bytes per header slot in an outbox
RUN_FRAMES = 16  # frames of one request sent in a row before the next request's turn
TAG_SEQ_MASK = 0x7FFFFF
PATH_DOWN_AFTER = 3  # rounds of timeouts in a row with no answer at all
MIN_QUEUED_WINDOW = 8.0  # delay alone never shrinks the window below this
PROBE_INTERVAL = 0.5
REVIVE_FIRST = 0.25  # after a death, the first Query Config probe; doubled up to ...
REVIVE_MAX = 4.0  # ... this many seconds between probes
MAX_OTHER_MACS = 16  # strangers remembered (one is enough to act on)
# Wake-up coalescing: when a wake-up brought few answers while more requests wait for
# room in the window (a bulk transfer paced by a slow wire; not small random requests all
# in flight, each awaited by its caller), the I/O loop waits for more to arrive before it
# works again: measured at 100 Mbit/s, one wake-up per 2-5 frames spent the whole CPU
# quota of a netbook on system calls. It waits for up to NAP_FRAMES answers, and never
# for more than half of the frames in flight, so the other half still queued keeps the
# wire busy while it sleeps: a small window naps too (a target that allows 16 frames, as
# vblade does, or a window the delay control cut after a stall; woken per frame, either
# spent twice the CPU per byte, stalled more and stayed there). The wait never exceeds
# NAP_MAX, and one shorter than NAP_MIN is not taken (a sleep that short costs more than
# it saves; on a fast wire the answers already come in batches). 32 frames and 4 ms (MTU
# 9000 frames take 2.2 ms on a gigabit wire) rather than 16 and 2: 23-32 % less CPU per
# byte at MTU 1500 and 9 % at 9000, the same rate.
NAP_FRAMES = 32
NAP_MIN = 0.0002
NAP_MAX = 0.004
INF = float("inf")

# The compiled core loops (_compiled.c), when the install could build them. AOE_ACCEL=0
# keeps the Python loops, which are the reference either way.
AnswersFn = Callable[[dict[int, "InFlight"], list[PathWindow], list["Request"],
                      Callable[[PathWindow, float], None], float, object, Any, Sequence[int],
                      int, int, int, bytes], tuple[int, int]]
CutFn = Callable[[deque["Request"], dict[int, "InFlight"], PathWindow, int, float, int, int],
                 tuple[int, int]]


class Request:
    """One caller operation: a run of sectors (or a flush) and its completion."""

    __slots__ = (
        "cmd",
        "aflags",
        "lba_bits",
        "is_write",
        "mv",
        "lba",
        "next_lba",
        "next_off",
        "remaining",
        "frames_out",
        "nodata",
        "error",
        "lock",
        "addr",
        "on_done",
    )

    def __init__(
        self,
        cmd: int,
        aflags: int,
        lba: int,
        sectors: int,
        mv: memoryview | None,
        on_done: Callable[[Request], None] | None = None,
    ) -> None:
        self.cmd = int(cmd)
        self.aflags = aflags = int(aflags)
        self.is_write = bool(aflags & WRITE)
        self.lba_bits = 0 if aflags & EXTENDED else 0xE0000000  # LBA28: LBA mode bits
        self.mv = mv
        self.lba = lba
        self.next_lba = lba
        self.next_off = 0
        self.nodata = mv is None
        self.remaining = 1 if mv is None else sectors  # a flush is one pseudo-sector
        self.frames_out = 0
        self.error: InitiatorError | None = None
        # Completion: a waiting caller's lock, released by the I/O thread, or (for
        # submit) a callback that the I/O thread calls instead.
        self.on_done = on_done
        self.lock: threading.Lock | None = None
        if on_done is None:
            self.lock = threading.Lock()
            self.lock.acquire()
        # Frames of a write are sent straight from the caller's buffer (no copy).
        self.addr = buffer_address(mv) if mv is not None and self.is_write else 0

    def finish(self) -> None:
        """Tell whoever waits that the request is over (its ``error`` says how)."""
        if self.on_done is None:
            self.lock.release()  # type: ignore[union-attr]
            return
        try:
            self.on_done(self)
        except Exception:  # a caller's callback must never stop the I/O thread
            log.exception("completion callback failed")


class InFlight:
    """One outstanding ATA command on the wire."""

    __slots__ = ("req", "lba", "count", "off", "nbytes", "path", "tag", "old_tags", "sent",
                 "first", "tries", "pseq", "done", "fast")

    def __init__(self, req: Request, lba: int, count: int, off: int, nbytes: int, path: PathWindow,
                 tag: int, pseq: int, now: float) -> None:
        """A frame as it is first sent: on ``path`` with ``tag`` at ``now``."""
        self.req = req
        self.lba = lba
        self.count = count
        self.off = off
        self.nbytes = nbytes
        self.path = path
        self.tag = tag
        self.old_tags: list[int] | None = None  # earlier transmissions, still accepted
        self.sent = now
        self.first = now
        self.tries = 1
        self.pseq = pseq  # send sequence number on its current path
        self.done = False
        self.fast = False  # resent because later frames were answered first


def _load_compiled() -> tuple[AnswersFn, CutFn] | None:
    """The compiled loops, told where the fields of the classes they use live."""
    if not accel.wanted():
        return None
    try:
        from ._compiled import answers, configure, cut
    except ImportError:
        return None
    configure(InFlight, Request, PathWindow, MacBudget)
    return answers, cut


COMPILED: tuple[AnswersFn, CutFn] | None = _load_compiled()


@dataclass
class SessionStats:
    """Counters a user or test can read (a snapshot; see Session.stats)."""

    frames_sent: int = 0
    retransmits: int = 0
    fast_retransmits: int = 0  # of those, sent because later frames were answered
    spurious_retransmits: int = 0  # fast ones whose first transmission was answered after all
    spurious_timeouts: int = 0  # timed-out frames whose earlier transmission was answered
    answers: int = 0
    stale_or_duplicate: int = 0  # answer to a tag not outstanding (late, duplicated, forged)
    wrong_source: int = 0  # right tag, but from another MAC or another port
    wrong_address: int = 0  # right tag, but another shelf.slot
    wrong_length: int = 0  # right tag, but not the expected number of bytes
    bad_frames: int = 0  # unreadable, wrong version, or an answer to a command we never send
    send_errors: int = 0
    port_errors: int = 0  # receive errors, e.g. an interface going down
    path_failovers: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _room(path: PathWindow) -> int:
    """Frames ``path`` may send now: what its window (``outstanding < cwnd`` before each
    frame) and the target's buffers allow."""
    gap = path.cwnd - path.outstanding
    if gap <= 0:
        return 0
    frames = int(gap)
    if frames < gap:
        frames += 1
    budget = path.budget
    free = budget.limit - budget.outstanding
    return frames if frames < free else free


class SessionCore:
    """Requests, tags, windows, timers and path state of one shelf.slot (module docstring).

    ``paths`` are the ways to the target, indexed by position (at most 256), each with
    its outbox (``tx``) and port key (``io``) set by the I/O layer.
    """

    def __init__(self, shelf: int, slot: int, paths: Sequence[PathWindow], *,
                 dead_timeout: float = 10.0, give_up: float | None = 0.0,
                 now: float = 0.0) -> None:
        if not paths:
            raise ValueError("a session needs at least one path")
        self.shelf, self.slot = shelf, slot
        self.dead_timeout = dead_timeout
        # Recovery. After a death, I/O fails at once (``dead`` says why) while Query
        # Config probes go out, backing off; when the target answers, an IDENTIFY checks
        # that it is the same device (``identity``: serial, sectors) before I/O resumes.
        # ``give_up``: seconds of probing before the session ends (None: never; 0: at death).
        self.give_up = give_up
        self.identity: tuple[str, int] | None = None
        self.dead: InitiatorError | None = None
        self.dead_at = 0.0
        self.revivals = 0  # times the target came back
        # MACs outside the paths that answered Query Config for this address (port, MAC):
        # another target claiming it, or a path discovery did not see (AoeDisk's owner check)
        self.other_macs: list[tuple[object, bytes]] = []
        self._revive_at = INF
        self._revive_step = REVIVE_FIRST
        self._check: Request | None = None  # the IDENTIFY of a target that answered again
        self.paths: list[PathWindow] = list(paths)
        self._rx_ok = fp.answer_key(shelf, slot)
        self.tags: dict[int, InFlight] = {}
        self.pending: deque[Request] = deque()
        # Requests done (or failed) whose callers are to be woken once the outboxes are
        # flushed: a resend queued meanwhile may still point into a write's buffer, which
        # the caller is free to reuse once woken.
        self.completed: list[Request] = []
        self.stats = SessionStats()
        self.next_check = INF  # when on_timer wants to run next
        self.last_rx = now  # last valid data answer on any path
        self._seq = 0
        self._rr = 0
        self._turn = 0  # frames cut in a row from the request at the head of pending
        self._rx_views: dict[tuple[int, int, int], tuple[memoryview, list[memoryview]]] = {}
        self._compiled_answers: AnswersFn | None = COMPILED[0] if COMPILED else None
        self._compiled_cut: CutFn | None = COMPILED[1] if COMPILED else None

    @property
    def address(self) -> str:
        return f"{self.shelf}.{self.slot}"

    # --- requests in and out ---------------------------------------------------------
    def submit(self, req: Request) -> None:
        """Queue ``req``; one with nothing to move is over at once."""
        if req.remaining <= 0:
            self.completed.append(req)
        else:
            self.pending.append(req)

    def nap(self, received: int) -> float:
        """Seconds the I/O loop should let answers accumulate after a wake-up that brought
        ``received`` of them (0: go on at once)."""
        if received == 0 or not self.pending:
            return 0.0  # nothing waits for the window: answers are wanted at once
        best = 0.0
        for path in self.paths:
            out = path.outstanding
            gather = out >> 1 if out < 2 * NAP_FRAMES else NAP_FRAMES
            if received < gather:
                # By Little's law answers arrive every srtt / outstanding seconds.
                wait = (gather - received) * path.srtt / out
                if wait > best:
                    best = wait
        if best < NAP_MIN:
            return 0.0
        return best if best < NAP_MAX else NAP_MAX

    def take_completed(self) -> list[Request]:
        """The requests that ended since the last call (to be woken after a flush)."""
        done = self.completed
        self.completed = []
        return done

    def fail_all(self) -> list[Request]:
        """Drop every queued and outstanding request (the session ends): return them,
        without touching their outcome; requests already completed stay in completed."""
        reqs: dict[int, Request] = {}
        for frame in self.tags.values():
            frame.done = True  # never resent: a session that goes on may still look at it
            reqs.setdefault(id(frame.req), frame.req)
        for req in self.pending:
            reqs.setdefault(id(req), req)
        self.tags.clear()
        self.pending.clear()
        for p in self.paths:
            p.outstanding = 0
            p.budget.outstanding = 0
            p.txq.clear()
        self.next_check = self._revive_at  # INF unless probing for a dead target
        return list(reqs.values())

    # --- sending ----------------------------------------------------------------------
    def _pick_path(self) -> PathWindow | None:
        """A path with room in its window: round robin over the live ones."""
        paths = self.paths
        live = [p for p in paths if not p.down] or paths
        start = self._rr
        for i in range(len(live)):
            p = live[(start + i) % len(live)]
            if p.has_room():
                self._rr = (start + i + 1) % len(live)
                return p
        return None

    def _retry_path(self, failed: PathWindow, sectors: int) -> PathWindow:
        """Where to resend a lost frame of ``sectors`` sectors: another live path whose
        frames are that big, if there is one."""
        others = [p for p in self.paths
                  if p is not failed and not p.down and p.frame_sectors >= sectors]
        if not others:
            return failed
        return min(others, key=lambda p: p.outstanding / p.cwnd)

    def next_frames(self, now: float) -> None:
        """Cut pending requests into frames, into the outboxes, while some path has room
        in its window.

        With one path, :meth:`_cut` sends as many frames as the window and the target's
        buffers allow, request after request, in one tight loop with the counters updated
        once. With several paths each frame picks its path (round robin), so runs are one
        frame long there.
        """
        pending = self.pending
        if len(self.paths) == 1:
            path = self.paths[0]
            room = _room(path)
            if pending and room > 0:
                self._cut(path, room, now)
        else:
            path = self.paths[0]
            while pending:
                picked = self._pick_path()
                if picked is None:
                    break
                path = picked
                self._cut(path, 1, now)
        if self.next_check == INF and self.tags:
            self.next_check = now + path.rto

    def _cut(self, path: PathWindow, room: int, now: float) -> None:
        """Send up to ``room`` frames of the pending requests on ``path``: through the
        compiled loop when there is one, else :meth:`_cut_python`."""
        fast = self._compiled_cut
        if fast is None:
            self._cut_python(path, room, now)
        else:
            self._seq, self._turn = fast(self.pending, self.tags, path, room, now, self._seq,
                                         self._turn)

    def _cut_python(self, path: PathWindow, room: int, now: float) -> None:
        """Send up to ``room`` frames of the pending requests, from the head, on ``path``.

        A request sends RUN_FRAMES frames in a row and then, if others wait, goes to the
        back (adjacent sectors in a row let the target read or write them with one call);
        it leaves pending once its last frame is cut. The first transmission of a frame
        is written out here rather than through _transmit: this is the per-frame hot path,
        and with small requests (random 4 KiB I/O) a per-request one too.
        """
        pending = self.pending
        tx = path.tx
        q = tx.queued
        tags = self.tags
        txq = path.txq
        pack = ATA_TX.pack_into
        buf = tx.buf
        prefix = path.prefix
        index = path.index
        data_addrs, data_lens = tx.data_addrs, tx.data_lens
        step = path.frame_sectors
        seq = self._seq
        pseq = path.pseq
        run = self._turn
        cut = 0
        while pending and cut < room:
            if q == BATCH:
                tx.queued = q
                tx.flush()
                q = 0
            req = pending[0]
            nodata = req.nodata
            remaining = req.remaining
            if nodata:
                most, k = 0, 1  # a flush: one frame, no sectors
            else:
                most = step
                k = (remaining + step - 1) // step
            several = len(pending) > 1
            if several and k > RUN_FRAMES - run:
                k = RUN_FRAMES - run
            if k > room - cut:
                k = room - cut
            if k > BATCH - q:
                k = BATCH - q
            aflags, cmd, bits = req.aflags, req.cmd, req.lba_bits
            is_write, addr = req.is_write, req.addr
            lba = req.next_lba
            off = req.next_off
            for _ in range(k):
                n = remaining if remaining < most else most
                nbytes = n * SECTOR_SIZE
                seq = (seq + 1) & TAG_SEQ_MASK
                tag = (seq << 8) | index
                pseq += 1
                frame = InFlight(req, lba, n, off, nbytes, path, tag, pseq, now)
                tags[tag] = frame
                txq.append(frame)
                wire_lba = lba | bits
                pack(buf, q * TX_HEAD, prefix, tag, aflags, 0, n, cmd, wire_lba & 0xFFFFFFFF,
                     wire_lba >> 32)
                if is_write:
                    data_addrs[q] = addr + off
                    data_lens[q] = nbytes
                else:
                    data_lens[q] = 0
                q += 1
                lba += n
                off += nbytes
                remaining -= n
            cut += k
            req.next_lba = lba
            req.next_off = off
            req.frames_out += k
            req.remaining = remaining = 0 if nodata else remaining
            if remaining == 0:
                pending.popleft()
                run = 0
            elif several:
                run += k
                if run >= RUN_FRAMES:
                    pending.rotate(-1)
                    run = 0
        tx.queued = q
        self._seq = seq
        self._turn = run
        path.pseq = pseq
        path.outstanding += cut
        path.budget.outstanding += cut
        path.sent += cut

    def _queue_frame(self, frame: InFlight, path: PathWindow, tag: int) -> None:
        """Put the frame in the path's outbox: its header in a slot, a write's data
        referenced where the caller's buffer holds it."""
        req = frame.req
        lba = frame.lba | req.lba_bits
        tx = path.tx
        q = tx.queued
        if q == BATCH:
            tx.flush()
            q = 0
        ATA_TX.pack_into(tx.buf, q * TX_HEAD, path.prefix, tag, req.aflags, 0, frame.count,
                         req.cmd, lba & 0xFFFFFFFF, lba >> 32)
        if req.is_write:
            tx.data_addrs[q] = req.addr + frame.off
            tx.data_lens[q] = frame.nbytes
        else:
            tx.data_lens[q] = 0
        tx.queued = q + 1

    def _transmit(self, frame: InFlight, path: PathWindow, now: float) -> None:
        """Send ``frame`` again, with a fresh tag, on ``path`` (maybe another one)."""
        seq = self._seq = (self._seq + 1) & TAG_SEQ_MASK
        tag = (seq << 8) | path.index
        old = frame.path
        if old is not path:
            old.outstanding -= 1
            old.budget.outstanding -= 1
            path.outstanding += 1
            path.budget.outstanding += 1
            frame.path = path
        if frame.old_tags is None:
            frame.old_tags = [frame.tag]
        else:
            frame.old_tags.append(frame.tag)
        frame.tag = tag
        self.tags[tag] = frame
        pseq = path.pseq = path.pseq + 1
        frame.pseq = pseq
        path.txq.append(frame)
        frame.sent = now
        frame.tries += 1
        path.sent += 1
        self._queue_frame(frame, path, tag)
        if self.next_check == INF:
            self.next_check = now + path.rto

    # --- receiving ----------------------------------------------------------------------
    def on_answers(self, now: float, port: object, buf: Any, mv: memoryview,
                   lengths: Sequence[int], count: int, size: int) -> None:
        """Take ``count`` frames received on ``port``: frame i is ``lengths[i]`` bytes at
        ``i * size`` in ``buf`` (``mv`` is a memoryview of it). Read data goes straight
        from there into the callers' buffers.

        With the compiled loop, it takes the clean answers and stops at any other
        frame, which :meth:`_on_answers_python` takes alone before the loop goes on.
        """
        fast = self._compiled_answers
        if fast is None:
            self._on_answers_python(now, port, buf, mv, lengths, count, size)
            return
        tags = self.tags
        paths = self.paths
        completed = self.completed
        drop = self._drop_answered
        rx_ok = self._rx_ok
        slow = self._on_answers_python
        i = 0
        while i < count:
            i, answers = fast(tags, paths, completed, drop, now, port, buf, lengths, i, count,
                              size, rx_ok)
            if answers:
                self.stats.answers += answers
                self.last_rx = now
            if i < count:
                base = i * size
                one = mv[base : base + size]
                slow(now, port, one, one, lengths[i : i + 1], 1, size)
                i += 1

    def _on_answers_python(  # noqa: C901 - the per-frame hot path, kept in one piece
            self, now: float, port: object, buf: Any, mv: memoryview,
            lengths: Sequence[int], count: int, size: int) -> None:
        """The answer loop in Python (the reference; see :meth:`on_answers`).

        One loop over the batch with everything it touches bound to locals; the window
        growth is written out inline, and a full frame's data is copied from a view of
        its slot made once per receive buffer (:meth:`_slot_data`).
        """
        tags = self.tags
        get = tags.get
        paths = self.paths
        rx_ok = self._rx_ok
        stats = self.stats
        unpack = RX.unpack_from
        completed = self.completed
        full = paths[0].frame_sectors * SECTOR_SIZE
        slot_data = self._slot_data(mv, size, full)
        answers = 0
        held: PathWindow | None = None  # whose clean samples wait to be folded
        held_rtt = held_low = 0.0
        for i in range(count):
            n = lengths[i]
            base = i * size
            if n < ATA_HEADER_LEN:
                if held is not None:
                    held.sample_rtt(held_rtt, held_low)
                    held = None
                self._odd_frame(port, mv[base : base + n], now)
                continue
            src, head, tag, _aflags, err, _count, status = unpack(buf, base)
            if head != rx_ok:
                if held is not None:
                    held.sample_rtt(held_rtt, held_low)
                    held = None
                self._odd_frame(port, mv[base : base + n], now)
                continue
            frame = get(tag)
            if frame is None:
                if held is not None:
                    held.sample_rtt(held_rtt, held_low)
                    held = None
                stats.stale_or_duplicate += 1
                continue
            tx_path = paths[tag & 0xFF]
            if tx_path.io is not port or src != tx_path.target_mac:
                if held is not None:
                    held.sample_rtt(held_rtt, held_low)
                    held = None
                stats.wrong_source += 1
                continue
            req = frame.req
            nbytes = frame.nbytes
            if req.is_write or req.nodata:
                if n != ATA_HEADER_LEN and n > ETH_MIN_FRAME:
                    if held is not None:
                        held.sample_rtt(held_rtt, held_low)
                        held = None
                    stats.wrong_length += 1
                    continue
            elif n != ATA_HEADER_LEN + nbytes and not (status & ERR_STATUS
                                                       and n <= ETH_MIN_FRAME):
                if held is not None:
                    held.sample_rtt(held_rtt, held_low)
                    held = None
                stats.wrong_length += 1
                continue
            # Clean: the latest transmission's good answer on a path that was not timing
            # out. Its RTT sample waits to be folded with the rest of the batch's.
            clean = tag == frame.tag and not tx_path.timeouts_in_row and not status & ERR_STATUS
            if held is not None and not clean:
                held.sample_rtt(held_rtt, held_low)
                held = None
            if tag != frame.tag:  # only a valid answer may widen slack or the RTO
                if frame.fast:
                    self._spurious(tx_path)
                else:
                    self._spurious_timeout(tx_path, now - frame.first, now)
            answers += 1
            tx_path.last_rx = now
            if tx_path.timeouts_in_row:
                tx_path.on_alive(now)
            if status & ERR_STATUS:
                self._finish_frame(frame)
                self._fail_request(req, self._ata_error(req, status, err))
                continue
            if nbytes and not req.is_write:
                off = frame.off
                if nbytes == full:
                    req.mv[off : off + nbytes] = slot_data[i]  # type: ignore[index]
                else:
                    start = base + ATA_HEADER_LEN
                    req.mv[off : off + nbytes] = mv[start : start + nbytes]  # type: ignore[index]
            path = frame.path
            path.answered += 1
            if frame.tries == 1:
                rtt = now - frame.sent
                # The estimator has one owner, PathWindow; a batch's clean samples are
                # folded once, the latest with the lowest (sample_rtt).
                if not clean:
                    path.sample_rtt(rtt)
                elif held is not path:
                    if held is not None:
                        held.sample_rtt(held_rtt, held_low)
                    held, held_low = path, rtt
                elif rtt < held_low:
                    held_low = rtt
                held_rtt = rtt
            else:
                rtt = path.srtt
            cwnd = path.cwnd
            # Grow: slow start, then +1 per window. Below MIN_QUEUED_WINDOW the RTT
            # does not hold growth back: delay (or jitter) alone must not pin a window
            # that losses have cut to 1, where every further loss waits for the RTO.
            delay_target = path.delay_target
            if rtt < delay_target or cwnd < MIN_QUEUED_WINDOW:
                cwnd += 1.0 if cwnd < path.ssthresh else 1.0 / cwnd
                path.cwnd = cwnd if cwnd < path.limit else float(path.limit)
            elif rtt > 2.0 * delay_target and cwnd > MIN_QUEUED_WINDOW:
                path.cwnd = cwnd - 1.0 / cwnd  # frames only queue up: -1 per window
            pseq = frame.pseq
            if tag == frame.tag and pseq > path.high:
                # Only the latest transmission's answer says how far the path got: an
                # answer to an earlier one must not make the frames sent between the
                # two look overtaken (that set off a storm of spurious resends).
                path.high = pseq
            # Forget the frame (what _finish_frame does, inline on this hot path).
            frame.done = True
            del tags[frame.tag]
            if frame.old_tags is not None:
                for t in frame.old_tags:
                    del tags[t]
            path.outstanding -= 1
            path.budget.outstanding -= 1
            req.frames_out -= 1
            if req.frames_out == 0 and req.remaining == 0 and req.error is None:
                completed.append(req)
            txq = path.txq
            if len(txq) > 1 and txq[0] is frame:
                # Answered in order, and the next frame is neither answered, moved nor
                # overtaken (the common case): what _drop_answered would do, inline.
                head_frame = txq[1]
                if (head_frame.pseq >= path.high and not head_frame.done
                        and head_frame.path is path):
                    txq.popleft()
                    continue
            self._drop_answered(path, now)
        if held is not None:
            held.sample_rtt(held_rtt, held_low)
        if answers:
            stats.answers += answers
            self.last_rx = now

    def _slot_data(self, mv: memoryview, size: int, nbytes: int) -> list[memoryview]:
        """Views of the first ``nbytes`` data bytes of every slot of a receive buffer,
        made once per buffer (the I/O layer hands in the same one every time). The cache
        holds ``mv`` itself, so its id cannot be reused by another buffer meanwhile."""
        key = (id(mv), size, nbytes)
        cached = self._rx_views.get(key)
        if cached is not None and cached[0] is mv:
            return cached[1]
        if len(self._rx_views) >= 16:  # buffers come and go (tests): keep a few
            self._rx_views.clear()
        views = [mv[base + ATA_HEADER_LEN : base + ATA_HEADER_LEN + nbytes]
                 for base in range(0, len(mv) - size + 1, size)] if size > 0 else []
        self._rx_views[key] = (mv, views)
        return views

    def _drop_answered(self, path: PathWindow, now: float) -> None:
        """Pop the answered (or moved) frames off the head of the path's sending order,
        and resend at once those that later answers have overtaken."""
        txq = path.txq
        while txq:
            head_frame = txq[0]
            if head_frame.done or head_frame.path is not path:
                txq.popleft()  # answered, or moved to another path
            elif head_frame.pseq + path.slack < path.high or (
                    head_frame.pseq < path.high
                    and now - head_frame.sent > path.srtt + 4.0 * path.rttvar):
                # Overtaken by `slack` later answers, or overtaken at all and older
                # than an RTT could explain: lost. The time rule keeps recovery fast
                # when jitter has widened the slack beyond what a small window can
                # ever answer (otherwise every loss would wait for the RTO).
                txq.popleft()
                self._fast_retransmit(head_frame, path, now)
            else:
                break

    def _fast_retransmit(self, frame: InFlight, path: PathWindow, now: float) -> None:
        """``frame`` is presumed lost: frames sent after it on its path were answered.

        It goes out again at once (elsewhere if the path is down) instead of waiting for
        the RTO; the window is halved once per round of losses.
        """
        if frame.pseq > path.recover:
            path.on_loss()
            path.recover = path.pseq
        self.stats.retransmits += 1
        self.stats.fast_retransmits += 1
        frame.fast = True
        self._transmit(frame, self._retry_path(path, frame.count) if path.down else path, now)

    def _spurious(self, path: PathWindow) -> None:
        """The first transmission of a fast-retransmitted frame was answered after all:
        answers on this path come back out of order. Tolerate more reordering from now
        on, and take back the window cut that the false alarm caused."""
        self.stats.spurious_retransmits += 1
        path.reordered()

    def _spurious_timeout(self, path: PathWindow, delay: float, now: float) -> None:
        """A frame resent on timeout was answered to an earlier transmission: it was late,
        not lost (a peer that was descheduled, as a CPU-capped one is for tens of ms).
        Raise the path's RTO floor above that delay and take back the window cut."""
        self.stats.spurious_timeouts += 1
        path.late_answer(delay, now)

    def _finish_frame(self, frame: InFlight) -> None:
        """Forget an answered (or cancelled) frame: its tags and its window slot."""
        frame.done = True
        tags = self.tags
        del tags[frame.tag]
        if frame.old_tags is not None:
            for t in frame.old_tags:
                del tags[t]
        path = frame.path
        if path is not None:
            path.outstanding -= 1
            path.budget.outstanding -= 1

    def _source_path(self, port: object, tag: int, src: bytes) -> PathWindow | None:
        """The path a tag went out on, if the answer came back the same way."""
        path = self.paths[tag & 0xFF] if (tag & 0xFF) < len(self.paths) else None
        if path is None or path.io is not port or path.target_mac != src:
            return None
        return path

    def _odd_frame(self, port: object, frame_mv: memoryview, now: float) -> None:
        """Anything that is not a clean ATA answer for this shelf.slot."""
        stats = self.stats
        n = len(frame_mv)
        if n < 24:
            stats.bad_frames += 1
            return
        _etype, verflags, error, shelf, slot, command = RX_HEADER.unpack_from(
            frame_mv, fp.AOE_AFTER_MACS_OFFSET)
        if not verflags & 0x08:
            return  # a request (another initiator's, or a broadcast): not for us
        if verflags >> 4 != 1:
            stats.bad_frames += 1
            return
        src = bytes(frame_mv[6:12])
        ours = (shelf, slot) == (self.shelf, self.slot)
        if command == Command.QUERY_CONFIG:
            if ours:
                self._config_answer(port, src, now)
            return
        if command != Command.ATA:
            return
        tag = TAG_LE.unpack_from(frame_mv, fp.TAG_OFFSET)[0]
        frame = self.tags.get(tag)
        if frame is None:
            if ours:
                stats.stale_or_duplicate += 1
            return  # otherwise: traffic of another target or session
        if not ours:
            stats.wrong_address += 1
            return
        if not verflags & 0x04:
            stats.wrong_length += 1  # a short answer without the error flag
            return
        path = self._source_path(port, tag, src)
        if path is None:
            stats.wrong_source += 1
            return
        stats.answers += 1
        path.on_alive(now)
        self.last_rx = now
        self._finish_frame(frame)
        self._fail_request(frame.req, self._aoe_error(error))

    def _config_answer(self, port: object, src: bytes, now: float) -> None:
        """A Query Config answer for this address. A probe answer revives its path but does
        not reset the dead clock: a target that answers Query Config but no data frame is
        still useless. One from a MAC that is no path is remembered (``other_macs``)."""
        known = False
        for p in self.paths:
            if p.io is port and p.target_mac == src:
                known = True
                p.last_probe_rx = now
                p.on_alive(now)
        if not known and (port, src) not in self.other_macs \
                and len(self.other_macs) < MAX_OTHER_MACS:
            self.other_macs.append((port, src))
        if self.dead is not None and self._check is None:
            self._check_identity(now)

    def _aoe_error(self, code: int) -> InitiatorError:
        if code == AoeError.TARGET_RESERVED:
            return TargetReservedError(
                f"target {self.address} is reserved by another initiator (AoE error 6): "
                "release it there first"
            )
        try:
            name = AoeError(code).name.lower().replace("_", " ")
        except ValueError:
            name = "unknown error"
        return TargetError(f"target {self.address} answered with AoE error {code} ({name})",
                           code)

    def _ata_error(self, req: Request, status: int, err: int) -> InitiatorError:
        if req.is_write and err & AtaErrorBits.ABRT:
            return TargetReadOnlyError(
                f"target {self.address} refused the write (ATA abort): the export is read-only"
            )
        what = AtaOpcode(req.cmd).name.replace("_", " ")
        bits = []
        if err & AtaErrorBits.IDNF:
            bits.append("sector not found")
        if err & AtaErrorBits.UNC:
            bits.append("unrecoverable read error")
        if err & AtaErrorBits.ABRT:
            bits.append("command aborted")
        detail = ", ".join(bits) or f"error register 0x{err:02x}"
        return AtaCommandError(
            f"target {self.address}: {what} failed: {detail} (status 0x{status:02x})",
            status,
            err,
        )

    def _fail_request(self, req: Request, exc: InitiatorError) -> None:
        """End a request with an error: cancel its other frames, hand it back."""
        if req.error is not None:
            return
        req.error = exc
        for frame in [f for t, f in self.tags.items() if f.req is req and t == f.tag]:
            self._finish_frame(frame)
        if req in self.pending:
            self.pending.remove(req)
        req.remaining = 0
        req.frames_out = 0
        self.completed.append(req)

    # --- time ---------------------------------------------------------------------------
    def on_timer(self, now: float) -> tuple[list[tuple[PathWindow, bytes]], InitiatorError | None]:
        """Retransmit what is overdue, mark silent paths down, spot death.

        Returns the Query Config probes to send now (path, frame) and, when the target
        has been silent for ``dead_timeout`` with work outstanding, the error every
        waiting request is to fail with (the caller ends the session with it)."""
        probes: list[tuple[PathWindow, bytes]] = []
        if self.dead is not None and now >= self._revive_at:
            if self.give_up is not None and now - self.dead_at >= self.give_up:
                self.next_check = INF
                return probes, self._given_up(now)
            probes.extend((path, self._probe(path)) for path in self.paths)
            self._revive_step = min(self._revive_step * 2, REVIVE_MAX)
            self._revive_at = now + self._revive_step
        for path in self.paths:
            path.relax_floor(now)
        late, next_check, oldest = self._overdue(now)
        if oldest != INF:
            silent = now - max(self.last_rx, oldest)
            if silent >= self.dead_timeout:
                if self.dead is not None:  # the identity check went unanswered
                    self.next_check = self._revive_at
                    return probes, self.dead
                return probes, self._declare_dead(now, silent)
            next_check = min(next_check, max(self.last_rx, oldest) + self.dead_timeout)
        next_check = min(next_check, self._retransmit(late, now))
        next_check = min(next_check, self._probe_down_paths(now, probes))
        self.next_check = min(next_check, self._revive_at)
        return probes, None

    def _overdue(self, now: float) -> tuple[list[InFlight], float, float]:
        """The frames whose RTO has run out, when the next one will, and the first send
        time of the oldest frame in flight."""
        next_check = INF
        oldest = INF
        late: list[InFlight] = []
        for tag, frame in self.tags.items():
            if tag != frame.tag:
                continue
            due = frame.sent + frame.path.rto
            if due <= now:
                late.append(frame)
            elif due < next_check:
                next_check = due
            if frame.first < oldest:
                oldest = frame.first
        return late, next_check, oldest

    def _retransmit(self, late: list[InFlight], now: float) -> float:
        """Back off the paths that timed out (down after enough in a row) and send the late
        frames again; returns when the earliest of them falls due."""
        next_check = INF
        for path in {f.path for f in late}:
            path.on_timeouts()
            path.recover = path.pseq
            if path.timeouts_in_row >= PATH_DOWN_AFTER and not path.down:
                path.down = True
                path.next_probe = now
                self.stats.path_failovers += 1
        for frame in late:
            target = self._retry_path(frame.path, frame.count)
            self.stats.retransmits += 1
            self._transmit(frame, target, now)
            if now + target.rto < next_check:
                next_check = now + target.rto
        return next_check

    def _probe_down_paths(self, now: float, probes: list[tuple[PathWindow, bytes]]) -> float:
        """Add a Query Config probe for each down path that is due one (while the target as
        a whole is alive); returns when the next is due."""
        next_check = INF
        if self.dead is not None:
            return next_check
        for path in self.paths:
            if path.down:
                if path.next_probe <= now:
                    probes.append((path, self._probe(path)))
                    path.next_probe = now + PROBE_INTERVAL
                next_check = min(next_check, path.next_probe)
        return next_check

    # --- recovery -------------------------------------------------------------------------
    def _declare_dead(self, now: float, silent: float) -> InitiatorError:
        """The target stopped answering: the error the waiting requests fail with. Unless
        the session is to end now (give_up 0), probing for its return starts."""
        error = self._dead_error(now, silent)
        if self.give_up is not None and self.give_up <= 0:
            self.next_check = INF
            return error
        self.dead, self.dead_at = error, now
        self._revive_step = REVIVE_FIRST
        self._revive_at = now + REVIVE_FIRST
        self.next_check = self._revive_at
        log.warning("target %s did not answer for %.1f s: its I/O fails until it is back; "
                    "probing for it", self.address, silent)
        return error

    def _given_up(self, now: float) -> InitiatorError:
        return TargetDeadError(
            f"target {self.address} did not come back within {now - self.dead_at:.1f} s "
            f"of probing: giving up ({self.dead})")

    def _check_identity(self, now: float) -> None:
        """A dead target answers Query Config again: IDENTIFY it before trusting it."""
        page = bytearray(SECTOR_SIZE)
        req = Request(AtaOpcode.IDENTIFY_DEVICE, 0, 0, 1, memoryview(page),
                      on_done=lambda r: self._identified(r, page))
        self._check = req
        self.last_rx = now  # the dead clock of the check starts now
        self.submit(req)

    def _identified(self, req: Request, page: bytearray) -> None:
        """The IDENTIFY of a returning target is back: resume if it is the same device."""
        self._check = None
        if req.error is not None or self.dead is None:
            return
        from ..protocol import DecodeError, parse_identify

        try:
            ident = parse_identify(page)
        except DecodeError as exc:
            log.warning("target %s answers again but its IDENTIFY page is bad (%s): "
                        "not resuming", self.address, exc)
            return
        seen = (ident.serial, ident.sectors)
        if self.identity is not None and seen != self.identity:
            log.warning("target %s answers again but is another device (serial %r, %d "
                        "sectors; this session's is serial %r, %d sectors): refused, "
                        "its I/O keeps failing", self.address, *seen, *self.identity)
            return
        down_for = self.last_rx - self.dead_at
        self.dead = None
        self.revivals += 1
        self._revive_at = INF
        for p in self.paths:
            p.down = False
            p.timeouts_in_row = 0
        log.warning("target %s is back after %.1f s (serial %r): I/O resumes", self.address,
                    down_for, ident.serial)

    def _probe(self, path: PathWindow) -> bytes:
        """Directed Query Config on a path marked down: its answer brings the path back."""
        body = ConfigBody(ccmd=ConfigCommand.READ)
        frame = Frame(path.target_mac, path.port.mac, self.shelf, self.slot,
                      Command.QUERY_CONFIG, 0x80000000 | path.index, body)
        return encode(frame, pad=True)

    def _dead_error(self, now: float, silent: float) -> InitiatorError:
        since = now - silent
        small_ok = [p for p in self.paths if p.last_probe_rx >= since]
        if small_ok:
            p = small_ok[0]
            return MtuMismatchError(
                f"target {self.address} answers Query Config on {p.describe()} but no data "
                f"frame of {p.frame_sectors} sectors ({ATA_HEADER_LEN + p.frame_sectors * 512}"
                " bytes) for "
                f"{silent:.1f} s: something on the way has a smaller MTU than "
                f"{p.port.mtu}; lower the MTU or the frame size"
            )
        tried = ", ".join(p.describe() for p in self.paths)
        return TargetDeadError(
            f"target {self.address} did not answer for {silent:.1f} s on any path "
            f"({tried}): giving up (dead time {self.dead_timeout:g} s)"
        )
