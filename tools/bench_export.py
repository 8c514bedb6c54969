#!/usr/bin/env python3
"""Sequential throughput of the exports against the block API they sit on, in one run.

AoE mode (default, root): a target (`aoe serve` or vblade) in one lab namespace, the
initiator in the other. Measured in interleaved rounds (medians compared):
  raw    AoeDisk.read/write called directly (1 MiB x 1 and x 4 threads, 4 MiB x 2;
         the best pattern of each round)
  fuse   dd through the FUSE file (bs=4M, direct I/O; writes with conv=fsync)
  nbd    nbdcopy through the NBD export (4 connections; writes with --flush)
Local mode (--local): the same over FileBlockDevice on an image in the page cache, which
shows the exports' own overhead.

    .venv/bin/python tools/bench_export.py [--target serve|vblade] [--mtu 9000]
        [--rate 1gbit] [--size-mib 256] [--rounds 5] [--local] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aoe.export.blockdev import BlockDevice, FileBlockDevice
from aoe.export.fuse import mounted
from aoe.export.nbdserver import NbdServer

AOE = str(Path(sys.executable).with_name("aoe"))
MiB = 1 << 20
SHELF, SLOT = 9, 1


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sh(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{argv}: {done.stderr.strip()}")


# -- the three ways through ------------------------------------------------------------

RAW_PATTERNS = [(MiB, 1), (MiB, 4), (4 * MiB, 2)]  # (request size, threads)


def raw_read(dev: BlockDevice, size: int, chunk: int, threads: int) -> float:
    """Reads into reused buffers when the device offers readinto (AoeDisk and
    FileBlockDevice do): the fastest way to use the block API, and no allocator noise."""
    local = threading.local()
    readinto = getattr(dev, "readinto", None)

    def one(off: int) -> None:
        if readinto is None:
            dev.read(off, chunk)
            return
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(chunk)
        readinto(off, buf)

    def go() -> None:
        if threads == 1:
            for off in range(0, size, chunk):
                one(off)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(one, range(0, size, chunk)))

    return timed(go)


def raw_write(dev: BlockDevice, size: int, data: bytes, chunk: int, threads: int) -> float:
    view = memoryview(data)

    def go() -> None:
        if threads == 1:
            for off in range(0, size, chunk):
                dev.write(off, view[off : off + chunk])  # type: ignore[arg-type]
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda off: dev.write(off, view[off : off + chunk]),  # type: ignore[arg-type]
                              range(0, size, chunk)))
        dev.flush()

    return timed(go)


def fuse_read(path: str, size: int) -> float:
    return timed(lambda: sh(["dd", f"if={path}", "of=/dev/null", "bs=4M",
                             f"count={size // (4 * MiB)}", "status=none"]))


def fuse_write(path: str, size: int, src: str) -> float:
    return timed(lambda: sh(["dd", f"if={src}", f"of={path}", "bs=4M",
                             f"count={size // (4 * MiB)}", "conv=fsync,notrunc",
                             "status=none"]))


def nbd_read(uri: str) -> float:
    return timed(lambda: sh(["nbdcopy", uri, "null:"]))


def nbd_write(uri: str, src: str) -> float:
    return timed(lambda: sh(["nbdcopy", "--flush", src, uri]))


# -- one full comparison ---------------------------------------------------------------

Samples = dict[str, dict[str, list[float]]]


def compare(dev: BlockDevice, size: int, rounds: int, work: Path) -> Samples:
    """MB/s samples of each way and direction, rounds interleaved (A B C A B C ...) so
    that drifts in machine load hit every way alike. For raw, each round keeps the best
    of the request patterns in RAW_PATTERNS."""
    src = work / "src.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    samples: Samples = {k: {"read": [], "write": []} for k in ("raw", "fuse", "nbd")}
    mp = work / "mp"
    mp.mkdir(exist_ok=True)

    def note(way: str, direction: str, seconds: float) -> None:
        rate = size / seconds / 1e6
        samples[way][direction].append(rate)
        print(f"  {way:<5} {direction:<5} {rate:8.1f} MB/s", flush=True)

    with mounted(dev, mp) as disk_file, NbdServer(dev, socket_path=work / "b.sock") as srv:
        srv.start()
        for r in range(rounds):
            print(f"round {r + 1}/{rounds}", flush=True)
            note("raw", "read", min(raw_read(dev, size, c, t) for c, t in RAW_PATTERNS))
            note("fuse", "read", fuse_read(disk_file, size))
            note("nbd", "read", nbd_read(srv.uri))
            note("raw", "write", min(raw_write(dev, size, data, c, t) for c, t in RAW_PATTERNS))
            note("fuse", "write", fuse_write(disk_file, size, str(src)))
            note("nbd", "write", nbd_write(srv.uri, str(src)))
    return samples


def report(samples: Samples, label: str, as_json: bool) -> None:
    med = {w: {d: statistics.median(v) for d, v in dirs.items()} for w, dirs in samples.items()}
    best = {w: {d: max(v) for d, v in dirs.items()} for w, dirs in samples.items()}
    rows = []
    for way in ("raw", "fuse", "nbd"):
        row: dict[str, Any] = {"way": way}
        for d in ("read", "write"):
            row[f"{d}_median_MBps"] = round(med[way][d], 1)
            row[f"{d}_best_MBps"] = round(best[way][d], 1)
            row[f"{d}_pct_of_raw"] = round(med[way][d] / med["raw"][d] * 100)
        rows.append(row)
    if as_json:
        print(json.dumps({"setup": label, "rounds": len(samples["raw"]["read"]),
                          "results": rows}))
        return
    print(f"\n{label}, {len(samples['raw']['read'])} rounds (median MB/s, best in brackets)")
    print(f"{'way':<6}{'read':>18}{'% raw':>7}{'write':>18}{'% raw':>7}")
    for row in rows:
        rd = f"{row['read_median_MBps']:.0f} ({row['read_best_MBps']:.0f})"
        wr = f"{row['write_median_MBps']:.0f} ({row['write_best_MBps']:.0f})"
        print(f"{row['way']:<6}{rd:>18}{row['read_pct_of_raw']:>7}{wr:>18}"
              f"{row['write_pct_of_raw']:>7}")


def run_local(size: int, rounds: int, as_json: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        work = Path(tmp)
        image = work / "disk.img"
        image.write_bytes(os.urandom(size))
        with FileBlockDevice(image) as dev:
            samples = compare(dev, size, rounds, work)
    report(samples, f"FileBlockDevice, {size // MiB} MiB image in the page cache", as_json)


def run_aoe(target: str, mtu: int, rate: str | None, size: int, rounds: int,
            as_json: bool) -> None:
    from aoe.initiator import AoeDisk
    from aoe.lab import Lab
    from aoe.lab.pair import make_two_hosts

    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp, Lab() as lab:
        work = Path(tmp)
        image = work / "disk.img"
        image.write_bytes(os.urandom(size))
        hosts = make_two_hosts(lab, mtu=mtu, rate=rate)
        t_if, i_if = hosts.cable.a_ifname, hosts.cable.b_ifname
        if target == "vblade":
            argv = ["vblade", str(SHELF), str(SLOT), t_if, str(image)]
        else:
            (work / "state").mkdir()
            argv = [AOE, "serve", "--state-dir", str(work / "state"), t_if,
                    f"{SHELF}.{SLOT}", str(image)]
        proc = hosts.target.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        disk: Any = None
        deadline = time.monotonic() + 15
        while disk is None:
            try:
                with hosts.initiator.enter():
                    disk = AoeDisk.open(SHELF, SLOT, [i_if], timeout=0.5)
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
        try:
            print(f"{disk!r}, target {target}, MTU {mtu}", flush=True)
            samples = compare(disk, size, rounds, work)
        finally:
            disk.close()
            lab.kill(proc)
    shaped = f", shaped to {rate}" if rate else ""
    report(samples, f"AoE over veth, MTU {mtu}{shaped}, target {target}, {size // MiB} MiB",
           as_json)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=["serve", "vblade"], default="serve")
    ap.add_argument("--mtu", type=int, default=9000)
    ap.add_argument("--rate", help="shape the cable, e.g. 1gbit (default: unshaped veth)")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--local", action="store_true", help="FileBlockDevice, no network")
    ap.add_argument("--json", action="store_true", help="one JSON line with the results")
    args = ap.parse_args()
    size = args.size_mib * MiB // (4 * MiB) * (4 * MiB)
    if args.local:
        run_local(size, args.rounds, args.json)
    else:
        run_aoe(args.target, args.mtu, args.rate, size, args.rounds, args.json)


if __name__ == "__main__":
    main()
