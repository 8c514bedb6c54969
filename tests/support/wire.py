"""Raw AoE frames and sockets for tests that speak to a target or relay byte by byte."""

from __future__ import annotations

import socket

from aoe.net.rawsock import RawSocket
from aoe.protocol.constants import ETHERTYPE_AOE
from aoe.protocol.mac import parse_mac


def mac_bytes(text: str) -> bytes:
    """b'\\x..' * 6 from 'aa:bb:cc:dd:ee:ff'."""
    return parse_mac(text)


def aoe_socket(ifname: str, timeout: float | None = 2.0) -> socket.socket:
    """A raw socket for EtherType 0x88A2 on ifname, in the current thread's namespace,
    that does not see its own outgoing frames."""
    return RawSocket(ifname, timeout=timeout).sock


def aoe_frame(dst: str, src: str, payload: bytes) -> bytes:
    """An Ethernet frame of EtherType 0x88A2 (payload taken as is, no padding)."""
    return parse_mac(dst) + parse_mac(src) + ETHERTYPE_AOE.to_bytes(2, "big") + payload
