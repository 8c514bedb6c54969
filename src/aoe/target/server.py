"""The target's socket loop: interfaces up, raw sockets open, frames batched through engines.

One process serves every export on every interface. Each interface has a raw socket, an
:class:`~aoe.target.engine.Engine` (its MAC and MTU decide the replies) and a
:class:`~aoe.net.mmsg.FrameBatch`: a burst of requests is taken with one ``recvmmsg``,
answered in the slots they arrived in, and sent back with one ``sendmmsg``.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ..net import link
from ..net.mmsg import FrameBatch
from ..net.rawsock import InterfaceError, RawSocket
from ..protocol.constants import ETH_MIN_FRAME, MIN_MTU, max_sectors_for_mtu
from ..protocol.mac import format_mac
from . import counters as ck
from .counters import Counters
from .engine import Engine
from .store import ExportSpec, Store, StoreError

log = logging.getLogger("aoe.target")

ARPHRD_ETHER = 1
DEFAULT_BATCH = 64
BLOCK_TIMEOUT_US = 100_000  # how often a blocked single-interface loop checks for stop()
_SLOT_ROUND = 64


class TargetError(Exception):
    """The target cannot start as configured: a user error, reported without a traceback."""


@dataclass
class InterfaceSpec:
    """An interface to serve on, optionally with an MTU to set first."""

    name: str
    mtu: int | None = None


def _truesize_estimate(frame_len: int) -> int:
    """Kernel memory one queued frame costs against SO_RCVBUF (data rounded up to a power of
    two, plus the socket buffer bookkeeping)."""
    size = 1
    while size < frame_len + 384:
        size <<= 1
    return size + 256


class _Port:
    """One served interface: socket, engine and batch buffers."""

    def __init__(self, name: str, sock: RawSocket, engine: Engine, batch: FrameBatch) -> None:
        self.name = name
        self.sock = sock
        self.engine = engine
        self.batch = batch
        self.fd = sock.fileno()
        self.out = [0] * batch.count  # per-slot reply lengths of the current burst


class Target:
    """An AoE target: exports served on interfaces until :meth:`stop`.

    Usage from Python (inside the right network namespace for :meth:`open`)::

        t = Target([ExportSpec(1, 0, "disk.img")], ["eth0"], state_dir="/tmp/st")
        t.open()                 # links up, sockets open, announcement sent
        t.start()                # serve in a background thread (or serve_forever())
        ...
        t.close()                # stop, join, close sockets and files
    """

    def __init__(
        self,
        exports: Sequence[ExportSpec],
        interfaces: Sequence[InterfaceSpec | str],
        *,
        state_dir: str | Path | None = None,
        announce: bool = True,
        batch: int = DEFAULT_BATCH,
        counters: Counters | None = None,
    ) -> None:
        if not exports:
            raise TargetError("nothing to serve: no exports given")
        if not interfaces:
            raise TargetError("no interface given")
        self.specs = list(exports)
        self.ifspecs = [InterfaceSpec(i) if isinstance(i, str) else i for i in interfaces]
        names = [i.name for i in self.ifspecs]
        if len(set(names)) != len(names):
            raise TargetError(f"interface listed twice: {names}")
        seen: set[tuple[int, int]] = set()
        for s in self.specs:
            if (s.shelf, s.slot) in seen:
                raise TargetError(f"two exports share the address {s.shelf}.{s.slot}")
            seen.add((s.shelf, s.slot))
            for ifn in s.interfaces or []:
                if ifn not in names:
                    raise TargetError(f"{s.name}: interface {ifn!r} is not one the target serves")
        self.state_dir = state_dir
        self.announce = announce
        self.batch_size = batch
        self.counters = counters if counters is not None else Counters()
        self.exports: list[Store] = []
        self.ports: list[_Port] = []
        self._stop = False
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._dump_requested = False
        self.on_dump: Callable[[Counters], None] | None = None

    # --- set-up ---------------------------------------------------------------------
    def open(self) -> Target:
        """Bring interfaces up, open sockets and exports, and announce the exports.

        Runs in the calling thread's network namespace.
        """
        try:
            self._open_ports_and_exports()
        except BaseException:
            self.close()
            raise
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.announce:
            self.send_announcements()
        return self

    def _open_ports_and_exports(self) -> None:
        socks: list[tuple[InterfaceSpec, RawSocket]] = []
        try:
            for ifs in self.ifspecs:
                socks.append((ifs, _open_interface(ifs)))
            for spec in self.specs:
                self.exports.append(Store.open(spec, self.state_dir))
        except StoreError as exc:
            for _, s in socks:
                s.close()
            raise TargetError(str(exc)) from None
        except BaseException:
            for _, s in socks:
                s.close()
            raise
        for ifs, sock in socks:
            served = [e for e in self.exports
                      if e.spec.interfaces is None or ifs.name in e.spec.interfaces]
            frame_len = sock.mtu + 14
            rcvbuf = sock.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            bufcnt = max(1, min(0xFFFF, rcvbuf // _truesize_estimate(frame_len)))
            engine = Engine(served, sock.mac, sock.mtu, self.counters, buffer_count=bufcnt)
            slot = -(-engine.frame_size // _SLOT_ROUND) * _SLOT_ROUND
            batch = FrameBatch(sock.fileno(), self.batch_size, slot)
            self.ports.append(_Port(ifs.name, sock, engine, batch))
            log.info(
                "serving",
                extra={"interface": ifs.name, "mtu": sock.mtu, "mac": format_mac(sock.mac),
                       "exports": [e.spec.name for e in served],
                       "max_sectors": engine.max_sectors, "buffer_count": bufcnt},
            )
        for e in self.exports:
            # A mask list must fit one frame on every interface that serves the export.
            mtus = [p.engine.frame_size for p in self.ports if e in p.engine.exports]
            if mtus:
                e.mask_limit = min(255, (min(mtus) - 28) // 8)
            log.info("export", extra=e.describe())

    def send_announcements(self) -> None:
        """Broadcast one unsolicited Query Config answer per export and interface."""
        for p in self.ports:
            for frame in p.engine.announcements():
                try:
                    p.sock.send(frame)
                    self.counters.frames_out += 1
                except OSError as exc:
                    self.counters.error(ck.SEND)
                    log.warning("announce_failed",
                                extra={"interface": p.name, "err": exc.strerror})

    # --- running --------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve until :meth:`stop` (or SIGINT/SIGTERM when installed by the CLI)."""
        if not self.ports:
            raise TargetError("target is not open")
        if len(self.ports) == 1:
            self._serve_one(self.ports[0])
            return
        poller = select.poll()
        for p in self.ports:
            poller.register(p.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        by_fd = {p.fd: p for p in self.ports}
        drain = self._drain
        while not self._stop:
            for fd, _ev in poller.poll(1000):
                if fd == self._wake_r:
                    self._drain_wake()
                else:
                    drain(by_fd[fd])
            if self._dump_requested:
                self._dump_requested = False
                if self.on_dump is not None:
                    self.on_dump(self.counters)

    def _serve_one(self, port: _Port) -> None:
        """One interface: block in recvmmsg itself (no poll), which wakes on the first frame
        and returns every frame already queued. A receive timeout lets :meth:`stop` and the
        SIGUSR1 dump be noticed; signals interrupt the wait at once."""
        port.sock.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                  struct.pack("ll", 0, BLOCK_TIMEOUT_US))
        drain = self._drain
        while not self._stop:
            drain(port, True)
            if self._dump_requested:
                self._dump_requested = False
                if self.on_dump is not None:
                    self.on_dump(self.counters)

    def _drain(self, port: _Port, block: bool = False) -> int:
        """Answer everything waiting on one socket, a burst at a time; frames taken.

        With ``block`` the first receive waits (up to the socket's receive timeout)."""
        batch = port.batch
        recv = batch.recv
        views = batch.views
        lengths = batch.lengths
        respond = port.engine.respond_batch
        out = port.out
        slot_size = batch.slot_size
        count = batch.count
        c = self.counters
        taken = 0
        while True:
            try:
                n = recv(block)
            except OSError as exc:
                # e.g. ENETDOWN while the link is down: report, pause, keep serving.
                c.error(ck.RECV)
                log.warning("receive_failed", extra={"interface": port.name,
                                                     "err": exc.strerror})
                time.sleep(0.05)
                return taken
            if not n:
                return taken
            block = False
            taken += n
            c.frames_in += n
            c.bursts += 1
            try:
                replies = respond(views, lengths, n, out)
            except Exception:  # the target never dies on input
                log.exception("internal_error", extra={"action": "burst dropped"})
                c.error(ck.INTERNAL)
                continue
            slow: list[bytes] | None = None
            for i in range(n if replies < n else 0):
                if out[i] < 0:
                    if lengths[i] >= slot_size and batch.truncated(i):
                        c.error(ck.TRUNCATED_RECV)
                        out[i] = 0
                        continue
                    if slow is None:
                        slow = []
                    slow.append(bytes(views[i][: lengths[i]]))
            c.frames_out += batch.send_slots(out, n)
            if batch.send_errors:
                c.errors[ck.SEND] += batch.send_errors
                c.frames_out -= batch.send_errors
                batch.send_errors = 0
            if slow:
                self._answer_slow(port, slow)
            if n < count:
                return taken

    def _answer_slow(self, port: _Port, frames: list[bytes]) -> None:
        c = self.counters
        for f in frames:
            try:
                replies = port.engine.respond_slow(f)
            except Exception:  # the target never dies on input
                log.exception("internal_error", extra={"action": "frame dropped"})
                c.error(ck.INTERNAL)
                continue
            for r in replies:
                if len(r) < ETH_MIN_FRAME:  # never send a frame the wire would pad
                    r += bytes(ETH_MIN_FRAME - len(r))
                try:
                    port.sock.send(r)
                    c.frames_out += 1
                except OSError:
                    c.error(ck.SEND)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 256):
                pass
        except BlockingIOError:
            pass

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return (safe from any thread or signal handler)."""
        self._stop = True
        self._wake()

    def request_dump(self) -> None:
        """Ask the loop to call :attr:`on_dump` with the counters (SIGUSR1)."""
        self._dump_requested = True
        self._wake()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    def start(self) -> threading.Thread:
        """Serve in a daemon thread; :meth:`close` stops and joins it."""
        self._stop = False
        t = threading.Thread(target=self.serve_forever, name="aoe-target", daemon=True)
        t.start()
        self._thread = t
        return t

    def close(self) -> None:
        """Stop serving and release sockets and files (idempotent)."""
        self.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
            self._thread = None
        for p in self.ports:
            p.sock.close()
        self.ports = []
        for e in self.exports:
            e.close()
        self.exports = []
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> Target:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def install_signal_handlers(self, dump: Callable[[Counters], None]) -> None:
        """SIGINT/SIGTERM stop the loop, SIGUSR1 dumps the counters (main thread only)."""
        self.on_dump = dump

        def _stop(signum: int, _frame: FrameType | None) -> None:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            self.stop()

        def _usr1(_signum: int, _frame: FrameType | None) -> None:
            self.request_dump()

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGUSR1, _usr1)


def _open_interface(ifs: InterfaceSpec) -> RawSocket:
    """Check the interface, set its MTU if asked, bring it up and open a raw socket on it."""
    name = ifs.name
    try:
        info = link.link_info(name)
    except link.LinkNotFoundError:
        raise TargetError(f"no network interface named {name!r}") from None
    except PermissionError:
        raise TargetError(f"{name}: permission denied reading the interface (run as root)") \
            from None
    except link.LinkError as exc:
        raise TargetError(f"{name}: {exc}") from None
    if info.name == "lo" or info.mac in (None, "00:00:00:00:00:00"):
        raise TargetError(f"{name} is not an Ethernet interface; AoE needs one")
    try:
        if ifs.mtu is not None and ifs.mtu != info.mtu:
            if ifs.mtu < MIN_MTU:
                raise TargetError(
                    f"{name}: MTU {ifs.mtu} is too small for AoE (at least {MIN_MTU})"
                )
            link.set_mtu(name, ifs.mtu)
        if not info.up:
            link.link_up(name)
            log.info("interface_up", extra={"interface": name})
    except link.MtuError as exc:
        raise TargetError(str(exc)) from None
    except link.LinkError as exc:
        raise TargetError(f"{name} is down and cannot be brought up: {exc}") from None
    except PermissionError:
        raise TargetError(f"{name}: changing the interface needs root (CAP_NET_ADMIN)") from None
    except Exception as exc:  # pyroute2 NetlinkError and friends
        if getattr(exc, "code", None) == 1:
            raise TargetError(f"{name}: changing the interface needs root") from None
        raise
    info = link.link_info(name)
    if not info.up:
        raise TargetError(f"{name} is down and did not come up")
    if info.operstate not in ("UP", "UNKNOWN"):
        log.warning("no_carrier", extra={"interface": name,
                                                           "operstate": info.operstate})
    if info.mtu < MIN_MTU:
        raise TargetError(
            f"{name}: MTU {info.mtu} cannot carry one sector per frame; use --mtu {MIN_MTU} or more"
        )
    try:
        sock = RawSocket(name)
    except InterfaceError as exc:
        raise TargetError(f"{name}: {exc.strerror or exc}") from None
    if getattr(sock, "hwtype", ARPHRD_ETHER) != ARPHRD_ETHER:
        sock.close()
        raise TargetError(f"{name} is not an Ethernet interface; AoE needs one")
    if max_sectors_for_mtu(sock.mtu) < 1:  # pragma: no cover - guarded above
        sock.close()
        raise TargetError(f"{name}: MTU {sock.mtu} is too small")
    return sock
