"""Interface state that matters to AoE (up, MTU, max MTU, MAC), read and set via rtnetlink.

Every call opens its netlink socket in the calling thread, so it acts on the namespace
the thread is in: inside ``with host.enter():`` it sees that lab host's interfaces.

Reading (what every initiator command does at start-up) speaks rtnetlink directly: one
RTM_GETLINK dump parsed here costs well under a millisecond, where importing pyroute2
costs 0.2 s or more on a slow CPU. Changing links goes through pyroute2, imported then.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyroute2 import IPRoute

IFF_UP = 0x1
# rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h)
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWLINK, _RTM_GETLINK = 16, 18
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_OPERSTATE = 1, 3, 4, 16
_IFLA_LINKINFO, _IFLA_INFO_KIND = 18, 1
_IFLA_MIN_MTU, _IFLA_MAX_MTU = 50, 51
_OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTA = struct.Struct("=HH")  # len, type


class LinkError(Exception):
    """An interface could not be read or changed."""


class LinkNotFoundError(LinkError, LookupError):
    """No interface of that name exists in the current network namespace."""

    def __init__(self, ifname: str) -> None:
        super().__init__(f"no network interface named {ifname!r} in this network namespace")
        self.ifname = ifname


class MtuError(LinkError, ValueError):
    """The requested MTU is outside what the interface accepts."""


@dataclass(frozen=True)
class LinkInfo:
    name: str
    index: int
    up: bool  # administratively up (IFF_UP)
    mtu: int
    max_mtu: int | None  # None when the kernel does not report it
    mac: str | None
    operstate: str  # "UP", "DOWN", "LOWERLAYERDOWN", "UNKNOWN", ...
    kind: str | None  # "veth", "dummy", ...; None for plain devices such as lo
    min_mtu: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """rtattrs of data[start:end] by type (nested ones left packed)."""
    out: dict[int, bytes] = {}
    while start + 4 <= end:
        length, kind = _RTA.unpack_from(data, start)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[start + 4 : start + length]
        start += (length + 3) & ~3
    return out


def _u32(attrs: dict[int, bytes], kind: int) -> int | None:
    raw = attrs.get(kind)
    return int.from_bytes(raw[:4], "little") if raw and len(raw) >= 4 else None


def _parse_link(msg: bytes, offset: int, end: int) -> LinkInfo:
    _family, _type, index, flags, _change = _IFINFO.unpack_from(msg, offset)
    attrs = _attrs(msg, offset + _IFINFO.size, end)
    kind = None
    if _IFLA_LINKINFO in attrs:
        nested = attrs[_IFLA_LINKINFO]
        raw_kind = _attrs(nested, 0, len(nested)).get(_IFLA_INFO_KIND)
        kind = raw_kind.rstrip(b"\0").decode() if raw_kind else None
    mac = attrs.get(_IFLA_ADDRESS)
    state = attrs.get(_IFLA_OPERSTATE, b"\0")[0]
    return LinkInfo(
        name=attrs.get(_IFLA_IFNAME, b"").rstrip(b"\0").decode(),
        index=index,
        up=bool(flags & IFF_UP),
        mtu=_u32(attrs, _IFLA_MTU) or 0,
        max_mtu=_u32(attrs, _IFLA_MAX_MTU) or None,  # 0 means "no limit reported"
        mac=":".join(f"{b:02x}" for b in mac) if mac else None,
        operstate=_OPERSTATES[state] if state < len(_OPERSTATES) else "UNKNOWN",
        kind=kind,
        min_mtu=_u32(attrs, _IFLA_MIN_MTU) or None,
    )


def _dump_links() -> list[LinkInfo]:
    """Every link of the calling thread's namespace, from one RTM_GETLINK dump."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        seq = int.from_bytes(os.urandom(2), "little") + 1
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.send(_NLMSG.pack(_NLMSG.size + len(body), _RTM_GETLINK,
                              _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body)
        links: list[LinkInfo] = []
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind, _flags, got_seq, _pid = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size:
                    raise LinkError("malformed rtnetlink answer")
                if got_seq == seq:
                    if kind == _NLMSG_DONE:
                        return links
                    if kind == _NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
                        raise LinkError(f"listing links failed: {os.strerror(code)}")
                    if kind == _RTM_NEWLINK:
                        links.append(_parse_link(data, offset + _NLMSG.size, offset + length))
                offset += (length + 3) & ~3


def _lookup(ipr: IPRoute, ifname: str) -> int:
    if not ifname or len(ifname) > 15 or "/" in ifname:
        raise LinkNotFoundError(ifname)
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LinkNotFoundError(ifname)
    return int(found[0])


def _info_from_msg(msg: Any) -> LinkInfo:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
    return LinkInfo(
        name=msg.get_attr("IFLA_IFNAME"),
        index=int(msg["index"]),
        up=bool(msg["flags"] & IFF_UP),
        mtu=int(msg.get_attr("IFLA_MTU")),
        max_mtu=msg.get_attr("IFLA_MAX_MTU") or None,  # 0 means "no limit reported"
        mac=msg.get_attr("IFLA_ADDRESS"),
        operstate=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"),
        kind=kind,
        min_mtu=msg.get_attr("IFLA_MIN_MTU") or None,
    )


def link_info(ifname: str) -> LinkInfo:
    """State of one interface in the current thread's namespace."""
    if not ifname or len(ifname) > 15 or "/" in ifname:
        raise LinkNotFoundError(ifname)
    for link in _dump_links():
        if link.name == ifname:
            return link
    raise LinkNotFoundError(ifname)


def list_links() -> list[LinkInfo]:
    """All interfaces of the current thread's namespace, by index."""
    return sorted(_dump_links(), key=lambda i: i.index)


def _set_state(ifname: str, state: str) -> LinkInfo:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        idx = _lookup(ipr, ifname)
        try:
            ipr.link("set", index=idx, state=state)
        except NetlinkError as exc:
            raise LinkError(f"cannot set {ifname} {state}: {exc.args[-1]}") from exc
        return _info_from_msg(ipr.link("get", index=idx)[0])


def link_up(ifname: str) -> LinkInfo:
    """Bring an interface administratively up; returns its new state."""
    return _set_state(ifname, "up")


def link_down(ifname: str) -> LinkInfo:
    """Bring an interface administratively down; returns its new state."""
    return _set_state(ifname, "down")


def set_mtu(ifname: str, mtu: int) -> LinkInfo:
    """Set an interface's MTU, checked against the limits the kernel reports."""
    if isinstance(mtu, bool) or not isinstance(mtu, int):
        raise MtuError(f"MTU must be an integer, not {mtu!r}")
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        idx = _lookup(ipr, ifname)
        info = _info_from_msg(ipr.link("get", index=idx)[0])
        if info.max_mtu is not None and mtu > info.max_mtu:
            raise MtuError(f"MTU {mtu} is above the maximum {info.max_mtu} of {ifname}")
        low = info.min_mtu if info.min_mtu is not None else 68
        if mtu < low:
            raise MtuError(f"MTU {mtu} is below the minimum {low} of {ifname}")
        try:
            ipr.link("set", index=idx, mtu=mtu)
        except NetlinkError as exc:
            if exc.code == errno.EINVAL:
                raise MtuError(f"{ifname} refused MTU {mtu}: {exc.args[-1]}") from exc
            raise LinkError(f"cannot set MTU {mtu} on {ifname}: {exc.args[-1]}") from exc
        return _info_from_msg(ipr.link("get", index=idx)[0])


RUNNING_STATES = ("UP", "UNKNOWN")  # UNKNOWN: drivers (dummy, tun) that report no carrier


def is_ethernet(link: LinkInfo) -> bool:
    """An interface AoE can speak on: a real MAC, not the loopback."""
    mac = link.mac or ""
    return link.name != "lo" and len(mac) == 17 and mac != "00:00:00:00:00:00"


def default_interfaces() -> list[str]:
    """Every Ethernet interface that is up, loopback excluded, in index order: where the
    commands speak AoE when no interface is named."""
    return [
        link.name
        for link in list_links()
        if is_ethernet(link) and link.up and link.operstate in RUNNING_STATES
    ]
