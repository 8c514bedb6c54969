#!/usr/bin/env python3
"""Sequential-read throughput of `aoe serve` against vblade, in one run, on the same veth.

A plain windowed reader (``window`` READ SECTORS EXT requests in flight, each answer
immediately replaced by the next request, batched with recvmmsg/sendmmsg) runs in the
initiator namespace; the target runs in the target namespace. Runs alternate A B A B at
MTU 1500 and 9000, and the medians are printed with their ratio. Run as root:

    .venv/bin/python tools/bench_target.py [--seconds 3] [--rounds 3] [--window 16]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aoe.lab import Host, Lab
from aoe.lab.pair import make_two_hosts
from aoe.net.mmsg import FrameBatch
from aoe.net.rawsock import RawSocket
from aoe.protocol.constants import ETHERTYPE_AOE, max_sectors_for_mtu
from aoe.protocol.frames import ATA_ARGS, HEADER

SHELF, SLOT = 9, 1
AOE_BIN = str(Path(sys.executable).with_name("aoe"))
TAG = struct.Struct("!I")


def read_window(ifname: str, dst: bytes, mtu: int, window: int, seconds: float,
                sectors_total: int) -> dict[str, float]:
    """The reader (runs in the initiator namespace): sequential READ SECTORS EXT with
    ``window`` requests outstanding; returns data bytes/s and frames/s."""
    raw = RawSocket(ifname)
    sock = raw.sock
    src = raw.mac
    count = max_sectors_for_mtu(mtu)
    rx = FrameBatch(sock.fileno(), 64, mtu + 64)
    tx = FrameBatch(sock.fileno(), window, 64)
    lba = 0
    lba_of: dict[int, int] = {}

    def fill(slot: int, tag: int) -> None:
        nonlocal lba
        if lba + count > sectors_total:
            lba = 0
        v = tx.views[slot]
        HEADER.pack_into(v, 0, dst, src, ETHERTYPE_AOE, 0x10, 0, SHELF, SLOT, 0, tag)
        ATA_ARGS.pack_into(v, 24, 0x40, 0, count, 0x24, lba & 0xFFFFFFFF, lba >> 32)
        lba_of[tag] = lba
        lba += count
        tx.queue(slot, 60)

    for slot in range(window):
        fill(slot, slot)
    tx.flush()
    data = frames = retrans = 0
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    start = time.monotonic()
    end = start + seconds
    lengths, views = rx.lengths, rx.views
    unpack_tag = TAG.unpack_from
    while True:
        n = rx.recv()
        if not n:
            now = time.monotonic()
            if now >= end:
                break
            if not poller.poll(20):
                # Lost frames: resend everything outstanding with fresh tags.
                for tag in list(lba_of):
                    slot = tag % window
                    old = lba_of.pop(tag)
                    TAG.pack_into(tx.views[slot], 20, tag + window)
                    lba_of[tag + window] = old
                    tx.queue(slot, 60)
                    retrans += 1
                tx.flush()
            continue
        for i in range(n):
            v = views[i]
            if not v[14] & 0x08:
                continue
            tag = unpack_tag(v, 20)[0]
            if lba_of.pop(tag, None) is None:
                continue
            if v[14] & 0x04 or v[27] & 0x01:
                raise RuntimeError(f"target answered with an error: {bytes(v[14:36]).hex()}")
            data += lengths[i] - 36
            frames += 1
            fill(tag % window, tag + window)
        tx.flush()
        if time.monotonic() >= end:
            break
    elapsed = time.monotonic() - start
    sock.close()
    return {"MBps": data / elapsed / 1e6, "fps": frames / elapsed, "retransmits": retrans}


def read_window_plain(ifname: str, dst: bytes, mtu: int, window: int, seconds: float,
                      sectors_total: int) -> dict[str, float]:
    """The plain reader: the same requests, but one recv and one send per frame (no
    batching), as the simplest initiator would do it."""
    raw = RawSocket(ifname, timeout=0.02)
    sock = raw.sock
    src = raw.mac
    count = max_sectors_for_mtu(mtu)
    reqs = [bytearray(60) for _ in range(window)]
    lba_of: dict[int, int] = {}
    lba = 0

    def issue(tag: int) -> None:
        nonlocal lba
        if lba + count > sectors_total:
            lba = 0
        r = reqs[tag % window]
        HEADER.pack_into(r, 0, dst, src, ETHERTYPE_AOE, 0x10, 0, SHELF, SLOT, 0, tag)
        ATA_ARGS.pack_into(r, 24, 0x40, 0, count, 0x24, lba & 0xFFFFFFFF, lba >> 32)
        lba_of[tag] = lba
        lba += count
        sock.send(r)

    for tag in range(window):
        issue(tag)
    buf = bytearray(mtu + 64)
    data = frames = retrans = 0
    start = time.monotonic()
    end = start + seconds
    unpack_tag = TAG.unpack_from
    while True:
        try:
            n = sock.recv_into(buf)
        except TimeoutError:
            if time.monotonic() >= end:
                break
            for tag in list(lba_of):
                lba_of.pop(tag)
                r = reqs[tag % window]
                TAG.pack_into(r, 20, tag + window)
                lba_of[tag + window] = 0
                sock.send(r)
                retrans += 1
            continue
        if not buf[14] & 0x08:
            continue
        tag = unpack_tag(buf, 20)[0]
        if lba_of.pop(tag, None) is None:
            continue
        if buf[14] & 0x04 or buf[27] & 0x01:
            raise RuntimeError(f"target answered with an error: {bytes(buf[14:36]).hex()}")
        data += n - 36
        frames += 1
        issue(tag + window)
        if frames & 63 == 0 and time.monotonic() >= end:
            break
    elapsed = time.monotonic() - start
    sock.close()
    return {"MBps": data / elapsed / 1e6, "fps": frames / elapsed, "retransmits": retrans}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_target(kind: str, host: Host, image: Path, state: Path) -> subprocess.Popen[Any]:
    if kind == "pyaoe":
        argv = [AOE_BIN, "serve", "--state-dir", str(state), "--no-announce", "eth0",
                f"{SHELF}.{SLOT}", str(image)]
        proc = host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"aoe serve did not start: {line} {proc.stderr.read()}")  # type: ignore[union-attr]
        return proc
    proc = host.popen(["vblade", str(SHELF), str(SLOT), "eth0", str(image)],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return proc


def measure(kind: str, mtu: int, seconds: float, window: int, image: Path,
            state: Path, reader: str = "batched") -> dict[str, float]:
    with Lab() as lab:
        th = make_two_hosts(lab, mtu=mtu)
        proc = start_target(kind, th.target, image, state)
        try:
            dst = bytes.fromhex(th.cable.mac(th.target).replace(":", ""))
            sectors = image.stat().st_size // 512
            fn = read_window if reader == "batched" else read_window_plain
            cpu0 = _cpu_seconds(proc.pid)
            result: dict[str, float] = th.initiator.call(
                fn, "eth0", dst, mtu, window, seconds, sectors, timeout=seconds + 30)
            cpu = _cpu_seconds(proc.pid) - cpu0
            frames = result["fps"] * seconds
            result["cpu_us_per_frame"] = cpu / frames * 1e6 if frames else 0.0
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                lab.kill(proc)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--size-mb", type=int, default=256, help="image size (read sequentially)")
    ap.add_argument("--mtu", type=int, action="append", help="MTUs (default 1500 and 9000)")
    ap.add_argument("--only", choices=["pyaoe", "vblade"], help="measure one target only")
    ap.add_argument("--reader", choices=["batched", "plain"], default="batched",
                    help="batched: recvmmsg/sendmmsg; plain: one recv and one send per frame")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_target needs root (network namespaces)")
    kinds = [args.only] if args.only else ["pyaoe", "vblade"]
    if "vblade" in kinds and shutil.which("vblade") is None:
        sys.exit("vblade is not installed")
    mtus = args.mtu or [1500, 9000]
    tmp = Path(tempfile.mkdtemp(prefix="bench-target-"))
    image = tmp / "disk.img"
    with open(image, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(args.size_mb):
            f.write(chunk)
    results: dict[int, dict[str, list[dict[str, float]]]] = {}
    try:
        for mtu in mtus:
            results[mtu] = {k: [] for k in kinds}
            for rnd in range(args.rounds):
                for kind in kinds:
                    r = measure(kind, mtu, args.seconds, args.window, image, tmp / "state",
                                args.reader)
                    results[mtu][kind].append(r)
                    print(f"mtu {mtu:5d} round {rnd + 1} {kind:7s} {r['MBps']:8.1f} MB/s "
                          f"{r['fps']:9.0f} frames/s  target CPU "
                          f"{r['cpu_us_per_frame']:5.2f} us/frame  "
                          f"retransmits {r['retransmits']:.0f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    print()
    for mtu in mtus:
        med = {k: statistics.median(r["MBps"] for r in results[mtu][k]) for k in kinds}
        fps = {k: statistics.median(r["fps"] for r in results[mtu][k]) for k in kinds}
        cpu = {k: statistics.median(r["cpu_us_per_frame"] for r in results[mtu][k])
               for k in kinds}
        line = f"MTU {mtu:5d}: " + "  ".join(
            f"{k} {med[k]:7.1f} MB/s ({fps[k]:7.0f} f/s, {cpu[k]:4.2f} us CPU/frame)"
            for k in kinds)
        if len(kinds) == 2:
            ratio = med["pyaoe"] / med["vblade"] if med["vblade"] else float("inf")
            line += f"  ratio pyaoe/vblade {ratio:.2f}"
            summary[mtu] = {"pyaoe": med["pyaoe"], "vblade": med["vblade"], "ratio": ratio,
                            "pyaoe_cpu_us": cpu["pyaoe"], "vblade_cpu_us": cpu["vblade"]}
        print(line)
    if args.json:
        print(json.dumps({"window": args.window, "seconds": args.seconds,
                          "rounds": args.rounds, "summary": summary}))


if __name__ == "__main__":
    main()
