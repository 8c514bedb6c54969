"""The session: one I/O thread that owns the sockets to one target and moves sectors.

Callers hand in requests (read N sectors into this buffer, write these sectors, flush) and
block until the I/O thread completes them (or, with submit, get a callback). Every decision
(which frame goes out on which path and when, what an answer means, retransmits, windows,
paths down, a dead target) belongs to the sans-I/O core in core.py; this module only moves
bytes and time in and out of it:

* the I/O thread polls the ports and a wake-up eventfd, reads the clock, and hands each
  received batch (recvmmsg, up to 64 frames per call) to the core, which copies read data
  straight from the receive slots into the callers' buffers;
* the core writes send instructions into each port's send batch (header slots, a write's
  payload referenced where the caller's buffer holds it), sent with sendmmsg;
* callers are woken only after the batches that may still point into their buffers went out.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from threading import get_ident
from typing import cast

from ..lazylog import get_logger
from ..net.mmsg import FrameBatch, GatherBatch
from ..net.rawsock import RawSocket, close_all
from ..protocol import (
    SECTOR_SIZE,
    AtaFlag,
    AtaOpcode,
    DecodeError,
    format_mac,
    parse_identify,
)
from ..protocol.constants import ATA_HEADER_LEN
from .core import BATCH, INF, TX_HEAD, Request, SessionCore, SessionStats
from .discovery import TargetInfo
from .errors import DiskClosedError, InitiatorError
from .window import MAX_WINDOW, MacBudget, PathWindow

log = get_logger("aoe.initiator")

__all__ = ["Request", "Session", "SessionStats"]


# (command, aflags) of each transfer, as plain ints: built once, not per request.
_READ48 = (int(AtaOpcode.READ_SECTORS_EXT), int(AtaFlag.EXTENDED))
_READ28 = (int(AtaOpcode.READ_SECTORS), 0)
_WRITE48 = (int(AtaOpcode.WRITE_SECTORS_EXT), int(AtaFlag.EXTENDED | AtaFlag.WRITE))
_WRITE28 = (int(AtaOpcode.WRITE_SECTORS), int(AtaFlag.WRITE))


# Requests a watched fd's callback may queue before their frames are sent: a burst of a
# server's client is then answered in a pipeline, not as one block (random 4 KiB reads
# through `aoe nbd` at iodepth 32 went from about 26k to 44k IOPS with 16 here).
SEND_EVERY = 16


def _check_sectors(mv: memoryview) -> None:
    if len(mv) % SECTOR_SIZE:
        raise ValueError(f"a buffer of {len(mv)} bytes is not whole 512-byte sectors")


def _end_watcher(on_end: Callable[[], None]) -> None:
    """Tell a watcher its fd is no longer served (its own thread takes over)."""
    try:
        on_end()
    except Exception:  # a server's bug must not stop the I/O thread's exit
        log.exception("watcher's end call failed")


class _PortIO:
    """Batched receive and send buffers of one local port."""

    __slots__ = ("port", "fd", "rx", "rxmv", "tx", "rx_capacity")

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


class Session:
    """The I/O engine for one shelf.slot over one or more paths (see module docstring)."""

    def __init__(
        self,
        info: TargetInfo,
        ports: Sequence[RawSocket],
        *,
        lba48: bool = True,
        dead_timeout: float = 10.0,
        give_up: float | None = 0.0,
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
        budgets: dict[bytes, MacBudget] = {}
        self.paths: list[PathWindow] = []
        for pinfo in info.paths[:256]:
            budget = budgets.setdefault(pinfo.target_mac, MacBudget(pinfo.buffer_count))
            sectors = pinfo.frame_sectors
            if frame_sectors is not None:
                sectors = max(1, min(sectors, frame_sectors))
            pio = io_by_name[pinfo.ifname]
            window = min(MAX_WINDOW if max_window is None else max_window, pio.rx_capacity)
            path = PathWindow(
                    len(self.paths),
                    by_name[pinfo.ifname],
                    pinfo.target_mac,
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
            path.io, path.tx = pio, pio.tx
            self.paths.append(path)
        self.core = SessionCore(self.shelf, self.slot, self.paths,
                                dead_timeout=dead_timeout, give_up=give_up, now=now)
        self._incoming: deque[Request] = deque()
        self._lock = threading.Lock()
        self._failure: InitiatorError | None = None
        self._closing = False
        self._asleep = False  # the I/O thread is (about to be) in poll: submit must wake it
        self._hooks: tuple[Callable[[], None], ...] = ()
        # Other file descriptors the I/O thread serves (a server's client socket), with
        # the call run when one is readable and the one run if the session ends first.
        self._watched: dict[int, tuple[Callable[[], None], Callable[[], None]]] = {}
        self._kick: list[int] = []  # watched fds to serve once without waiting for poll
        # Calls to run on the I/O thread once it has received what its ports hold: queued
        # in _soon, armed when a poll starts, run after that poll's receive pass.
        self._soon: list[Callable[[], None]] = []
        self._armed: list[Callable[[], None]] = []
        self._watch_changed = False
        self._polled: set[int] = set()  # the watched fds the I/O thread's poller has
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._io_ident: int | None = None  # the I/O thread's, once it runs
        self._thread = threading.Thread(
            target=self._run, name=f"aoe-{self.shelf}.{self.slot}", daemon=True
        )
        self._thread.start()
        self._io_ident = self._thread.ident

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
        snap = SessionStats(**self.core.stats.as_dict())
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
        the callback must be quick and must not block on the session.

        Called on the I/O thread itself (from a watched fd's callback), the request is
        queued without the lock: that thread is awake and takes it in its next round.
        Every SEND_EVERY such requests go out at once, so that the target works on the
        first requests of a client's burst while the rest are still being read."""
        if get_ident() == self._io_ident:
            self._check_accepting()
            incoming = self._incoming
            incoming.append(req)
            if len(incoming) >= SEND_EVERY:
                self._send_now()
            return
        with self._lock:
            self._check_accepting()
            self._incoming.append(req)
            self._rouse()

    def _check_accepting(self) -> None:
        """Raise why a new request cannot be taken, if it cannot."""
        if self._failure is not None:
            raise self._failure
        dead = self.core.dead
        if dead is not None:  # until the target is back (the core probes for it)
            raise dead
        if self._closing:
            raise DiskClosedError(f"AoE session {self.address} is closed")

    def add_completion_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` on the I/O thread after each round of completions (after the
        requests' own ``on_done``), so that a server can send a round's replies at once."""
        with self._lock:
            self._hooks = (*self._hooks, hook)

    def remove_completion_hook(self, hook: Callable[[], None]) -> None:
        with self._lock:
            self._hooks = tuple(h for h in self._hooks if h is not hook)

    def watch(self, fd: int, on_ready: Callable[[], None],
              on_end: Callable[[], None]) -> None:
        """Serve ``fd`` on the I/O thread: ``on_ready`` runs there once soon and then
        whenever ``fd`` is readable, until :meth:`unwatch`, so that a server can read its
        client's requests on the thread that moves them, with no hand-over between
        threads. ``on_ready`` must not block; what it submits goes out in the same round.
        ``on_end`` runs instead if the session stops while ``fd`` is watched."""
        with self._lock:
            if self._closing or self._failure is not None:
                raise self._failure or DiskClosedError(f"AoE session {self.address} is closed")
            self._watched[fd] = (on_ready, on_end)
            self._kick.append(fd)
            self._watch_changed = True
            self._rouse()

    def _rouse(self) -> None:
        """Wake the I/O thread if it sleeps (with _lock held): one wake-up per sleep,
        however many requests or watches come."""
        if self._asleep:
            self._asleep = False
            os.eventfd_write(self._wake, 1)

    def other_macs_by(self, at: float) -> list[tuple[str, str]]:
        """(interface, MAC) of each MAC outside the session's paths that answered Query
        Config for its address, counting every frame that arrived before ``at``
        (monotonic): waits until then, and until the I/O thread has taken in what its
        ports held at that moment."""
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        taken = threading.Event()
        with self._lock:
            running = not self._closing and self._failure is None and self._thread.is_alive()
            if running:
                self._soon.append(taken.set)
                self._rouse()
        if running:
            taken.wait()
        return [(cast(_PortIO, pio).port.ifname, format_mac(mac))
                for pio, mac in list(self.core.other_macs)]

    def unwatch(self, fd: int) -> None:
        """Stop serving ``fd`` (from any thread; from the I/O thread it takes effect at
        once, so a callback may unwatch its own fd and then close it)."""
        with self._lock:
            if self._watched.pop(fd, None) is not None:
                self._watch_changed = True

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
        return _READ48 if self.lba48 else _READ28

    def _write_op(self) -> tuple[int, int]:
        return _WRITE48 if self.lba48 else _WRITE28

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
        if self.core.identity is None:  # the device this session serves, from now on
            try:
                ident = parse_identify(page)
            except DecodeError:
                pass  # the caller reports a bad page
            else:
                self.core.identity = (ident.serial, ident.sectors)
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
                close_all(self._ports)

    # --- I/O thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
            reason: InitiatorError = DiskClosedError(f"AoE session {self.address} was closed")
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
            log.error("AoE session %s failed", self.address, exc_info=True)
            reason = InitiatorError(f"AoE session {self.address} failed: {exc!r}")
        self._fail_everything(reason)
        with self._lock:  # nobody waits for a round that will not come
            calls, self._soon, self._armed = self._armed + self._soon, [], []
        for call in calls:
            call()
        with self._lock:
            ended, self._watched = list(self._watched.values()), {}
        for _, on_end in ended:
            _end_watcher(on_end)

    def _loop(self) -> None:
        poller = select.poll()
        by_fd = {pio.fd: pio for pio in self._io}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        core = self.core
        while True:
            if self._closing or self._failure is not None:
                return  # what is queued fails with the session (_fail_requests)
            self._send_now()
            if core.completed:
                self._release_completed()
            events = self._wait(poller, core.next_check)
            now = time.monotonic()
            got = self._on_events(events, by_fd, now)
            if now >= core.next_check:
                self._on_timer(now)
            elif got:
                self._nap(got)

    def _send_now(self) -> None:
        """Hand the queued requests to the core and put every frame its windows allow
        on the wire (I/O thread: each round, and mid-round for a burst, see submit)."""
        incoming = self._incoming
        core = self.core
        while incoming:
            core.submit(incoming.popleft())
        if core.pending:
            core.next_frames(time.monotonic())
        for pio in self._io:
            if pio.tx.queued:
                pio.tx.flush()

    def _on_events(self, events: list[tuple[int, int]], ports: dict[int, _PortIO],
                   now: float) -> int:
        """Receive from the ready ports (how many frames came), then serve the rest."""
        got = 0
        for fd, _ev in events:
            pio = ports.get(fd)
            if pio is not None:
                got += self._receive(pio, now)
            else:
                self._serve_other(fd)
        if self._kick:
            self._serve_kicked()
        if self._armed:
            calls, self._armed = self._armed, []
            for call in calls:
                call()
        return got

    def _sync_watched(self, poller: select.poll) -> None:
        """Poll exactly the watched fds besides the ports and the wake-up eventfd."""
        with self._lock:
            self._watch_changed = False
            wanted = set(self._watched)
        for fd in self._polled - wanted:
            poller.unregister(fd)
        for fd in wanted - self._polled:
            poller.register(fd, select.POLLIN)
        self._polled = wanted

    def _serve_other(self, fd: int) -> None:
        """A wake-up (new requests, close) or a watched fd is ready."""
        if fd == self._wake:
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                pass
        else:
            self._serve_watched(fd)

    def _serve_watched(self, fd: int) -> None:
        """Run a watched fd's ``on_ready``; one that raises is no longer watched."""
        entry = self._watched.get(fd)
        if entry is None:  # unwatched since the poll
            return
        try:
            entry[0]()
        except Exception:  # a server's bug must not end the session: its own thread
            log.exception("watched fd %d failed; no longer watched", fd)  # takes over
            self.unwatch(fd)
            _end_watcher(entry[1])

    def _serve_kicked(self) -> None:
        with self._lock:
            kicked, self._kick = self._kick, []
        for fd in kicked:
            self._serve_watched(fd)

    def _nap(self, received: int) -> None:
        """After a wake-up that brought few answers of a bulk transfer, let more gather
        (the core says how long): one wake-up for many on a slow wire."""
        if not self._incoming:
            nap = self.core.nap(received)
            if nap:
                time.sleep(nap)

    def _wait(self, poller: select.poll, until: float) -> list[tuple[int, int]]:
        """Poll until ``until`` (monotonic) for answers or new requests; not at all when
        requests came meanwhile. While the loop sleeps, submit() wakes it, once."""
        if self._watch_changed:
            self._sync_watched(poller)
        with self._lock:
            if self._soon:  # queued before this poll: run once its frames are taken in
                self._armed += self._soon
                self._soon = []
            if self._incoming or self._closing or self._kick or self._armed:
                until = 0.0
            else:
                self._asleep = True
        if until == INF:
            events = poller.poll()
        else:
            ms = (until - time.monotonic()) * 1000.0
            events = poller.poll(ms if ms > 0.0 else 0)
        self._asleep = False
        return events

    def _on_timer(self, now: float) -> None:
        """Let the core run its timers; send the probes it asks for; fail the I/O of a dead
        target (all of it once the core gives up on it)."""
        core = self.core
        probes, dead = core.on_timer(now)
        for path, frame in probes:
            try:
                path.io.port.send(frame)
            except OSError:
                path.send_errors += 1
        if dead is not None:
            if dead is core.dead:  # I/O fails while the core probes for it
                self._fail_requests(dead)
            else:
                self._fail_everything(dead)

    def _receive(self, pio: _PortIO, now: float) -> int:
        """Take every waiting frame from one port, a batch per system call, into the core;
        return how many frames came."""
        total = 0
        rx = pio.rx
        buf = rx.buf
        mv = pio.rxmv
        lengths = rx.lengths
        size = rx.slot_size
        on_answers = self.core.on_answers
        while True:
            try:
                count = rx.recv()
            except OSError:
                # The interface went down (ENETDOWN is reported once); its paths time
                # out and their frames move to other paths, and it works again once up.
                self.core.stats.port_errors += 1
                return total
            total += count
            on_answers(now, pio, buf, mv, lengths, count, size)
            if count < BATCH:
                return total

    def _release_completed(self) -> None:
        """Finish what completed, then run the completion hooks once for the round."""
        for req in self.core.take_completed():
            req.finish()
        for hook in self._hooks:
            try:
                hook()
            except Exception:  # a server's bug must not end the session
                log.exception("completion hook failed")

    def _fail_requests(self, exc: InitiatorError, end_session: bool = False) -> None:
        """Fail what is queued and in flight with ``exc``; the session lives on (a dead
        target may come back) unless ``end_session``, after which every new request fails
        with the first such error."""
        with self._lock:
            if end_session:
                if self._failure is None:
                    self._failure = exc
                exc = self._failure
            waiting = list(self._incoming)
            self._incoming.clear()
        reqs: dict[int, Request] = {id(r): r for r in waiting}
        for req in self.core.fail_all():
            reqs.setdefault(id(req), req)
        for req in reqs.values():
            if req.error is None:
                req.error = exc
                req.finish()
        self._release_completed()  # finished before the failure: they keep their outcome

    def _fail_everything(self, exc: InitiatorError) -> None:
        self._fail_requests(exc, end_session=True)
