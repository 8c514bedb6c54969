"""The session: one I/O thread that owns the sockets to one target and moves sectors.

Callers hand in requests (read N sectors into this buffer, write these sectors, flush) and
block until the I/O thread completes them. The I/O thread cuts requests into frames as the
window allows, so one large read or many small ones from many threads all share a single
window per path, and it alone touches the sockets, tags and timers:

* every transmission gets a fresh tag (sequence number << 8 | path index); a frame keeps
  all its tags while outstanding, so a late answer to an earlier transmission still
  counts, while answers to unknown tags (stale, duplicated, forged) are dropped and counted;
* an answer is accepted only from the target MAC and local port its tag went out on, with
  the right shelf.slot and exactly the expected length; read data is copied once, from the
  receive buffer straight into the caller's buffer;
* a frame is resent at once when frames sent after it on its path were answered (with a
  slack that widens if the path turns out to reorder), otherwise by a timer scan once it
  is older than its path's RTO, preferring another path; the scan also declares the target
  dead when nothing at all was heard for ``dead_timeout`` seconds while work was
  outstanding: every waiting caller then gets TargetDeadError;
* a path that keeps timing out is marked down and probed with Query Config until it answers;
* sends and receives are batched (sendmmsg/recvmmsg, up to 64 frames per call).

Window and RTT arithmetic lives in paths.py; the growth step is inlined in _receive.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from ..net.mmsg import FrameBatch, GatherBatch, buffer_address
from ..net.rawsock import RawSocket
from ..protocol import (
    SECTOR_SIZE,
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
from ..protocol.constants import ATA_HEADER_LEN, ETH_MIN_FRAME, ETHERTYPE_AOE
from .discovery import TargetInfo
from .errors import (
    AtaCommandError,
    DiskClosedError,
    InitiatorError,
    MtuMismatchError,
    TargetDeadError,
    TargetError,
    TargetReadOnlyError,
    TargetReservedError,
)
from .paths import MAX_WINDOW, MacBudget, Path

log = logging.getLogger("aoe.initiator")

# Per-path prefix (addresses .. command), tag, aflags, err/feature, sector count,
# command/status, LBA low 32, LBA high 16. The tag is opaque to the target, which only
# echoes it, so it is packed little-endian with the rest.
ATA_TX = struct.Struct("<20sIBBBBIH2x")
# Source MAC, EtherType .. command (8 bytes compared at once), tag, aflags, error, count, status.
RX = struct.Struct("<6x6s8sIBBBB")
RX_HEADER = struct.Struct("!HBBHBB")  # EtherType, ver/flags, error, shelf, slot, command
RX_OK_FLAGS = 0x18  # version 1, response, no error
ERR_STATUS = int(AtaStatus.ERR | AtaStatus.DF)
EXTENDED = int(AtaFlag.EXTENDED)
BATCH = 64  # frames per recvmmsg/sendmmsg
TX_HEAD = 64  # bytes per request header slot in the send batch
RUN_FRAMES = 16  # frames of one request sent in a row before the next request's turn
TAG_SEQ_MASK = 0x7FFFFF
PATH_DOWN_AFTER = 3  # rounds of timeouts in a row with no answer at all
MIN_QUEUED_WINDOW = 8.0  # delay alone never shrinks the window below this
PROBE_INTERVAL = 0.5
INF = float("inf")


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
        self.is_write = bool(aflags & AtaFlag.WRITE)
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


def _check_sectors(mv: memoryview) -> None:
    if len(mv) % SECTOR_SIZE:
        raise ValueError(f"a buffer of {len(mv)} bytes is not whole 512-byte sectors")


class _PortIO:
    """Batched receive and send buffers of one local port."""

    __slots__ = ("port", "fd", "rx", "rxmv", "tx", "txmv", "rx_capacity")

    def __init__(self, port: RawSocket) -> None:
        self.port = port
        self.fd = port.fileno()
        slot = (max(port.mtu, 1500) + 14 + 63) // 64 * 64  # a whole frame at this MTU
        self.rx = FrameBatch(self.fd, BATCH, slot)
        # Answers the socket can queue while this thread is busy: more frames in flight
        # than that would be dropped here, not at the target.
        self.rx_capacity = port.queue_capacity(port.mtu + 14)
        self.rxmv = memoryview(self.rx.buf)
        # Requests: a 36-byte header slot, then (writes) the data where the caller has it.
        self.tx = GatherBatch(self.fd, BATCH, TX_HEAD, ATA_HEADER_LEN)
        self.txmv = memoryview(self.tx.buf)


class _Frame:
    """One outstanding ATA command on the wire."""

    __slots__ = ("req", "lba", "count", "off", "nbytes", "path", "tag", "old_tags", "sent",
                 "first", "tries", "pseq", "done", "fast")

    def __init__(self, req: Request, lba: int, count: int, off: int, nbytes: int, path: Path,
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


@dataclass
class SessionStats:
    """Counters a user or test can read (a snapshot; see Session.stats)."""

    frames_sent: int = 0
    retransmits: int = 0
    fast_retransmits: int = 0  # of those, sent because later frames were answered
    spurious_retransmits: int = 0  # fast ones whose first transmission was answered after all
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


class Session:
    """The I/O engine for one shelf.slot over one or more paths (see module docstring)."""

    def __init__(
        self,
        info: TargetInfo,
        ports: Sequence[RawSocket],
        *,
        lba48: bool = True,
        dead_timeout: float = 10.0,
        min_rto: float = 0.02,
        max_rto: float = 1.0,
        max_window: int | None = None,
        frame_sectors: int | None = None,
    ) -> None:
        if not info.paths:
            raise ValueError("a session needs at least one path")
        self.info = info
        self.shelf, self.slot = info.shelf, info.slot
        self.lba48 = lba48
        self.dead_timeout = dead_timeout
        self._ports = list(ports)
        now = time.monotonic()
        by_name = {p.ifname: p for p in self._ports}
        self._io = [_PortIO(p) for p in self._ports]
        io_by_name = {pio.port.ifname: pio for pio in self._io}
        budgets: dict[str, MacBudget] = {}
        self.paths: list[Path] = []
        for pinfo in info.paths[:256]:
            budget = budgets.setdefault(pinfo.target_mac, MacBudget(pinfo.buffer_count))
            sectors = pinfo.frame_sectors
            if frame_sectors is not None:
                sectors = max(1, min(sectors, frame_sectors))
            pio = io_by_name[pinfo.ifname]
            window = min(MAX_WINDOW if max_window is None else max_window, pio.rx_capacity)
            path = Path(
                    len(self.paths),
                    by_name[pinfo.ifname],
                    bytes.fromhex(pinfo.target_mac.replace(":", "")),
                    self.shelf,
                    self.slot,
                    budget,
                    sectors,
                    pinfo.rtt,
                    min_rto,
                    max_rto,
                    window,
                    now,
            )
            path.io, path.tx, path.txmv = pio, pio.tx, pio.txmv
            self.paths.append(path)
        self._rx_ok = RX_HEADER.pack(ETHERTYPE_AOE, RX_OK_FLAGS, 0, self.shelf, self.slot, 0)
        self._tags: dict[int, _Frame] = {}
        self._incoming: deque[Request] = deque()
        # Requests done (or failed) whose callers are woken after the next send flush: a
        # resend queued meanwhile may still point into a write's buffer, which the caller
        # is free to reuse once woken.
        self._completed: list[Request] = []
        self._pending: deque[Request] = deque()
        self._seq = 0
        self._rr = 0
        self._turn = 0  # frames cut in a row from the request at the head of _pending
        self._last_rx = now
        self._next_check = INF
        self._stats = SessionStats()
        self._lock = threading.Lock()
        self._failure: InitiatorError | None = None
        self._closing = False
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = threading.Thread(
            target=self._run, name=f"aoe-{self.shelf}.{self.slot}", daemon=True
        )
        self._thread.start()

    # --- caller side ------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.shelf}.{self.slot}"

    @property
    def failure(self) -> InitiatorError | None:
        """The error that ended the session (dead target, closed), if any."""
        return self._failure

    def stats(self) -> SessionStats:
        """A copy of the counters (send errors and path state folded in)."""
        snap = SessionStats(**self._stats.as_dict())
        snap.frames_sent = sum(p.sent for p in self.paths)
        snap.send_errors = sum(pio.tx.send_errors for pio in self._io)
        return snap

    def path_states(self) -> list[dict[str, object]]:
        """Per-path figures: window, RTT, RTO, counters, whether it is considered down."""
        return [
            {
                "path": p.describe(),
                "ifname": p.ifname,
                "frame_sectors": p.frame_sectors,
                "cwnd": round(p.cwnd, 2),
                "srtt_ms": round(p.srtt * 1e3, 3),
                "rto_ms": round(p.rto * 1e3, 3),
                "sent": p.sent,
                "answered": p.answered,
                "timeouts": p.timeouts,
                "down": p.down,
            }
            for p in self.paths
        ]

    def execute(self, req: Request) -> None:
        """Queue ``req`` for the I/O thread and wait for it; raise its error if it failed."""
        self.submit(req)
        req.lock.acquire()  # type: ignore[union-attr]
        if req.error is not None:
            raise req.error

    def submit(self, req: Request) -> None:
        """Queue ``req`` for the I/O thread and return at once. A request built with
        ``on_done`` has it called on the I/O thread when it ends (``req.error`` is None on
        success), so a server can answer its client without a thread of its own waiting;
        the callback must be quick and must not block on the session."""
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._closing:
                raise DiskClosedError(f"AoE session {self.address} is closed")
            self._incoming.append(req)
            os.eventfd_write(self._wake, 1)

    def submit_read(self, lba: int, mv: memoryview,
                    on_done: Callable[[Request], None]) -> Request:
        """Start reading ``len(mv) // 512`` sectors from ``lba``; ``on_done`` reports."""
        req = self._transfer(self._read_op(), lba, mv, on_done)
        self.submit(req)
        return req

    def submit_write(self, lba: int, mv: memoryview,
                     on_done: Callable[[Request], None]) -> Request:
        """Start writing the sectors in ``mv`` at ``lba``; ``on_done`` reports. ``mv``
        must stay unchanged until then: frames are sent straight from it."""
        req = self._transfer(self._write_op(), lba, mv, on_done)
        self.submit(req)
        return req

    @staticmethod
    def _transfer(op: tuple[int, int], lba: int, mv: memoryview,
                  on_done: Callable[[Request], None] | None = None) -> Request:
        """The request moving the whole sectors of ``mv`` with ``op`` (command, aflags)."""
        _check_sectors(mv)
        return Request(*op, lba, len(mv) // SECTOR_SIZE, mv, on_done)

    def _read_op(self) -> tuple[int, int]:
        if self.lba48:
            return AtaOpcode.READ_SECTORS_EXT, AtaFlag.EXTENDED
        return AtaOpcode.READ_SECTORS, 0

    def _write_op(self) -> tuple[int, int]:
        if self.lba48:
            return AtaOpcode.WRITE_SECTORS_EXT, AtaFlag.EXTENDED | AtaFlag.WRITE
        return AtaOpcode.WRITE_SECTORS, AtaFlag.WRITE

    def read_into(self, lba: int, mv: memoryview) -> None:
        """Read ``len(mv) // 512`` sectors from ``lba`` into ``mv``."""
        self.execute(self._transfer(self._read_op(), lba, mv))

    def write_from(self, lba: int, mv: memoryview) -> None:
        """Write the sectors in ``mv`` at ``lba``; returns once the target acknowledged all."""
        self.execute(self._transfer(self._write_op(), lba, mv))

    def flush(self, extended: bool | None = None) -> None:
        """FLUSH CACHE (EXT): the target commits what it acknowledged to stable storage."""
        if self.lba48 if extended is None else extended:
            self.execute(Request(AtaOpcode.FLUSH_CACHE_EXT, AtaFlag.EXTENDED, 0, 0, None))
        else:
            self.execute(Request(AtaOpcode.FLUSH_CACHE, 0, 0, 0, None))

    def identify(self) -> bytes:
        """The device's IDENTIFY page, fetched through the session."""
        page = bytearray(SECTOR_SIZE)
        self.execute(Request(AtaOpcode.IDENTIFY_DEVICE, 0, 0, 1, memoryview(page)))
        return bytes(page)

    def close(self) -> None:
        """Stop the I/O thread (failing what is still queued) and close the sockets."""
        with self._lock:
            self._closing = True
            if self._wake >= 0:
                os.eventfd_write(self._wake, 1)
        self._thread.join()
        with self._lock:
            if self._wake >= 0:
                os.close(self._wake)
                self._wake = -1
                for port in self._ports:
                    port.close()

    # --- I/O thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
            reason: InitiatorError = DiskClosedError(f"AoE session {self.address} was closed")
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
            reason = InitiatorError(f"AoE session {self.address} failed: {exc!r}")
        self._fail_everything(reason)

    def _loop(self) -> None:
        poller = select.poll()
        by_fd = {pio.fd: pio for pio in self._io}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        wake = self._wake
        incoming = self._incoming
        ios = self._io
        while True:
            if incoming:
                self._take_incoming()
            if self._closing or self._failure is not None:
                return
            if self._pending:
                self._dispatch(time.monotonic())
            for pio in ios:
                if pio.tx.queued:
                    pio.tx.flush()
            if self._completed:
                self._release_completed()
            wait = self._next_check
            if wait == INF:
                events = poller.poll()
            else:
                ms = (wait - time.monotonic()) * 1000.0
                events = poller.poll(ms if ms > 0.0 else 0)
            now = time.monotonic()
            for fd, _ev in events:
                if fd == wake:
                    try:
                        os.eventfd_read(wake)
                    except BlockingIOError:
                        pass
                else:
                    self._receive(by_fd[fd], now)
            if now >= self._next_check:
                self._check_timers(now)

    def _release_completed(self) -> None:
        done = self._completed
        for req in done:
            req.finish()
        done.clear()

    def _take_incoming(self) -> None:
        incoming = self._incoming
        pending = self._pending
        while incoming:
            req = incoming.popleft()
            if req.remaining <= 0:
                req.finish()
            else:
                pending.append(req)

    def _pick_path(self, avoid: Path | None = None) -> Path | None:
        """A path with room in its window: round robin over the live ones."""
        paths = self.paths
        live = [p for p in paths if not p.down] or paths
        start = self._rr
        for i in range(len(live)):
            p = live[(start + i) % len(live)]
            if p is not avoid and p.has_room():
                self._rr = (start + i + 1) % len(live)
                return p
        return None

    def _retry_path(self, failed: Path, sectors: int) -> Path:
        """Where to resend a lost frame of ``sectors`` sectors: another live path whose
        frames are that big, if there is one."""
        others = [p for p in self.paths
                  if p is not failed and not p.down and p.frame_sectors >= sectors]
        if not others:
            return failed
        return min(others, key=lambda p: p.outstanding / p.cwnd)

    def _dispatch(self, now: float) -> None:
        """Cut pending requests into frames while some path has room in its window.

        This and _receive are the per-frame hot paths, so the first transmission of a
        frame is written out here rather than through _transmit.
        """
        pending = self._pending
        single = len(self.paths) == 1
        path = self.paths[0]
        tags = self._tags
        seq = self._seq
        run = self._turn
        pack = ATA_TX.pack_into
        while pending:
            if single:
                budget = path.budget
                if path.outstanding >= path.cwnd or budget.outstanding >= budget.limit:
                    break
            else:
                picked = self._pick_path()
                if picked is None:
                    break
                path = picked
                budget = path.budget
            req = pending[0]
            if req.nodata:
                n = nbytes = 0
                req.remaining = 0
                lba = req.lba
            else:
                n = req.remaining
                if n > path.frame_sectors:
                    n = path.frame_sectors
                nbytes = n * SECTOR_SIZE
                lba = req.next_lba
                req.next_lba = lba + n
                req.remaining -= n
            off = req.next_off
            req.next_off = off + nbytes
            req.frames_out += 1
            if req.remaining == 0:
                pending.popleft()
                run = 0
            elif len(pending) > 1:
                # Take turns between requests, RUN_FRAMES frames at a time: adjacent
                # sectors in a row let the target read or write them with one call.
                run += 1
                if run >= RUN_FRAMES:
                    pending.rotate(-1)
                    run = 0
            seq = (seq + 1) & TAG_SEQ_MASK
            tag = (seq << 8) | path.index
            pseq = path.pseq = path.pseq + 1
            frame = _Frame(req, lba, n, off, nbytes, path, tag, pseq, now)
            tags[tag] = frame
            path.outstanding += 1
            budget.outstanding += 1
            path.txq.append(frame)
            path.sent += 1
            # What _queue_frame does, inline on this hot path.
            tx = path.tx
            q = tx.queued
            if q == BATCH:
                tx.flush()
                q = 0
            lba |= req.lba_bits
            pack(tx.buf, q * TX_HEAD, path.prefix, tag, req.aflags, 0, n, req.cmd,
                 lba & 0xFFFFFFFF, lba >> 32)
            if req.is_write:
                tx.data_addrs[q] = req.addr + off
                tx.data_lens[q] = nbytes
            else:
                tx.data_lens[q] = 0
            tx.queued = q + 1
        self._seq = seq
        self._turn = run
        if self._next_check == INF and tags:
            self._next_check = now + path.rto

    def _queue_frame(self, frame: _Frame, path: Path, tag: int) -> None:
        """Put the frame in the path's send batch (sent at the next flush): its header in
        a slot, a write's data referenced where the caller's buffer holds it."""
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

    def _transmit(self, frame: _Frame, path: Path, now: float) -> None:
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
        self._tags[tag] = frame
        pseq = path.pseq = path.pseq + 1
        frame.pseq = pseq
        path.txq.append(frame)
        frame.sent = now
        frame.tries += 1
        path.sent += 1
        self._queue_frame(frame, path, tag)
        if self._next_check == INF:
            self._next_check = now + path.rto

    def _receive(self, pio: _PortIO, now: float) -> int:
        """Take every waiting frame from one port, a batch per system call; return how
        many frames came."""
        total = 0
        rx = pio.rx
        buf = rx.buf
        mv = pio.rxmv
        lengths = rx.lengths
        size = rx.slot_size
        tags = self._tags
        paths = self.paths
        rx_ok = self._rx_ok
        stats = self._stats
        unpack = RX.unpack_from
        while True:
            try:
                count = rx.recv()
            except OSError:
                # The interface went down (ENETDOWN is reported once); its paths time
                # out and their frames move to other paths, and it works again once up.
                stats.port_errors += 1
                return total
            total += count
            answers = 0
            for i in range(count):
                n = lengths[i]
                base = i * size
                if n < ATA_HEADER_LEN:
                    self._odd_frame(pio, mv[base : base + n], now)
                    continue
                src, head, tag, _aflags, err, _count, status = unpack(buf, base)
                if head != rx_ok:
                    self._odd_frame(pio, mv[base : base + n], now)
                    continue
                frame = tags.get(tag)
                if frame is None:
                    stats.stale_or_duplicate += 1
                    continue
                tx_path = paths[tag & 0xFF]
                if tx_path.io is not pio or src != tx_path.target_mac:
                    stats.wrong_source += 1
                    continue
                req = frame.req
                nbytes = frame.nbytes
                if req.is_write or req.nodata:
                    if n != ATA_HEADER_LEN and n > ETH_MIN_FRAME:
                        stats.wrong_length += 1
                        continue
                elif n != ATA_HEADER_LEN + nbytes:
                    if not (status & ERR_STATUS and n <= ETH_MIN_FRAME):
                        stats.wrong_length += 1
                        continue
                if tag != frame.tag and frame.fast:  # only a valid answer may widen slack
                    self._spurious(tx_path)
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
                    start = base + ATA_HEADER_LEN
                    req.mv[off : off + nbytes] = mv[start : start + nbytes]  # type: ignore[index]
                path = frame.path
                path.answered += 1
                if frame.tries == 1:
                    rtt = now - frame.sent
                    path.sample_rtt(rtt)
                else:
                    rtt = path.srtt
                cwnd = path.cwnd
                # Grow: slow start, then +1 per window. Below MIN_QUEUED_WINDOW the RTT
                # does not hold growth back: delay (or jitter) alone must not pin a window
                # that losses have cut to 1, where every further loss waits for the RTO.
                if rtt < path.delay_target or cwnd < MIN_QUEUED_WINDOW:
                    cwnd += 1.0 if cwnd < path.ssthresh else 1.0 / cwnd
                    path.cwnd = cwnd if cwnd < path.limit else float(path.limit)
                elif rtt > 2.0 * path.delay_target and cwnd > MIN_QUEUED_WINDOW:
                    path.cwnd = cwnd - 1.0 / cwnd  # frames only queue up: -1 per window
                if tag == frame.tag and frame.pseq > path.high:
                    # Only the latest transmission's answer says how far the path got: an
                    # answer to an earlier one must not make the frames sent between the
                    # two look overtaken (that set off a storm of spurious resends).
                    path.high = frame.pseq
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
                    self._completed.append(req)
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
            if answers:
                stats.answers += answers
                self._last_rx = now
                answers = 0
            if count < BATCH:
                return total

    def _fast_retransmit(self, frame: _Frame, path: Path, now: float) -> None:
        """``frame`` is presumed lost: frames sent after it on its path were answered.

        It goes out again at once (elsewhere if the path is down) instead of waiting for
        the RTO; the window is halved once per round of losses.
        """
        if frame.pseq > path.recover:
            path.on_loss()
            path.recover = path.pseq
        self._stats.retransmits += 1
        self._stats.fast_retransmits += 1
        frame.fast = True
        self._transmit(frame, self._retry_path(path, frame.count) if path.down else path, now)

    def _spurious(self, path: Path) -> None:
        """The first transmission of a fast-retransmitted frame was answered after all:
        answers on this path come back out of order. Tolerate more reordering from now
        on, and take back the window cut that the false alarm caused."""
        self._stats.spurious_retransmits += 1
        path.reordered()

    def _finish_frame(self, frame: _Frame) -> None:
        """Forget an answered (or cancelled) frame: its tags and its window slot."""
        frame.done = True
        tags = self._tags
        del tags[frame.tag]
        if frame.old_tags is not None:
            for t in frame.old_tags:
                del tags[t]
        path = frame.path
        if path is not None:
            path.outstanding -= 1
            path.budget.outstanding -= 1

    def _source_path(self, pio: _PortIO, tag: int, src: bytes) -> Path | None:
        """The path a tag went out on, if the answer came back the same way."""
        path = self.paths[tag & 0xFF] if (tag & 0xFF) < len(self.paths) else None
        if path is None or path.io is not pio or path.target_mac != src:
            return None
        return path

    def _odd_frame(self, pio: _PortIO, frame_mv: memoryview, now: float) -> None:
        """Anything that is not a clean ATA answer for this shelf.slot."""
        stats = self._stats
        n = len(frame_mv)
        if n < 24:
            stats.bad_frames += 1
            return
        _etype, verflags, error, shelf, slot, command = RX_HEADER.unpack_from(frame_mv, 12)
        if not verflags & 0x08:
            return  # a request (another initiator's, or a broadcast): not for us
        if verflags >> 4 != 1:
            stats.bad_frames += 1
            return
        src = bytes(frame_mv[6:12])
        ours = (shelf, slot) == (self.shelf, self.slot)
        if command == Command.QUERY_CONFIG:
            # A probe answer revives the path but does not reset the dead clock: a target
            # that answers Query Config but no data frame is still useless.
            if ours:
                for p in self.paths:
                    if p.io is pio and p.target_mac == src:
                        p.last_probe_rx = now
                        p.on_alive(now)
            return
        if command != Command.ATA:
            return
        tag = struct.unpack_from("<I", frame_mv, 20)[0]
        frame = self._tags.get(tag)
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
        path = self._source_path(pio, tag, src)
        if path is None:
            stats.wrong_source += 1
            return
        stats.answers += 1
        path.on_alive(now)
        self._last_rx = now
        self._finish_frame(frame)
        self._fail_request(frame.req, self._aoe_error(error))

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
        """End a request with an error: cancel its other frames, wake its caller."""
        if req.error is not None:
            return
        req.error = exc
        for frame in [f for t, f in self._tags.items() if f.req is req and t == f.tag]:
            self._finish_frame(frame)
        if req in self._pending:
            self._pending.remove(req)
        req.remaining = 0
        req.frames_out = 0
        self._completed.append(req)  # woken after the next flush (see _completed)

    def _check_timers(self, now: float) -> None:
        """Retransmit what is overdue, mark silent paths down, probe them, spot death."""
        next_check = INF
        oldest = INF
        late: list[_Frame] = []
        for tag, frame in self._tags.items():
            if tag != frame.tag:
                continue
            due = frame.sent + frame.path.rto
            if due <= now:
                late.append(frame)
            elif due < next_check:
                next_check = due
            if frame.first < oldest:
                oldest = frame.first
        if oldest != INF:
            silent = now - max(self._last_rx, oldest)
            if silent >= self.dead_timeout:
                self._declare_dead(silent)
                return
            next_check = min(next_check, max(self._last_rx, oldest) + self.dead_timeout)
        for path in {f.path for f in late}:
            path.on_timeouts()
            path.recover = path.pseq
            if path.timeouts_in_row >= PATH_DOWN_AFTER and not path.down:
                path.down = True
                path.next_probe = now
                self._stats.path_failovers += 1
        for frame in late:
            target = self._retry_path(frame.path, frame.count)
            self._stats.retransmits += 1
            self._transmit(frame, target, now)
            if now + target.rto < next_check:
                next_check = now + target.rto
        for path in self.paths:
            if path.down:
                if path.next_probe <= now:
                    self._probe(path)
                    path.next_probe = now + PROBE_INTERVAL
                next_check = min(next_check, path.next_probe)
        self._next_check = next_check

    def _probe(self, path: Path) -> None:
        """Directed Query Config on a path marked down: its answer brings the path back."""
        body = ConfigBody(ccmd=ConfigCommand.READ)
        frame = Frame(path.target_mac, path.port.mac, self.shelf, self.slot,
                      Command.QUERY_CONFIG, 0x80000000 | path.index, body)
        try:
            path.io.port.send(encode(frame, pad=True))
        except OSError:
            path.send_errors += 1

    def _declare_dead(self, silent: float) -> None:
        since = time.monotonic() - silent
        small_ok = [p for p in self.paths if p.last_probe_rx >= since]
        exc: InitiatorError
        if small_ok:
            p = small_ok[0]
            exc = MtuMismatchError(
                f"target {self.address} answers Query Config on {p.describe()} but no data "
                f"frame of {p.frame_sectors} sectors ({ATA_HEADER_LEN + p.frame_sectors * 512}"
                " bytes) for "
                f"{silent:.1f} s: something on the way has a smaller MTU than "
                f"{p.port.mtu}; lower the MTU or the frame size"
            )
        else:
            tried = ", ".join(p.describe() for p in self.paths)
            exc = TargetDeadError(
                f"target {self.address} did not answer for {silent:.1f} s on any path "
                f"({tried}): giving up (dead time {self.dead_timeout:g} s)"
            )
        self._fail_everything(exc)

    def _fail_everything(self, exc: InitiatorError) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = exc
            failure = self._failure
            waiting = list(self._incoming)
            self._incoming.clear()
        reqs: dict[int, Request] = {id(r): r for r in waiting}
        for frame in self._tags.values():
            reqs.setdefault(id(frame.req), frame.req)
        for req in self._pending:
            reqs.setdefault(id(req), req)
        self._tags.clear()
        self._pending.clear()
        for p in self.paths:
            p.outstanding = 0
            p.budget.outstanding = 0
        for req in reqs.values():
            if req.error is None:
                req.error = failure
                req.finish()
        self._release_completed()  # finished before the failure: they keep their outcome

