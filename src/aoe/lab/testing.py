"""Helpers for tests built on the lab (kept here so any test module can import them)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from aoe.lab.cable import Cable
from aoe.lab.core import Lab
from aoe.lab.host import Host

ETH_P_AOE = 0x88A2
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23


def netns_unavailable_reason() -> str | None:
    """Why lab tests cannot run on this machine, or None if they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not os.path.exists("/proc/self/ns/net"):
        return "kernel without network namespaces"
    return None


@dataclass
class TwoHosts:
    """What the two_hosts fixture yields."""

    lab: Lab
    target: Host
    initiator: Host
    cable: Cable

    @property
    def mtu(self) -> int:
        return self.cable.mtu


def make_two_hosts(lab: Lab, mtu: int = 1500, rate: str | int | None = None) -> TwoHosts:
    """Hosts "target" and "initiator" joined by one cable (target eth0 <-> initiator eth0)."""
    target = lab.host("target")
    initiator = lab.host("initiator")
    cable = lab.cable(target, initiator, mtu=mtu, rate=rate)
    return TwoHosts(lab, target, initiator, cable)


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
