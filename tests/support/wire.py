"""Raw AoE frames and sockets for tests that speak to a target or relay byte by byte."""

from __future__ import annotations

import socket

ETH_P_AOE = 0x88A2
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23


def mac_bytes(text: str) -> bytes:
    """b'\\x..' * 6 from 'aa:bb:cc:dd:ee:ff'."""
    return bytes.fromhex(text.replace(":", ""))


def aoe_socket(ifname: str, timeout: float | None = 2.0) -> socket.socket:
    """A raw AF_PACKET socket for EtherType 0x88A2 on ifname, in the current thread's
    namespace, that does not see its own outgoing frames."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_AOE))
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.bind((ifname, ETH_P_AOE))
    s.settimeout(timeout)
    return s


def aoe_frame(dst: str, src: str, payload: bytes) -> bytes:
    """An Ethernet frame of EtherType 0x88A2 (payload taken as is, no padding)."""
    return mac_bytes(dst) + mac_bytes(src) + ETH_P_AOE.to_bytes(2, "big") + payload
