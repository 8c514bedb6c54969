"""User-facing front ends the bench drives as a user would: `aoe mount`, `aoe nbd`, dd,
nbdcopy and fio, each a separate process whose readiness is read from its output."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aoe.lab import Host
from benchkit.env import AOE, BenchError


def _wait_line(proc: subprocess.Popen[str], needle: str, what: str, limit: float) -> str:
    """Read the process's stderr until a line containing `needle` (its ready message)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + limit
    seen: list[str] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            seen.append(line.strip())
            if needle in line:
                return line.strip()
        elif proc.poll() is not None:
            break
    raise BenchError(f"{what} did not come up: {' / '.join(s for s in seen if s)[-400:]}")


@contextmanager
def fuse_mount(host: Host, address: str, ifname: str, mountpoint: Path,
               extra: tuple[str, ...] = ()) -> Iterator[Path]:
    """`aoe mount ADDRESS MOUNTPOINT -f` (and `extra`) in the initiator namespace; yields
    the disk file.

    The mount is made in the machine's mount namespace (so dd can reach it) and always
    undone: SIGTERM unmounts, `fusermount3 -u -z` covers a process that died."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = host.popen([AOE, "mount", address, str(mountpoint), "-i", ifname, "-f", *extra],
                      private_sysfs=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                      text=True)
    try:
        _wait_line(proc, "mounted as", "aoe mount", 30.0)
        yield mountpoint / "disk"
    finally:
        host.lab.kill(proc, grace=10.0)
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True,
                           check=False)


@contextmanager
def nbd_export(host: Host, address: str, ifname: str, socket_path: Path) -> Iterator[str]:
    """`aoe nbd ADDRESS --socket PATH` in the initiator namespace; yields its NBD URI."""
    argv = [AOE, "nbd", address, "--socket", str(socket_path), "-i", ifname]
    proc = host.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = _wait_line(proc, "nbd", "aoe nbd", 30.0)
        uri = next((w for w in line.split() if w.startswith("nbd")),
                   f"nbd+unix:///?socket={socket_path}")
        yield uri
    finally:
        host.lab.kill(proc, grace=10.0)
        socket_path.unlink(missing_ok=True)


def wait_port(host: Host, addr: str, port: int, limit: float = 15.0) -> None:
    """Wait until something accepts TCP connections on addr:port, seen from `host`."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with host.enter():
            s = socket.socket()
        s.settimeout(0.5)
        try:
            s.connect((addr, port))
            return
        except OSError:
            time.sleep(0.1)
        finally:
            s.close()
    raise BenchError(f"nothing listens on {addr}:{port}")


def run(argv: list[str], timeout: float = 900.0) -> float:
    """Run a command in this namespace; return its wall time in seconds."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise BenchError(f"{' '.join(argv)} failed: {done.stderr.strip()[-400:]}")
    return seconds


def dd_read(path: Path, length: int) -> float:
    return run(["dd", f"if={path}", "of=/dev/null", "bs=4M", f"count={length >> 22}",
                "status=none"])


def dd_write(src: Path, path: Path, length: int) -> float:
    return run(["dd", f"if={src}", f"of={path}", "bs=4M", f"count={length >> 22}",
                "conv=fsync,notrunc", "status=none"])


def nbdcopy_read(uri: str) -> float:
    """The whole export, read and thrown away."""
    return run(["nbdcopy", uri, "null:"])


def nbdcopy_write(src: Path, uri: str) -> float:
    return run(["nbdcopy", "--flush", str(src), uri])


def fio_iops(host: Host, uri: str, rw: str, seconds: float, size: int,
             iodepth: int = 32) -> float:
    """IOPS of 4 KiB random `rw` (randread or randwrite) through fio's nbd engine, run in
    `host` (so a TCP URI reaches the lab's addresses)."""
    argv = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}",
            "--bs=4k", f"--iodepth={iodepth}", f"--size={size}", "--time_based",
            f"--runtime={seconds:g}", "--ramp_time=0.5", "--output-format=json"]
    done = host.run(argv, check=False, timeout=seconds + 120)
    text = done.stdout
    start = text.find("{")
    if done.returncode or start < 0:
        raise BenchError(f"fio failed: {(done.stderr or text).strip()[-400:]}")
    job: dict[str, Any] = json.loads(text[start:])["jobs"][0]
    if job.get("error"):
        raise BenchError(f"fio reported error {job['error']}")
    key = "read" if rw == "randread" else "write"
    return float(job[key]["iops"])
