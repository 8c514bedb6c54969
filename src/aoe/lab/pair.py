"""Two hosts on one cable: the lab most tests, tools and benchmarks stand on."""

from __future__ import annotations

import os
from dataclasses import dataclass

from aoe.lab.cable import Cable
from aoe.lab.core import Lab
from aoe.lab.host import Host


def netns_unavailable_reason() -> str | None:
    """Why lab tests cannot run on this machine, or None if they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not os.path.exists("/proc/self/ns/net"):
        return "kernel without network namespaces"
    return None


@dataclass
class TwoHosts:
    """Hosts "target" and "initiator" and the cable between them."""

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
