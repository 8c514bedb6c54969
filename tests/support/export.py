"""Helpers for the export tests: images, a minimal raw NBD client (to send what real
clients never send), and mount clean-up that runs even when a test fails."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import struct
import subprocess
from pathlib import Path

from aoe.export import nbdproto as p
from aoe.export.blockdev import BlockDevice
from aoe.mounts import run_helper


def terminal_signals() -> None:
    """A child's SIGINT and SIGTERM at their defaults, as a terminal's Ctrl-C finds them
    (``preexec_fn``): a background job of a script, as `make test` may be, starts with
    SIGINT ignored, and the child would inherit that."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def background_job_signals() -> None:
    """A child's SIGINT ignored and SIGTERM at its default (``preexec_fn``), as a script's
    background job (`cmd &`) starts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def random_image(path: Path, size: int, seed: int = 0) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(argv: list[str], timeout: float = 60.0, check: bool = True,
        **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a tool; on failure the assertion shows its output."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,  # type: ignore[call-overload]
                          check=False, **kw)
    if check:
        assert done.returncode == 0, f"{argv} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


def umount_quietly(path: Path | str, fuse: bool = False) -> None:
    """Clean-up for finally blocks: unmount if mounted (lazily if busy)."""
    path = os.fspath(path)
    if not os.path.ismount(path):
        return
    argv = ["fusermount3", "-u"] if fuse else ["umount"]
    if run_helper([*argv, path]).returncode != 0:  # safe with our own FUSE files open
        run_helper([*argv[:-1], "-uz" if fuse else "-l", path])


class RawNbd:
    """A bare NBD client on a socket: handshake pieces and transmission requests."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)

    @classmethod
    def unix(cls, path: str) -> RawNbd:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        return cls(s)

    def close(self) -> None:
        self.sock.close()

    def recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"server closed after {len(buf)} of {n} bytes")
            buf += chunk
        return buf

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    # handshake
    def greeting(self, client_flags: int = p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES) -> int:
        magic, opt_magic, flags = struct.unpack(">QQH", self.recv(18))
        assert (magic, opt_magic) == (p.NBDMAGIC, p.IHAVEOPT)
        self.sock.sendall(struct.pack(">I", client_flags))
        return int(flags)

    def option(self, option: int, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">QII", p.IHAVEOPT, option, len(data)) + data)

    def option_reply(self) -> tuple[int, int, bytes]:
        magic, option, reply, length = struct.unpack(">QIII", self.recv(20))
        assert magic == p.OPT_REPLY_MAGIC
        return option, reply, self.recv(length)

    def go(self, name: str = "", requests: tuple[int, ...] = (p.INFO_BLOCK_SIZE,),
           option: int = p.OPT_GO) -> list[tuple[int, bytes]]:
        raw = name.encode()
        data = struct.pack(">I", len(raw)) + raw + struct.pack(f">H{len(requests)}H",
                                                               len(requests), *requests)
        self.option(option, data)
        replies = []
        while True:
            _, reply, payload = self.option_reply()
            replies.append((reply, payload))
            if reply != p.REP_INFO:
                return replies

    # transmission
    def request(self, command: int, cookie: int, offset: int = 0, length: int = 0,
                flags: int = 0, data: bytes = b"") -> None:
        self.sock.sendall(p.pack_request(command, cookie, offset, length, flags) + data)

    def simple_reply(self, read_length: int = 0) -> tuple[int, int, bytes]:
        error, cookie = p.parse_simple_reply(self.recv(16))
        data = self.recv(read_length) if read_length and not error else b""
        return error, cookie, data


class PassThrough:
    """A block device passing every call to a real one (test devices add to it)."""

    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev

    @property
    def size(self) -> int:
        return self.dev.size

    @property
    def read_only(self) -> bool:
        return self.dev.read_only

    def read(self, offset: int, length: int) -> bytes:
        return self.dev.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self.dev.write(offset, data)

    def flush(self) -> None:
        self.dev.flush()


class CountFlushes(PassThrough):
    """Pass-through to a real block device that counts flush() calls."""

    def __init__(self, dev: BlockDevice) -> None:
        super().__init__(dev)
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        self.dev.flush()

    def close(self) -> None:
        self.dev.close()
