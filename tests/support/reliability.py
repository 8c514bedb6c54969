"""Helpers for the reliability tests: random images, `aoe serve` from a TOML file on any
number of interfaces (restartable, killable), file comparison and RSS sampling.

The reliability tests print their measured figures on lines starting with "FIGURE"
(run with ``-s`` to see them); docs/reliability.md quotes them.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aoe.initiator import AoeDisk
from aoe.lab import Host, Lab

from .target import AOE_BIN, _read_line, rss_kib

MIB = 1 << 20


def write_random(path: Path, size: int, seed: int, offset: int = 0) -> None:
    """Fill ``size`` bytes of ``path`` from ``offset`` with reproducible random data."""
    rng = random.Random(seed)
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.seek(offset)
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(rng.randbytes(n))
            left -= n


def sha256_of(path: Path, offset: int = 0, length: int | None = None) -> str:
    """SHA-256 of ``length`` bytes of a file from ``offset`` (default: to the end)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = os.fstat(f.fileno()).st_size - offset if length is None else length
        while left > 0:
            chunk = f.read(min(left, 8 * MIB))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def same_file(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and sha256_of(a) == sha256_of(b)


@dataclass
class ExportDef:
    """One ``[[export]]`` of the TOML configuration."""

    address: str
    path: Path
    offset: int | None = None
    length: int | None = None
    read_only: bool = False

    def toml(self) -> str:
        lines = ["[[export]]", f'address = "{self.address}"', f'path = "{self.path}"']
        if self.offset is not None:
            lines.append(f"offset = {self.offset}")
        if self.length is not None:
            lines.append(f"length = {self.length}")
        if self.read_only:
            lines.append("read_only = true")
        return "\n".join(lines) + "\n"


@dataclass
class Served:
    """An `aoe serve -c FILE` process in a lab host that can be killed and started again
    with the same configuration and state directory."""

    lab: Lab
    host: Host
    config: Path
    interfaces: list[str]
    extra: tuple[str, ...] = ()
    wrapper: tuple[str, ...] = ()  # e.g. ("strace", "-f", ...)
    proc: subprocess.Popen[Any] | None = None
    starts: int = 0
    ready_lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Served:
        argv = [*self.wrapper, AOE_BIN, "serve", "-c", str(self.config), *self.extra]
        proc = self.host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []
        for _ in self.interfaces:
            line = _read_line(proc, 20.0)
            if not line.startswith("ready"):
                self.lab.kill(proc)
                out, err = proc.communicate(timeout=5)
                raise RuntimeError(f"aoe serve did not start: {line!r} {out!r} {err!r}")
            lines.append(line)
        self.proc = proc
        self.ready_lines = lines
        self.starts += 1
        return self

    def kill9(self) -> None:
        """SIGKILL, and wait until the process is gone."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)  # the group: a wrapper too
        self.proc.wait(10)
        self.proc.communicate(timeout=5)
        self.lab.untrack(self.proc)

    def stop(self) -> tuple[str, str]:
        """SIGTERM; returns (stdout, stderr) after the ready lines."""
        assert self.proc is not None
        proc = self.proc
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group: a wrapper too
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.lab.kill(proc)
            out, err = proc.communicate()
        self.lab.untrack(proc)
        return out or "", err or ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        return rss_kib(self.pid)


def serve(lab: Lab, host: Host, tmp: Path, interfaces: list[str], exports: list[ExportDef],
          *, name: str = "exports", extra: tuple[str, ...] = (),
          wrapper: tuple[str, ...] = ()) -> Served:
    """Write a configuration for ``exports`` on ``interfaces`` and start `aoe serve`."""
    config = tmp / f"{name}.toml"
    ifaces = ", ".join(f'"{i}"' for i in interfaces)
    config.write_text(f'state_dir = "{tmp / (name + "-state")}"\ninterfaces = [{ifaces}]\n'
                      + "".join(e.toml() for e in exports))
    return Served(lab, host, config, interfaces, extra, wrapper).start()


def open_disk(host: Host, shelf: int, slot: int, ifaces: list[str], **kw: Any) -> AoeDisk:
    """AoeDisk.open inside ``host``'s namespace (its sockets stay there)."""
    with host.enter():
        return AoeDisk.open(shelf, slot, ifaces, **kw)


def delayed(seconds: float, fn: Any) -> threading.Thread:
    """Run ``fn`` in a thread after ``seconds``; join the thread to wait for it."""
    def run() -> None:
        time.sleep(seconds)
        fn()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def figure(text: str) -> None:
    """Print a measured figure (shown with ``pytest -s``)."""
    print(f"FIGURE {text}", flush=True)
