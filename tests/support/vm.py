"""Helpers for the tests that boot a real kernel (aoe.lab.vm): the skip rule, images with
known content, starting targets on the guest's tap."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from aoe.lab import Host
from aoe.lab.vm import unavailable_reason

AOE_BIN = str(Path(sys.executable).with_name("aoe"))
PYTHON = sys.executable


def require_vm() -> None:
    """Skip without root (no namespaces); otherwise a missing qemu or kernel is a failure:
    scripts/setup.sh installs them, and these tests must run wherever the suite runs."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    reason = unavailable_reason()
    if reason is not None:
        pytest.fail(f"cannot boot a guest: {reason}", pytrace=False)


def random_image(path: Path, size: int, seed: str) -> str:
    """A file of `size` pseudo-random bytes (reproducible from seed); returns its sha256."""
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < size:
        block = hashlib.sha512(block).digest()
        out += block * 64
    data = bytes(out[:size])
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def start_serve(host: Host, argv: list[str], ready: str = "serving") -> subprocess.Popen[str]:
    """Start `aoe serve ...` in host and wait until it says it serves (or fail with its
    output)."""
    proc = host.popen([AOE_BIN, "serve", "-v", *argv], stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        if not select.select([proc.stdout], [], [], 0.5)[0]:
            continue
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if ready in line:
            return proc
    host.lab.kill(proc)
    raise AssertionError("aoe serve did not start:\n" + "".join(seen))


def fsck(image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["fsck.ext4", "-n", "-f", str(image)], capture_output=True,
                          text=True, timeout=120, check=False)


def debugfs_cat(image: Path, name: str) -> bytes:
    done = subprocess.run(["debugfs", "-R", f"cat {name}", str(image)], capture_output=True,
                          timeout=60, check=True)
    return done.stdout


@dataclass
class SeenQuery:
    """A Query Config frame seen on the cable."""

    when: float  # time.monotonic() on the host
    src: bytes
    shelf: int
    tag: int
    response: bool


class FrameSizes:
    """Largest AoE frame seen on an interface per shelf, both directions, and every Query
    Config (a raw socket in the host's namespace, read by a thread until stop())."""

    def __init__(self, host: Host, ifname: str) -> None:
        with host.enter():
            # Every protocol: only such a socket also sees what the host's targets send.
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((ifname, 3))
        self.sock.settimeout(0.2)
        self.largest: dict[int, int] = {}
        self.queries: list[SeenQuery] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = bytearray(65536)
        while not self._stop.is_set():
            try:
                n = self.sock.recv_into(buf)
            except TimeoutError:
                continue
            except OSError:
                return
            if n >= 22 and buf[12:14] == b"\x88\xa2":
                shelf = int.from_bytes(buf[16:18], "big")  # after dst, src, type, ver/flags, error
                self.largest[shelf] = max(self.largest.get(shelf, 0), n)
                if n >= 24 and buf[19] == 1:  # Query Config
                    self.queries.append(SeenQuery(time.monotonic(), bytes(buf[6:12]), shelf,
                                                  int.from_bytes(buf[20:24], "big"),
                                                  bool(buf[14] & 0x08)))

    def stop(self) -> dict[int, int]:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        return dict(self.largest)
