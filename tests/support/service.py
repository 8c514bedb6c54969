"""Helpers for the service tests: a switched segment of several hosts, and `aoe serve` runs."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aoe.lab import Host, Lab

from .target import aoe_cmd


@dataclass
class Segment:
    """Hosts joined through a bridge in a "switch" host: every frame reaches every host."""

    lab: Lab
    hosts: dict[str, Host]
    macs: dict[str, str]


def make_segment(lab: Lab, *names: str, mtu: int = 1500) -> Segment:
    sw = lab.host("sw")
    hosts: dict[str, Host] = {}
    macs: dict[str, str] = {}
    sw.run(["ip", "link", "add", "br0", "type", "bridge"])
    for name in names:
        h = lab.host(name)
        cable = lab.cable(h, sw, mtu=mtu)
        sw.run(["ip", "link", "set", cable.ifname(sw), "master", "br0"])
        hosts[name] = h
        macs[name] = cable.mac(h)
    sw.run(["ip", "link", "set", "br0", "mtu", str(mtu), "up"])
    return Segment(lab, hosts, macs)


def serve(host: Host, *args: str) -> subprocess.Popen[str]:
    """Start `aoe serve ARGS` and return once it printed its ready line (or exited)."""
    p = host.popen(aoe_cmd("serve", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line.startswith(("ready", '{"ready"')):
        _, err = p.communicate(timeout=10)
        raise RuntimeError(f"aoe serve did not start: {line!r} {err!r}")
    return p


def stop(lab: Lab, p: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> tuple[str, str]:
    if p.poll() is None:
        p.send_signal(sig)
    try:
        out, err = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        lab.kill(p)
        out, err = p.communicate()
    lab.untrack(p)
    return out or "", err or ""


def image(path: Path, size: int, byte: int) -> Path:
    path.write_bytes(bytes([byte]) * size)
    return path
