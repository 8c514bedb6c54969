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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ..net import link
from ..net.mmsg import FrameBatch
from ..net.rawsock import InterfaceError, RawSocket, close_all
from ..protocol.constants import ETH_MIN_FRAME, MIN_MTU, max_sectors_for_mtu
from ..protocol.mac import format_mac
from . import counters as ck
from .counters import Counters
from .engine import Engine
from .pacing import Pacer
from .probe import other_owners
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
        keep_state: bool = False,
        probe: bool = False,
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
        self.keep_state = keep_state
        self.probe = probe
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
        self._chores: deque[Callable[[], None]] = deque()
        self.on_change: Callable[[], None] | None = None  # after a reload or link change
        self.reload_source: Callable[[], object] | None = None  # -> ServeConfig (SIGHUP)
        self._reloading = False
        self.started = time.time()

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
            if self.probe:
                self._refuse_taken_addresses([(i.name, s) for i, s in socks], self.specs)
            for spec in self.specs:
                self.exports.append(Store.open(spec, self.state_dir, self.keep_state))
        except StoreError as exc:
            close_all([s for _, s in socks])
            raise TargetError(str(exc)) from None
        except BaseException:
            close_all([s for _, s in socks])
            raise
        for ifs, sock in socks:
            served = [e for e in self.exports
                      if e.spec.interfaces is None or ifs.name in e.spec.interfaces]
            port = self._make_port(ifs.name, sock, served)
            self.ports.append(port)
            log.info(
                "serving",
                extra={"interface": ifs.name, "mtu": sock.mtu, "mac": format_mac(sock.mac),
                       "exports": [e.spec.name for e in served],
                       "max_sectors": port.engine.max_sectors,
                       "buffer_count": port.engine.buffer_count,
                       "compiled_burst_path": port.engine.accelerated},
            )
        self.fit_mask_limits()
        for e in self.exports:
            log.info("export", extra=e.describe())
            warn_if_open(e)

    def _make_port(self, name: str, sock: RawSocket, served: Sequence[Store]) -> _Port:
        """Engine and batch buffers sized for the socket's current MTU."""
        bufcnt = min(0xFFFF, sock.queue_capacity(sock.mtu + 14))
        engine = Engine(served, sock.mac, sock.mtu, self.counters, buffer_count=bufcnt)
        slot = -(-engine.frame_size // _SLOT_ROUND) * _SLOT_ROUND
        return _Port(name, sock, engine, sock.batch(self.batch_size, slot))

    def mtu_changed(self, name: str, mtu: int) -> None:
        """Serving thread: the interface's MTU changed: re-derive max sectors, rebuild the
        port's engine and buffers, and announce the exports with the new values."""
        for i, old in enumerate(self.ports):
            if old.name != name or old.sock.mtu == mtu:
                continue
            if max_sectors_for_mtu(mtu) < 1:
                log.error("mtu_too_small", extra={"interface": name, "mtu": mtu,
                                                  "why": "no sector fits a frame; not serving"})
            old.sock.mtu = mtu
            try:
                port = self._make_port(name, old.sock, old.engine.exports)
            except ValueError as exc:
                log.error("mtu_change_failed", extra={"interface": name, "why": str(exc)})
                return
            self.ports[i] = port
            self.fit_mask_limits()
            log.warning("mtu_changed", extra={
                "interface": name, "mtu": mtu, "max_sectors": port.engine.max_sectors,
                "was": old.engine.max_sectors})
            if self.announce:
                for frame in port.engine.announcements():
                    try:
                        port.sock.send(frame)
                        self.counters.frames_out += 1
                    except OSError:
                        self.counters.error(ck.SEND)
            if self.on_change is not None:
                self.on_change()

    def fit_mask_limits(self) -> None:
        """A mask list must fit one frame on every interface that serves the export."""
        served = [(p.engine.frame_size, {id(x) for x in p.engine.exports}) for p in self.ports]
        for e in self.exports:
            mtus = [size for size, ids in served if id(e) in ids]
            if mtus:
                e.mask_limit = min(255, (min(mtus) - 28) // 8)

    def _refuse_taken_addresses(self, socks: Sequence[tuple[str, RawSocket]],
                                specs: Sequence[ExportSpec]) -> None:
        """TargetError naming the other MAC when another target answers for an address we
        are about to serve (exports with ``force`` are only warned about)."""
        by_addr = {(s.shelf, s.slot): s for s in specs}
        taken = other_owners(socks, by_addr)
        for addr in sorted(taken):
            spec = by_addr[addr]
            who = ", ".join(f"{mac} on {ifn}" for ifn, mac in taken[addr])
            if spec.force:
                log.warning("address_shared", extra={"export": spec.name, "other": who,
                                                     "why": "--force"})
                continue
            raise TargetError(f"{spec.name}: another AoE target already answers for "
                              f"{addr[0]}.{addr[1]} ({who}); two targets on one address mix "
                              "two disks (stop it, pick another address, or --force)")

    def send_announcements(self, only: Sequence[Store] | None = None) -> None:
        """Broadcast one unsolicited Query Config answer per export and interface."""
        for p in self.ports:
            for frame in p.engine.announcements(only):
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
        ports = list(self.ports)
        while not self._stop:
            if ports != self.ports:  # a port was rebuilt (MTU change)
                for p in ports:
                    if p not in self.ports:
                        poller.unregister(p.fd)
                for p in self.ports:
                    if p not in ports:
                        poller.register(p.fd, select.POLLIN)
                ports = list(self.ports)
                by_fd = {p.fd: p for p in ports}
            for fd, _ev in poller.poll(1000):
                if fd == self._wake_r:
                    self._drain_wake()
                else:
                    drain(by_fd[fd])
            if self._chores:
                self._do_chores()

    def _serve_one(self, port: _Port) -> None:
        """One interface: block in recvmmsg itself (no poll), which wakes on the first frame
        and returns every frame already queued. A receive timeout lets :meth:`stop` and the
        SIGUSR1 dump be noticed; signals interrupt the wait at once."""
        port.sock.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                  struct.pack("ll", 0, BLOCK_TIMEOUT_US))
        drain = self._drain
        clock = time.monotonic
        pacer = Pacer(clock(), self.counters)
        while not self._stop and port in self.ports:
            taken = drain(port, True)
            if self._chores:
                self._do_chores()
            nap = pacer.after(taken, clock())
            if not nap:
                continue
            if not pacer.judging:
                time.sleep(nap)
                continue
            count = port.sock.arrivals
            count()  # from now on
            time.sleep(nap / 2)
            first = count()
            time.sleep(nap / 2)
            pacer.verdict(first, count(), clock())
        if not self._stop:  # the port was rebuilt (MTU change): serve the new one
            self.serve_forever()

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
            port.engine.now = time.time()
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
            for reply in replies:
                # never send a frame the wire would pad
                r = reply if len(reply) >= ETH_MIN_FRAME else (
                    reply + bytes(ETH_MIN_FRAME - len(reply)))
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
        self.call_soon(self._dump)

    def _dump(self) -> None:
        self._dump_requested = False
        if self.on_dump is not None:
            self.on_dump(self.counters)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the serving thread between two bursts (safe from any thread or a
        signal handler): what changes exports or ports goes through here, so no request is
        ever half-handled by an old and a new configuration."""
        self._chores.append(fn)
        self._wake()

    def _do_chores(self) -> None:
        while self._chores:
            fn = self._chores.popleft()
            try:
                fn()
            except Exception:  # a failed chore is logged; the target keeps serving
                log.exception("internal_error", extra={"action": "chore dropped"})

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
        close_all([p.sock for p in self.ports])
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

        def _hup(_signum: int, _frame: FrameType | None) -> None:
            self.request_reload()

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGUSR1, _usr1)
        signal.signal(signal.SIGHUP, _hup)

    def request_reload(self) -> None:
        """Re-read the configuration and apply the difference (SIGHUP); one at a time."""
        if self._reloading:
            log.warning("reload_ignored", extra={"why": "a reload is already running"})
            return
        if self.reload_source is None:
            log.warning("reload_ignored", extra={"why": "no --config file to re-read"})
            return
        self._reloading = True
        threading.Thread(target=self._reload, name="aoe-reload", daemon=True).start()

    def _reload(self) -> None:
        from .config import ConfigError, ServeConfig
        from .reload import apply_config

        try:
            log.info("reloading")
            assert self.reload_source is not None
            cfg = self.reload_source()
            assert isinstance(cfg, ServeConfig)
            apply_config(self, cfg)
        except ConfigError as exc:
            log.error("reload_failed", extra={"why": str(exc), "kept": "running configuration"})
            self._changed()
        except Exception:
            log.exception("reload_failed", extra={"kept": "running configuration"})
            self._changed()
        finally:
            self._reloading = False

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def warn_if_open(e: Store) -> None:
    """One warning line for a writable export any machine on the segment may write."""
    if not e.read_only and not e.state.masks:
        log.warning("open_to_all", extra={
            "export": e.spec.name,
            "why": "writable and no MAC allowed list: every machine on the segment may write",
            "hint": "--allow MAC (allow = [...] in the TOML) or --read-only"})


def _open_interface(ifs: InterfaceSpec) -> RawSocket:
    """Check the interface, set its MTU if asked, bring it up and open a raw socket on it."""
    name = ifs.name
    info = _link_info(name)
    if info.name == "lo" or info.mac in (None, "00:00:00:00:00:00"):
        raise TargetError(f"{name} is not an Ethernet interface; AoE needs one")
    _prepare_link(ifs, info)
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


def _link_info(name: str) -> link.LinkInfo:
    """The interface's state, or a TargetError saying why it cannot be read."""
    try:
        return link.link_info(name)
    except link.LinkNotFoundError:
        raise TargetError(f"no network interface named {name!r}") from None
    except PermissionError:
        raise TargetError(f"{name}: permission denied reading the interface (run as root)") \
            from None
    except link.LinkError as exc:
        raise TargetError(f"{name}: {exc}") from None


def _prepare_link(ifs: InterfaceSpec, info: link.LinkInfo) -> None:
    """Set the MTU asked for and bring the interface up, with one-line errors."""
    name = ifs.name
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
