"""Interface state that matters to AoE (up, MTU, max MTU, MAC), read and set via rtnetlink.

Every call opens its netlink socket in the calling thread, so it acts on the namespace
the thread is in: inside ``with host.enter():`` it sees that lab host's interfaces.
"""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

IFF_UP = 0x1


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
    with IPRoute() as ipr:
        idx = _lookup(ipr, ifname)
        return _info_from_msg(ipr.link("get", index=idx)[0])


def list_links() -> list[LinkInfo]:
    """All interfaces of the current thread's namespace, by index."""
    with IPRoute() as ipr:
        return sorted((_info_from_msg(m) for m in ipr.link("dump")), key=lambda i: i.index)


def _set_state(ifname: str, state: str) -> LinkInfo:
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
