"""Local interfaces the initiator speaks AoE on: choose them, check them, open them.

A *port* is one raw socket on one local interface. Checks happen before any frame is sent
so a user learns "eth1 is down" rather than "no target answered".
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from ..net.link import (
    RUNNING_STATES,
    LinkInfo,
    LinkNotFoundError,
    default_interfaces,
    is_ethernet,
    link_info,
)
from ..net.rawsock import InterfaceError, RawSocket, close_all
from ..protocol.constants import ATA_HEADER_LEN, SECTOR_SIZE
from .errors import InterfaceUnusableError, MtuMismatchError, NotRootError


def check_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError("AoE needs raw Ethernet sockets: run as root (or with CAP_NET_RAW)")


def check_interface(ifname: str) -> LinkInfo:
    """The interface's state, or InterfaceUnusableError saying what is wrong with it."""
    try:
        link = link_info(ifname)
    except LinkNotFoundError:
        raise InterfaceUnusableError(f"interface {ifname!r} does not exist") from None
    if not is_ethernet(link):
        raise InterfaceUnusableError(f"interface {ifname!r} is not an Ethernet interface")
    if not link.up:
        raise InterfaceUnusableError(f"interface {ifname!r} is down (ip link set {ifname} up)")
    if link.operstate not in RUNNING_STATES:
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
        close_all(ports)
        raise
    return ports
