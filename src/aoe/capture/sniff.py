"""Live AoE traffic tools: watch frames on a link (`aoe sniff`) and probe a target
(`aoe ping`). Both are library calls; the click commands in :mod:`aoe.capture.cli` only
print what these return.

The sniffer's socket does not ignore outgoing frames (unlike the data-path socket): on
a host that is itself an initiator or a target, both directions are part of the traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks.probe import Probe, Reply
from ..net.rawsock import RawSocket
from ..protocol import (
    BROADCAST_SHELF,
    BROADCAST_SLOT,
    AtaOpcode,
    Command,
    DecodeError,
    Frame,
    decode,
    format_mac,
)
from ..protocol.describe import describe, to_dict
from .pcap import PcapWriter

COMMAND_NAMES = {
    "ata": Command.ATA,
    "config": Command.QUERY_CONFIG,
    "mask": Command.MAC_MASK_LIST,
    "reserve": Command.RESERVE_RELEASE,
}


@dataclass(slots=True)
class Captured:
    """One frame seen on the link: when, its bytes, and its decoding (or why it failed)."""

    time: float
    raw: bytes
    outgoing: bool
    frame: Frame | None = None
    error: str | None = None

    def line(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time))
        stamp += f".{int(self.time % 1 * 1e6):06d}"
        if self.frame is not None and self.error is None:
            return f"{stamp} {describe(self.frame)}"
        src = format_mac(self.raw[6:12]) if len(self.raw) >= 12 else "?"
        dst = format_mac(self.raw[0:6]) if len(self.raw) >= 6 else "?"
        return f"{stamp} {src} > {dst} MALFORMED ({len(self.raw)} bytes) {self.error}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"time": round(self.time, 6), "length": len(self.raw),
                               "outgoing": self.outgoing}
        if self.frame is not None:
            out.update(to_dict(self.frame))
        if self.error is not None:
            out["malformed"] = self.error
        return out


def parse_commands(names: Iterable[str]) -> set[int]:
    """``["ata", "config"]`` to command numbers; ValueError names the valid choices."""
    out = set()
    for name in names:
        key = name.strip().lower()
        if key not in COMMAND_NAMES:
            raise ValueError(f"unknown command {name!r}: use {', '.join(COMMAND_NAMES)}")
        out.add(int(COMMAND_NAMES[key]))
    return out


def classify(raw: bytes, stamp: float, outgoing: bool) -> Captured:
    cap = Captured(stamp, raw, outgoing)
    try:
        cap.frame = decode(raw)
    except DecodeError as exc:
        cap.error = str(exc)
        if isinstance(exc.header, Frame):
            cap.frame = exc.header
    return cap


def wanted(cap: Captured, target: tuple[int, int] | None, commands: set[int] | None) -> bool:
    """Does a frame pass the filters? Requests broadcast to the target's address count."""
    f = cap.frame
    if target is not None:
        if f is None:
            return False
        shelf, slot = target
        if f.shelf not in (shelf, BROADCAST_SHELF) or f.slot not in (slot, BROADCAST_SLOT):
            return False
    if commands is not None and (f is None or f.command not in commands):
        return False
    return True


def open_sniffer(ifname: str, promiscuous: bool = True) -> RawSocket:
    """A raw socket seeing every AoE frame on ``ifname``, both directions."""
    return RawSocket(ifname, promiscuous=promiscuous, outgoing=True)


def sniff(
    ifname: str,
    *,
    target: tuple[int, int] | None = None,
    commands: set[int] | None = None,
    count: int | None = None,
    timeout: float | None = None,
    promiscuous: bool = True,
    pcap: Path | None = None,
    on_frame: Callable[[Captured], None] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> list[Captured]:
    """Capture AoE frames passing the filters until ``count`` frames or ``timeout`` seconds.

    Frames are handed to ``on_frame`` as they come and appended to ``pcap`` if given;
    the list of all of them is returned (also when interrupted with Ctrl-C).
    """
    got: list[Captured] = []
    writer = PcapWriter(pcap) if pcap else None
    sock = open_sniffer(ifname, promiscuous)
    try:
        if on_ready:
            on_ready()
        deadline = None if timeout is None else time.monotonic() + timeout
        while count is None or len(got) < count:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            sock.settimeout(left)
            try:
                raw, outgoing = sock.recvfrom(65536)
            except TimeoutError:
                break
            cap = classify(raw, time.time(), outgoing)
            if not wanted(cap, target, commands):
                continue
            got.append(cap)
            if writer:
                writer.write(cap.time, raw)
            if on_frame:
                on_frame(cap)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        if writer:
            writer.close()
    return got


def dissect(raw: bytes) -> str:
    """Scapy's layer-by-layer view of a frame (for ``aoe sniff --verbose``)."""
    from scapy.layers.l2 import Ether

    from . import scapy_layers  # noqa: F401 - binds the AoE layers to Ether

    return str(Ether(raw).show(dump=True))


# --- ping ---------------------------------------------------------------------------------
@dataclass(slots=True)
class PingProbe:
    """One probe: RTTs in seconds of the Query Config and IDENTIFY, None when unanswered."""

    seq: int
    config_rtt: float | None = None
    identify_rtt: float | None = None
    mac: bytes | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "mac": format_mac(self.mac) if self.mac else None,
                "config_rtt_ms": _ms(self.config_rtt), "identify_rtt_ms": _ms(self.identify_rtt),
                "note": self.note}


@dataclass
class PingResult:
    target: str
    ifname: str
    probes: list[PingProbe] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return sum(1 for p in self.probes if p.config_rtt is not None)

    def stats(self, attr: str) -> tuple[float, float, float] | None:
        rtts = [v for p in self.probes if (v := getattr(p, attr)) is not None]
        if not rtts:
            return None
        return min(rtts), sum(rtts) / len(rtts), max(rtts)

    def summary(self) -> str:
        sent = len(self.probes)
        loss = 100.0 * (sent - self.answered) / sent if sent else 0.0
        lines = [f"--- {self.target} ping statistics ---",
                 f"{sent} probes, {self.answered} answered, {loss:.0f}% loss"]
        for name, attr in (("config", "config_rtt"), ("identify", "identify_rtt")):
            st = self.stats(attr)
            if st:
                lines.append(f"{name} rtt min/avg/max = "
                             + "/".join(f"{v * 1e3:.3f}" for v in st) + " ms")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "interface": self.ifname,
                               "sent": len(self.probes), "answered": self.answered,
                               "probes": [p.to_dict() for p in self.probes]}
        for attr in ("config_rtt", "identify_rtt"):
            st = self.stats(attr)
            out[f"{attr}_ms"] = None if st is None else dict(
                zip(("min", "avg", "max"), (round(v * 1e3, 3) for v in st), strict=True))
        return out


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 3)


def ping(
    ifname: str,
    shelf: int,
    slot: int,
    *,
    count: int = 3,
    interval: float = 1.0,
    timeout: float = 1.0,
    on_probe: Callable[[PingProbe], None] | None = None,
) -> PingResult:
    """Query Config then IDENTIFY, ``count`` times, like aoeping; RTTs in the result.

    Until the target has answered once, the Query Config is broadcast (to learn its MAC);
    afterwards both go to its MAC. Requests are padded to 60 bytes, as a NIC would.
    """
    result = PingResult(f"{shelf}.{slot}", ifname)
    with Probe(ifname, shelf, slot, timeout=timeout, retries=0, promiscuous=False) as probe:
        for seq in range(1, count + 1):
            began = time.monotonic()
            one = PingProbe(seq)
            reply = probe.config() if probe.target_mac else probe.discover()
            if reply is not None:
                probe.target_mac = reply.frame.src
                one.mac, one.config_rtt = reply.frame.src, reply.rtt
                ident = probe.ata(AtaOpcode.IDENTIFY_DEVICE, 0, 1)
                one.identify_rtt, one.note = _identify_outcome(ident)
            else:
                one.note = "no answer"
            result.probes.append(one)
            if on_probe:
                on_probe(one)
            if seq < count:
                time.sleep(max(0.0, interval - (time.monotonic() - began)))
    return result


def _identify_outcome(reply: Reply | None) -> tuple[float | None, str]:
    if reply is None:
        return None, "IDENTIFY unanswered"
    if reply.frame.is_error:
        return reply.rtt, f"IDENTIFY answered with AoE error {reply.frame.error}"
    return reply.rtt, ""
