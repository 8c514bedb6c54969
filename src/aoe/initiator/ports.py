"""Local interfaces the initiator speaks AoE on: choose them, check them, open them.

A *port* is one raw socket on one local interface. Checks happen before any frame is sent
so a user learns "eth1 is down" rather than "no target answered".
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from ..net.link import LinkInfo, LinkNotFoundError, link_info, list_links
from ..net.rawsock import InterfaceError, RawSocket
from ..protocol.constants import ATA_HEADER_LEN, SECTOR_SIZE
from .errors import InterfaceUnusableError, MtuMismatchError, NotRootError

_RUNNING = ("UP", "UNKNOWN")  # UNKNOWN: drivers (dummy, tun) that do not report carrier


def _is_ethernet(link: LinkInfo) -> bool:
    mac = link.mac or ""
    return link.name != "lo" and len(mac) == 17 and mac != "00:00:00:00:00:00"


def default_interfaces() -> list[str]:
    """Every Ethernet interface that is up, loopback excluded, in index order."""
    return [
        link.name
        for link in list_links()
        if _is_ethernet(link) and link.up and link.operstate in _RUNNING
    ]


def check_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError("AoE needs raw Ethernet sockets: run as root (or with CAP_NET_RAW)")


def check_interface(ifname: str) -> LinkInfo:
    """The interface's state, or InterfaceUnusableError saying what is wrong with it."""
    try:
        link = link_info(ifname)
    except LinkNotFoundError:
        raise InterfaceUnusableError(f"interface {ifname!r} does not exist") from None
    if not _is_ethernet(link):
        raise InterfaceUnusableError(f"interface {ifname!r} is not an Ethernet interface")
    if not link.up:
        raise InterfaceUnusableError(f"interface {ifname!r} is down (ip link set {ifname} up)")
    if link.operstate not in _RUNNING:
        raise InterfaceUnusableError(
            f"interface {ifname!r} has no link (state {link.operstate}): is the cable in?"
        )
    if link.mtu < ATA_HEADER_LEN + SECTOR_SIZE:
        raise MtuMismatchError(
            f"interface {ifname!r} has MTU {link.mtu}: AoE needs at least "
            f"{ATA_HEADER_LEN + SECTOR_SIZE} to carry one sector"
        )
    return link


def resolve_interfaces(ifaces: Iterable[str] | None) -> list[str]:
    """The interfaces to use: those named (checked), or all usable ones if none is named."""
    names = list(dict.fromkeys(ifaces or ()))
    if not names:
        names = default_interfaces()
        if not names:
            raise InterfaceUnusableError(
                "no Ethernet interface is up here: name one with -i IFACE"
            )
    for name in names:
        check_interface(name)
    return names


def open_ports(ifaces: Sequence[str]) -> list[RawSocket]:
    """One non-blocking raw AoE socket per interface (all closed again on failure)."""
    check_root()
    ports: list[RawSocket] = []
    try:
        for name in ifaces:
            try:
                port = RawSocket(name)
            except InterfaceError as exc:
                if exc.errno == 1:
                    raise NotRootError(str(exc.strerror)) from None
                raise InterfaceUnusableError(f"cannot open interface {name!r}: {exc}") from None
            port.setblocking(False)
            ports.append(port)
    except BaseException:
        for port in ports:
            port.close()
        raise
    return ports
