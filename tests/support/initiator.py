"""Helpers for the initiator tests: targets (vblade or `aoe serve`) in a lab host, images,
and an initiator-side handle that opens AoeDisks inside the initiator's namespace.



"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aoe.initiator import AoeDisk
from aoe.initiator.discovery import query_config
from aoe.initiator.ports import open_ports
from aoe.lab import Host, Lab

AOE_BIN = str(Path(sys.executable).with_name("aoe"))
TARGET_KINDS = ["vblade", "serve"]
SHELF, SLOT = 5, 2
DISK_SIZE = 32 << 20


def write_image(path: Path, size: int, seed: int = 0, zero_ranges: tuple[tuple[int, int], ...] = (),
                ) -> bytes:
    """A random image (reproducible from ``seed``) with optional all-zero ranges."""
    rnd = __import__("random").Random(seed)
    data = bytearray(rnd.randbytes(size))
    for start, length in zero_ranges:
        data[start : start + length] = bytes(length)
    path.write_bytes(data)
    return bytes(data)


def start_target(kind: str, host: Host, ifname: str, image: Path, *, shelf: int = SHELF,
                 slot: int = SLOT, extra: tuple[str, ...] = (), state_dir: Path | None = None,
                 log: Path | None = None) -> subprocess.Popen[Any]:
    """Run vblade or `aoe serve` exporting ``image`` as shelf.slot on ``ifname``."""
    if kind == "vblade":
        argv = ["vblade", *extra, str(shelf), str(slot), ifname, str(image)]
    elif kind == "serve":
        state = state_dir or image.parent / f"state-{ifname}"
        state.mkdir(exist_ok=True)
        argv = [AOE_BIN, "serve", "--state-dir", str(state), "--no-announce", *extra, ifname,
                f"{shelf}.{slot}", str(image)]
    else:
        raise ValueError(kind)
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return host.popen(argv, stdout=out, stderr=out)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def wait_answering(host: Host, ifname: str, shelf: int = SHELF, slot: int = SLOT,
                   proc: subprocess.Popen[Any] | None = None, timeout: float = 15.0) -> None:
    """Poll with Query Config from ``host`` until shelf.slot answers on ``ifname``."""
    with host.enter():
        ports = open_ports([ifname])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"target exited with status {proc.returncode}")
            if query_config(ports, (shelf, slot), timeout=0.2, settle=0.0):
                return
        raise RuntimeError(f"target {shelf}.{slot} did not answer on {ifname}")
    finally:
        for p in ports:
            p.close()


@dataclass
class Rig:
    """A running target and the initiator host that reaches it."""

    lab: Lab
    kind: str
    target: Host
    initiator: Host
    ifaces: list[str]  # initiator-side interfaces
    image: Path
    data: bytes
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    shelf: int = SHELF
    slot: int = SLOT

    def open(self, **kw: Any) -> AoeDisk:
        kw.setdefault("dead_timeout", 5.0)
        with self.initiator.enter():
            return AoeDisk.open(self.shelf, self.slot, self.ifaces, **kw)

    def image_now(self) -> bytes:
        return self.image.read_bytes()

    def kill_targets(self) -> None:
        for proc in self.procs:
            self.lab.kill(proc)


def make_rig(lab: Lab, kind: str, tmp: Path, *, mtu: int = 1500, size: int = DISK_SIZE,
             cables: int = 1, extra: tuple[str, ...] = (), data_seed: int = 1,
             zero_ranges: tuple[tuple[int, int], ...] = (), wait: bool = True) -> Rig:
    """Target and initiator hosts joined by ``cables`` cables, a target on each cable's
    target end (same shelf.slot, same image: one disk, several MACs).

    ``wait=False`` (for a target that will not answer us) waits only for its first log
    line instead of an answer."""
    target = lab.host("target")
    initiator = lab.host("initiator")
    image = tmp / "disk.img"
    data = write_image(image, size, data_seed, zero_ranges)
    rig = Rig(lab, kind, target, initiator, [], image, data)
    for n in range(cables):
        cable = lab.cable(target, initiator, mtu=mtu)
        proc = start_target(kind, target, cable.a_ifname, image, extra=extra,
                            log=tmp / f"target{n}.log")
        rig.procs.append(proc)
        rig.ifaces.append(cable.b_ifname)
    for n, (proc, ifname) in enumerate(zip(rig.procs, rig.ifaces, strict=True)):
        if wait:
            wait_answering(initiator, ifname, proc=proc)
        else:
            wait_logged(tmp / f"target{n}.log", proc)
    return rig


def wait_logged(log: Path, proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not (log.exists() and log.stat().st_size):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"target did not start: {log.read_text(errors='replace')}")
        time.sleep(0.02)


def patterned(length: int, seed: int) -> bytes:
    """Deterministic non-zero-ish bytes for writes."""
    return bytes((seed * 31 + i * 7 + (i >> 9)) & 0xFF for i in range(length))


def env_without_color() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FORCE_COLOR", None)
    return env
