"""Helpers for the target tests: start `aoe serve` or vblade in a lab host, and a small raw
socket client speaking AoE through the protocol codec."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aoe.lab import Host, Lab
from aoe.lab.pair import TwoHosts
from aoe.net.rawsock import RawSocket
from aoe.protocol import (
    AtaBody,
    AtaFlag,
    Command,
    ConfigBody,
    Frame,
    decode,
    encode,
)
from aoe.protocol.errors import DecodeError

AOE_BIN = str(Path(sys.executable).with_name("aoe"))
SHELF, SLOT = 7, 3


def aoe_cmd(*args: str) -> list[str]:
    return [AOE_BIN, *args]


@dataclass
class Reply:
    raw: bytes
    frame: Frame


class Client:
    """A raw socket in a lab host that sends AoE requests and collects the answers.

    Frames are sent unpadded (like the kernel initiator before the NIC pads them); answers
    of any length are accepted, so short replies can be checked rather than missed.
    """

    def __init__(self, host: Host, ifname: str = "eth0") -> None:
        with host.enter():
            raw = RawSocket(ifname, rcvbuf=4 << 20)
        self.sock = raw.sock
        self.mac: bytes = raw.mac
        self._tag = 0x1000

    def close(self) -> None:
        self.sock.close()

    def next_tag(self) -> int:
        self._tag += 1
        return self._tag

    def send(self, frame: Frame | bytes) -> None:
        self.sock.send(frame if isinstance(frame, bytes) else encode(frame))

    def gather(self, tag: int | None, timeout: float = 1.0, want: int | None = 1,
               to: bytes | None = None) -> list[Reply]:
        """Responses with ``tag`` (any tag if None) addressed to ``to`` (default: us)."""
        dst = self.mac if to is None else to
        out: list[Reply] = []
        deadline = time.monotonic() + timeout
        while want is None or len(out) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                break
            raw = self.sock.recv(65536)
            try:
                f = decode(raw)
            except DecodeError:
                continue
            if not f.is_response or f.dst != dst and dst != b"*":
                continue
            if tag is not None and f.tag != tag:
                continue
            out.append(Reply(raw, f))
        return out

    def request(self, frame: Frame, timeout: float = 1.0, to: bytes | None = None) -> Reply | None:
        self.send(frame)
        got = self.gather(frame.tag, timeout, 1, to)
        return got[0] if got else None

    def silent(self, frame: Frame, wait: float = 0.4, to: bytes | None = None) -> bool:
        """True when nothing answers ``frame`` within ``wait`` seconds."""
        self.send(frame)
        return not self.gather(frame.tag, wait, 1, to)

    # --- frame builders ------------------------------------------------------------
    def frame(self, dst: bytes, shelf: int, slot: int, command: int, body: Any = b"",
              src: bytes | None = None, tag: int | None = None, version: int = 1) -> Frame:
        return Frame(dst, src or self.mac, shelf, slot, command,
                     self.next_tag() if tag is None else tag, body, 0, 0, version)

    def ata(self, dst: bytes, shelf: int, slot: int, opcode: int, lba: int = 0, count: int = 0,
            data: bytes = b"", ext: bool = True, write: bool = False, feature: int = 0,
            src: bytes | None = None) -> Frame:
        aflags = (AtaFlag.EXTENDED if ext else 0) | (AtaFlag.WRITE if write else 0)
        if not ext:
            lba = (lba & 0x0FFFFFFF) | (0xE0 << 24)
        return self.frame(dst, shelf, slot, Command.ATA,
                          AtaBody(int(aflags), feature, count, opcode, lba, data), src=src)

    def config(self, dst: bytes, shelf: int, slot: int, ccmd: int = 0, text: bytes = b"",
               src: bytes | None = None) -> Frame:
        return self.frame(dst, shelf, slot, Command.QUERY_CONFIG,
                          ConfigBody(0, 0, 0, 0, ccmd, text), src=src)


@dataclass
class RunningTarget:
    """A target process in the lab's "target" host and how to reach it."""

    kind: str  # "pyaoe" or "vblade"
    proc: subprocess.Popen[Any]
    mac: bytes
    shelf: int
    slot: int
    image: Path
    mtu: int
    first_line: str = ""

    def stop(self, lab: Lab, sig: int = signal.SIGTERM, timeout: float = 5.0) -> tuple[str, str]:
        """Signal the process, wait for it and return (stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            lab.kill(self.proc)
            out, err = self.proc.communicate()
        lab.untrack(self.proc)
        return out or "", err or ""


def make_image(path: Path, size: int, seed: int = 1) -> Path:
    """A file of ``size`` bytes: a recognisable pattern in its first MiB, sparse after."""
    with open(path, "wb") as f:
        head = min(size, 1 << 20)
        pattern = bytes((i * 7 + seed) & 0xFF for i in range(4096))
        f.write((pattern * (head // 4096 + 1))[:head])
        f.truncate(size)
    return path


def target_mac(th: TwoHosts) -> bytes:
    return bytes.fromhex(th.cable.mac(th.target).replace(":", ""))


def start_pyaoe(th: TwoHosts, image: Path, state_dir: Path, *args: str, shelf: int = SHELF,
                slot: int = SLOT, ready_timeout: float = 15.0,
                env: dict[str, str] | None = None) -> RunningTarget:
    """Run `aoe serve` in the target host (with ``env`` added to its environment) and wait
    for its "ready" line."""
    argv = aoe_cmd("serve", "--state-dir", str(state_dir), *args, "eth0", f"{shelf}.{slot}",
                   str(image))
    proc = th.target.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, **(env or {})})
    line = _read_line(proc, ready_timeout)
    if not line.startswith("ready") and not line.startswith('{"ready"'):
        out, err = proc.communicate(timeout=5)
        raise RuntimeError(f"aoe serve did not start: {line!r} {out!r} {err!r}")
    return RunningTarget("pyaoe", proc, target_mac(th), shelf, slot, image, th.mtu, line)


def start_vblade(th: TwoHosts, image: Path, shelf: int = SHELF, slot: int = SLOT,
                 client: Client | None = None) -> RunningTarget:
    """Run vblade in the target host and wait until it answers a Query Config."""
    proc = th.target.popen(["vblade", str(shelf), str(slot), "eth0", str(image)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rt = RunningTarget("vblade", proc, target_mac(th), shelf, slot, image, th.mtu)
    own = client is None
    c = client or Client(th.initiator)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"vblade exited: {proc.stderr.read() if proc.stderr else ''}")
            if c.request(c.config(rt.mac, shelf, slot), timeout=0.2):
                return rt
        raise RuntimeError("vblade did not answer")
    finally:
        if own:
            c.close()


def _read_line(proc: subprocess.Popen[Any], timeout: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            chunk = os.read(fd, 1)
            if not chunk:
                break
            buf += chunk
            if chunk == b"\n":
                break
        elif proc.poll() is not None:
            break
    return buf.decode(errors="replace")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
