"""A lab cable: one veth pair whose ends live in two hosts, optionally rate-shaped."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyroute2.netlink.exceptions import NetlinkError

from aoe.lab.nsutil import LabError
from aoe.units import parse_size

if TYPE_CHECKING:
    from aoe.lab.host import Host

_RATE_UNITS = {
    "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
    "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9,
}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
# tbf carries its rate in a 32-bit bytes/s field (pyroute2 does not send the 64-bit one).
MAX_RATE_BITS = (2**32 - 1) * 8
TC_H_ROOT = 0xFFFFFFFF


def parse_rate(rate: str | int) -> int:
    """Rate in bit/s from an int (bit/s) or a tc-style string such as "100mbit", "1gbit"."""
    if isinstance(rate, int):
        bits = rate
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", rate)
        unit = m.group(2).lower() if m else ""
        if not m or (unit and unit not in _RATE_UNITS):
            raise ValueError(f"bad rate {rate!r}: use e.g. 10mbit, 1gbit or bits per second")
        bits = int(float(m.group(1)) * _RATE_UNITS.get(unit, 1))
    if not 8 <= bits <= MAX_RATE_BITS:
        raise ValueError(f"rate {rate!r} out of range (8 bit/s .. {MAX_RATE_BITS} bit/s)")
    return bits


def parse_time(value: str | float) -> float:
    """Seconds from a number or a string such as "50ms"."""
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|ms|us)\s*", value)
    if not m:
        raise ValueError(f"bad time {value!r}: use e.g. 50ms")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


@dataclass(frozen=True)
class CableEnd:
    """One end of a cable: which host, which interface, which MAC."""

    host: Host
    ifname: str
    mac: str


class Cable:
    """A veth pair between two hosts. Create cables with `Lab.cable(a, b, ...)`."""

    def __init__(self, a: CableEnd, b: CableEnd, mtu: int) -> None:
        self.a_end = a
        self.b_end = b
        self.mtu = mtu
        self.rate: int | None = None

    def __repr__(self) -> str:
        return (f"Cable({self.a.name}:{self.a_ifname} <-> {self.b.name}:{self.b_ifname}, "
                f"mtu={self.mtu}, rate={self.rate})")

    a = property(lambda self: self.a_end.host, doc="Host at the A end.")
    b = property(lambda self: self.b_end.host, doc="Host at the B end.")
    a_ifname = property(lambda self: self.a_end.ifname, doc="Interface name at the A end.")
    b_ifname = property(lambda self: self.b_end.ifname, doc="Interface name at the B end.")
    a_mac = property(lambda self: self.a_end.mac, doc="MAC address at the A end.")
    b_mac = property(lambda self: self.b_end.mac, doc="MAC address at the B end.")

    @property
    def ends(self) -> tuple[CableEnd, CableEnd]:
        return (self.a_end, self.b_end)

    def end(self, host: Host) -> CableEnd:
        """The end of this cable that sits in `host`."""
        for e in self.ends:
            if e.host is host:
                return e
        raise LabError(f"cable {self!r} does not reach host {host.name!r}")

    def ifname(self, host: Host) -> str:
        return self.end(host).ifname

    def mac(self, host: Host) -> str:
        return self.end(host).mac

    def peer(self, host: Host) -> CableEnd:
        """The far end as seen from `host`."""
        here = self.end(host)
        return self.b_end if here is self.a_end else self.a_end

    def set_link(self, up: bool, *, end: Host | None = None) -> None:
        """Bring both ends (or only the one in `end`) down or up: a pulled cable."""
        for e in self.ends if end is None else (self.end(end),):
            with e.host.iproute() as ipr:
                ipr.link("set", index=_index(ipr, e), state="up" if up else "down")

    def set_mtu(self, mtu: int) -> None:
        """Change the MTU of both ends."""
        from aoe.net.link import set_mtu

        for e in self.ends:
            with e.host.enter():
                set_mtu(e.ifname, mtu)
        self.mtu = mtu

    def shape(self, rate: str | int, burst: str | int | None = None,
              latency: str | float = "50ms") -> None:
        """Cap both directions at `rate` with a tbf root qdisc on each end.

        burst defaults to 4 ms worth of rate, but at least two full frames so a frame of
        the current MTU always fits in the bucket.
        """
        bits = parse_rate(rate)
        min_burst = 2 * (self.mtu + 64)
        burst_bytes = max(min_burst, bits // 8 // 250) if burst is None else parse_size(burst)
        if burst_bytes < self.mtu + 14:
            raise ValueError(f"burst {burst_bytes} bytes is smaller than one frame "
                             f"({self.mtu + 14} bytes at MTU {self.mtu})")
        lat_us = int(parse_time(latency) * 1e6)
        self.unshape()
        for e in self.ends:
            with e.host.iproute() as ipr:
                try:
                    ipr.tc("add", "tbf", _index(ipr, e), rate=f"{bits}bit",
                           burst=burst_bytes, latency=f"{lat_us}us")
                except NetlinkError as exc:
                    raise LabError(f"tbf on {e.host.name}:{e.ifname} failed: {exc}") from exc
        self.rate = bits

    def unshape(self) -> None:
        """Remove any root qdisc set by shape() (back to the default)."""
        for e in self.ends:
            with e.host.iproute() as ipr:
                try:
                    ipr.tc("del", index=_index(ipr, e), parent=TC_H_ROOT)
                except NetlinkError:
                    pass  # nothing to remove
        self.rate = None


def _index(ipr: object, e: CableEnd) -> int:
    found = ipr.link_lookup(ifname=e.ifname)  # type: ignore[attr-defined]
    if not found:
        raise LabError(f"interface {e.ifname!r} is missing on host {e.host.name!r}")
    return int(found[0])
