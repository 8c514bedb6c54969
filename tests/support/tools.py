"""Helpers for the protocol-tool tests: disk images, and targets (vblade or `aoe serve`)
started in the lab's target host, ready once they answer."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aoe.checks.probe import Probe
from aoe.lab import Host
from aoe.lab.pair import TwoHosts

AOE = str(Path(sys.executable).with_name("aoe"))
SECTORS = 16384  # 8 MiB images: the fuzzer checksums all of it outside the scratch range


def make_image(path: Path, sectors: int = SECTORS, seed: int = 3) -> bytes:
    """An image whose every sector differs (so a misplaced write shows); returns its bytes."""
    data = bytearray()
    block = bytes((i * 31 + seed) & 0xFF for i in range(512))
    for n in range(sectors):
        data += n.to_bytes(8, "little") + block[8:]
    path.write_bytes(data)
    return bytes(data)


def wait_answering(host: Host, shelf: int, slot: int, proc: subprocess.Popen[Any],
                   limit: float = 10.0) -> None:
    """Block until the target answers a Query Config from ``host`` (or fail)."""
    deadline = time.monotonic() + limit
    with host.enter(), Probe("eth0", shelf, slot, timeout=0.2, retries=0) as probe:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"target exited with {proc.returncode}: {err!r}")
            if probe.discover() is not None:
                return
    raise RuntimeError("target did not answer within the limit")


def start_vblade(th: TwoHosts, image: Path, shelf: int = 1, slot: int = 0) -> subprocess.Popen[Any]:
    proc = th.target.popen(["vblade", str(shelf), str(slot), "eth0", str(image)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_answering(th.initiator, shelf, slot, proc)
    return proc


def start_aoe_serve(th: TwoHosts, image: Path, state_dir: Path, shelf: int = 1,
                    slot: int = 0) -> subprocess.Popen[Any]:
    proc = th.target.popen([AOE, "serve", "--state-dir", str(state_dir), "eth0",
                            f"{shelf}.{slot}", str(image)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_answering(th.initiator, shelf, slot, proc)
    return proc


def read_line(stream: Any, limit: float = 10.0) -> str:
    """One line from a pipe, or "" when nothing comes within ``limit`` seconds."""
    ready, _, _ = select.select([stream], [], [], limit)
    return stream.readline() if ready else ""
