"""The impairment relay: a 2-port hub for AoE frames that drops, duplicates, reorders,
delays and corrupts them on purpose.

The kernel here has no netem, so loss and disorder come from userspace. The relay sits on a
middle host with one port towards each side and copies every frame of EtherType 0x88A2
verbatim to the other port (frames are addressed by MAC, so nothing is rewritten), except
for what the configured impairments do. Decisions come from a seeded RNG per direction, so
a run with the same seed and the same frame sequence makes the same decisions.

Unimpaired directions forward whole batches with recvmmsg/sendmmsg and no per-frame Python
work beyond bookkeeping; impaired ones look at each frame.
"""

from __future__ import annotations

import ctypes
import heapq
import mmap
import random
import select
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from aoe.lab.nsutil import LabError
from aoe.net.rawsock import RawSocket, close_all
from aoe.protocol.constants import ETHERTYPE_AOE

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from aoe.lab.cable import Cable
    from aoe.lab.host import Host


class _HostsAndCables(Protocol):
    """What start_relay needs from a lab (:class:`aoe.lab.Lab` is one)."""

    def host(self, name: str) -> Host: ...
    def cable(self, a: Host, b: Host, *, mtu: int = 1500,
              rate: str | int | None = None) -> Cable: ...


ETH_HLEN = 14
SLOT_SIZE = 65536  # any frame a port can carry fits one batch slot


@dataclass(frozen=True)
class Impairment:
    """What happens to frames going one way. Rates are probabilities per frame (0..1),
    times are seconds. `delay` ± uniform `jitter` holds each frame back (jitter alone can
    reorder); `reorder` holds a frame until the next one has gone out (at most
    `reorder_hold` seconds); `corrupt` flips one byte after the Ethernet header."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    reorder_hold: float = 0.01

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "reorder", "corrupt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} rate must be between 0 and 1, not {value!r}")
        for name in ("delay", "jitter", "reorder_hold"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def active(self) -> bool:
        return any((self.drop, self.duplicate, self.reorder, self.corrupt, self.delay,
                    self.jitter))


@dataclass(frozen=True)
class RelayConfig:
    """Impairments for each direction (A->B and B->A), the seed and the EtherType relayed."""

    a_to_b: Impairment = field(default_factory=Impairment)
    b_to_a: Impairment = field(default_factory=Impairment)
    seed: int = 0
    ethertype: int = ETHERTYPE_AOE

    @classmethod
    def symmetric(cls, *, seed: int = 0, ethertype: int = ETHERTYPE_AOE,
                  **impairment: Any) -> RelayConfig:
        """Same impairments both ways, e.g. RelayConfig.symmetric(drop=0.1, seed=7)."""
        imp = Impairment(**impairment)
        return cls(imp, imp, seed, ethertype)


COUNTER_NAMES = ("received", "forwarded", "dropped", "duplicated", "reordered", "corrupted",
                 "delayed", "errors")


@dataclass(frozen=True)
class Counts:
    """What the relay did in one direction. forwarded counts frames sent out (so a
    duplicated frame counts twice); errors counts frames the outgoing port refused."""

    received: int = 0
    forwarded: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    delayed: int = 0
    errors: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class RelayStats:
    a_to_b: Counts
    b_to_a: Counts

    @property
    def total(self) -> Counts:
        return self.a_to_b + self.b_to_a

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"a_to_b": asdict(self.a_to_b), "b_to_a": asdict(self.b_to_a),
                "total": asdict(self.total)}


class SharedCounters:
    """Counters in shared memory, so the process that started a relay in another process
    reads them live. Slot layout: [ready, a_to_b counters..., b_to_a counters...]."""

    def __init__(self) -> None:
        n = 1 + 2 * len(COUNTER_NAMES)
        self._mm = mmap.mmap(-1, 8 * n)  # anonymous MAP_SHARED: survives fork
        self.slots = (ctypes.c_uint64 * n).from_buffer(self._mm)

    @property
    def ready(self) -> bool:
        return bool(self.slots[0])

    def set_ready(self) -> None:
        self.slots[0] = 1

    def store(self, direction: int, values: list[int]) -> None:
        base = 1 + direction * len(COUNTER_NAMES)
        for i, v in enumerate(values):
            self.slots[base + i] = v

    def snapshot(self) -> RelayStats:
        k = len(COUNTER_NAMES)
        raw = list(self.slots)
        return RelayStats(Counts(*raw[1:1 + k]), Counts(*raw[1 + k:1 + 2 * k]))


def _open_port(ifname: str, ethertype: int) -> RawSocket:
    try:
        sock = RawSocket(ifname, ethertype, promiscuous=True)  # a hub takes every frame
    except OSError as exc:
        raise LabError(f"relay port {ifname!r}: {exc.strerror or exc}") from None
    if not sock.promiscuous:
        sock.close()
        raise LabError(f"relay port {ifname!r}: promiscuous mode refused")
    return sock


class Relay:
    """Forward frames of one EtherType both ways between two interfaces of the current
    thread's namespace, impaired per `config`. run() blocks until stop() (or SIGTERM when
    run in a main thread, or `duration` elapsed)."""

    def __init__(self, port_a: str, port_b: str, config: RelayConfig | None = None, *,
                 counters: SharedCounters | None = None, batch: int = 64,
                 **impairment: Any) -> None:
        if config is not None and impairment:
            raise TypeError("give either a RelayConfig or impairment keywords, not both")
        if config is None:
            config = RelayConfig.symmetric(**impairment)
        self.ports = (port_a, port_b)
        self.config = config
        self.counters = counters or SharedCounters()
        self.batch_size = batch
        self._stop = threading.Event()
        self._counts = [[0] * len(COUNTER_NAMES), [0] * len(COUNTER_NAMES)]
        self._impair = (config.a_to_b, config.b_to_a)
        self._rng = (random.Random(f"{config.seed}/a_to_b"), random.Random(f"{config.seed}/b_to_a"))
        self._held: list[tuple[float, bytes] | None] = [None, None]
        self._heap: list[tuple[float, int, int, bytes]] = []
        self._seq = 0
        self._out: tuple[RawSocket, RawSocket] | None = None

    def stats(self) -> RelayStats:
        return self.counters.snapshot()

    def stop(self) -> None:
        self._stop.set()

    # --- main loop ----------------------------------------------------------------
    def run(self, duration: float | None = None) -> RelayStats:
        """Relay until stopped; returns the final counters."""
        sa = _open_port(self.ports[0], self.config.ethertype)
        try:
            sb = _open_port(self.ports[1], self.config.ethertype)
        except BaseException:
            sa.close()
            raise
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        self._out = (sb, sa)  # frames from port d go out on _out[d]
        end = None if duration is None else time.monotonic() + duration
        try:
            self.counters.set_ready()
            self._loop(sa, sb, end)
        finally:
            self._flush(0)
            self._flush(1)
            close_all([sa, sb])
        return self.stats()

    def _loop(self, sa: RawSocket, sb: RawSocket, end: float | None) -> None:
        poller = select.poll()
        fds = (sa.fileno(), sb.fileno())
        for fd in fds:
            poller.register(fd, select.POLLIN)
        batches = (sa.batch(self.batch_size, SLOT_SIZE, out=sb),
                   sb.batch(self.batch_size, SLOT_SIZE, out=sa))
        active = (self._impair[0].active, self._impair[1].active)
        counts = self._counts
        stop = self._stop
        while not stop.is_set():
            now = time.monotonic()
            if end is not None and now >= end:
                break
            events = poller.poll(self._wait_ms(now, end))
            for fd, _ in events:
                d = 0 if fd == fds[0] else 1
                batch = batches[d]
                c = counts[d]
                for _ in range(8):  # drain a busy port a few batches before looking again
                    n = batch.recv()
                    if not n:
                        break
                    c[0] += n
                    if active[d]:
                        now = time.monotonic()
                        for i in range(n):
                            self._impair_frame(d, batch.frame(i), now)
                    else:
                        refused = batch.send_errors
                        queued = batch.send_slots(batch.lengths, n)
                        refused = batch.send_errors - refused
                        c[1] += queued - refused
                        c[7] += refused
                    if n < batch.count:
                        break
                self._flush(d)
            if self._heap or self._held[0] or self._held[1]:
                self._release(time.monotonic())
                self._flush(0)
                self._flush(1)

    def _wait_ms(self, now: float, end: float | None) -> int:
        due = [end] if end is not None else []
        if self._heap:
            due.append(self._heap[0][0])
        due.extend(h[0] for h in self._held if h is not None)
        if not due:
            return 200
        return max(0, min(200, int((min(due) - now) * 1000) + 1))

    def _flush(self, d: int) -> None:
        self.counters.store(d, self._counts[d])

    # --- per-frame impairments ------------------------------------------------------
    def _impair_frame(self, d: int, frame: bytes, now: float) -> None:
        imp = self._impair[d]
        rng = self._rng[d]
        c = self._counts[d]
        if imp.drop and rng.random() < imp.drop:
            c[2] += 1
            return
        if imp.corrupt and len(frame) > ETH_HLEN and rng.random() < imp.corrupt:
            pos = rng.randrange(ETH_HLEN, len(frame))
            buf = bytearray(frame)
            buf[pos] ^= rng.randrange(1, 256)
            frame = bytes(buf)
            c[5] += 1
        copies = 1
        if imp.duplicate and rng.random() < imp.duplicate:
            copies = 2
            c[3] += 1
        for _ in range(copies):
            if imp.delay or imp.jitter:
                wait = imp.delay + (rng.uniform(-imp.jitter, imp.jitter) if imp.jitter else 0.0)
                c[6] += 1
                self._seq += 1
                heapq.heappush(self._heap, (now + max(0.0, wait), self._seq, d, frame))
            else:
                self._emit(d, frame, now)

    def _emit(self, d: int, frame: bytes, now: float) -> None:
        """Send a frame, unless the reorder draw holds it back for the next one to pass."""
        imp = self._impair[d]
        held = self._held[d]
        if held is None and imp.reorder and self._rng[d].random() < imp.reorder:
            self._held[d] = (now + imp.reorder_hold, frame)
            return
        self._send(d, frame)
        if held is not None:
            self._held[d] = None
            self._counts[d][4] += 1  # a later frame overtook the held one
            self._send(d, held[1])

    def _send(self, d: int, frame: bytes) -> None:
        assert self._out is not None
        try:
            self._out[d].send(frame)
            self._counts[d][1] += 1
        except OSError:
            self._counts[d][7] += 1

    def _release(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, d, frame = heapq.heappop(heap)
            self._emit(d, frame, now)
        for d in (0, 1):
            held = self._held[d]
            if held is not None and held[0] <= now:  # nobody came to overtake it
                self._held[d] = None
                self._send(d, held[1])


class RelayHandle:
    """A relay running in its own process on the middle host of A -- R -- B."""

    def __init__(self, relay: Relay, process: BaseProcess, host: Host,
                 a: Host, b: Host, a_cable: Cable, b_cable: Cable) -> None:
        self.relay = relay
        self.process = process
        self.host = host
        self.a = a
        self.b = b
        self.a_cable = a_cable  # a <-> relay host
        self.b_cable = b_cable  # relay host <-> b

    def __repr__(self) -> str:
        return f"RelayHandle({self.a.name} <-> {self.host.name} <-> {self.b.name})"

    # The addresses a test needs to talk across the relay.
    a_ifname = property(lambda self: self.a_cable.a_ifname, doc="A's port towards the relay.")
    b_ifname = property(lambda self: self.b_cable.b_ifname, doc="B's port towards the relay.")
    a_mac = property(lambda self: self.a_cable.a_mac, doc="MAC of A's port.")
    b_mac = property(lambda self: self.b_cable.b_mac, doc="MAC of B's port.")

    @property
    def config(self) -> RelayConfig:
        return self.relay.config

    def stats(self) -> RelayStats:
        """Counters so far (live, read from shared memory)."""
        return self.relay.stats()

    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self, timeout: float = 2.0) -> RelayStats:
        """Stop the relay process and return its final counters."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        return self.stats()

    def __enter__(self) -> RelayHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_relay(lab: _HostsAndCables, a: Host, b: Host, *, name: str = "relay", mtu: int = 1500,
                rate: str | int | None = None, config: RelayConfig | None = None,
                ready_timeout: float = 5.0, **impairment: Any) -> RelayHandle:
    """Create host `name`, cable a -- name -- b, and run a Relay between its two ports."""
    if config is not None and impairment:
        raise TypeError("give either config= or impairment keywords, not both")
    cfg = config or RelayConfig.symmetric(**impairment)
    mid = lab.host(name)
    a_cable = lab.cable(a, mid, mtu=mtu, rate=rate)
    b_cable = lab.cable(mid, b, mtu=mtu, rate=rate)
    relay = Relay(a_cable.b_ifname, b_cable.a_ifname, cfg)
    proc = mid.spawn(relay.run)
    deadline = time.monotonic() + ready_timeout
    while not relay.counters.ready:
        if not proc.is_alive():
            raise LabError(f"relay on {mid.name} exited early (code {proc.exitcode})")
        if time.monotonic() > deadline:
            raise LabError(f"relay on {mid.name} not ready after {ready_timeout}s")
        time.sleep(0.005)
    return RelayHandle(relay, proc, mid, a, b, a_cable, b_cable)
