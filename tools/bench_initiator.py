#!/usr/bin/env python3
"""Sequential read and write throughput of the initiator against vblade and `aoe serve`.

For each link (a plain veth, or one shaped to 1 Gbit/s with tbf) and MTU, one lab per
target is built and kept for the whole series, and the rounds alternate between targets
(A B A B ...), so slow phases of a busy machine hit both. Each round copies the whole disk
image off the disk to /dev/null (the `aoe copy` pipeline) and then a fresh buffer onto it.
Medians are printed, with the initiator's CPU use, and optionally written as JSON or a
Markdown table. Run as root:

    .venv/bin/python tools/bench_initiator.py [--size-mib 256] [--rounds 5]
        [--targets vblade,serve] [--mtus 1500,9000] [--links veth,1gbit] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aoe.initiator import AoeDisk
from aoe.initiator.copy import copy_from_disk, copy_to_disk
from aoe.initiator.discovery import query_config
from aoe.initiator.ports import open_ports
from aoe.lab import Lab

AOE_BIN = str(Path(sys.executable).with_name("aoe"))
SHELF, SLOT = 7, 7
# Payload rate of a gigabit link for AoE frames: data bytes over bytes on the wire
# (36-byte AoE/ATA header incl. Ethernet, plus FCS, preamble and gap = 24).
GIGABIT = 125e6


def wire_limit(mtu: int) -> float:
    sectors = min(255, (mtu - 36) // 512)
    data = sectors * 512
    return GIGABIT * data / (data + 36 + 24)


@dataclass
class Setup:
    kind: str
    lab: Lab
    disk: AoeDisk
    reads: list[float] = field(default_factory=list)
    writes: list[float] = field(default_factory=list)
    read_cpu: list[float] = field(default_factory=list)
    write_cpu: list[float] = field(default_factory=list)


def start(kind: str, mtu: int, link: str, size: int, tmp: Path) -> Setup:
    lab = Lab()
    try:
        target, initiator = lab.host("target"), lab.host("initiator")
        cable = lab.cable(target, initiator, mtu=mtu)
        if link != "veth":
            cable.shape(link)
        image = tmp / f"{kind}-{mtu}-{link}.img"
        with open(image, "wb") as f:
            f.truncate(size)
        if kind == "vblade":
            argv = ["vblade", str(SHELF), str(SLOT), cable.a_ifname, str(image)]
        else:
            state = tmp / f"state-{kind}-{mtu}-{link}"
            state.mkdir()
            argv = [AOE_BIN, "serve", "--state-dir", str(state), "--no-announce",
                    cable.a_ifname, f"{SHELF}.{SLOT}", str(image)]
        target.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with initiator.enter():
            ports = open_ports([cable.b_ifname])
            try:
                deadline = time.monotonic() + 15
                while not query_config(ports, (SHELF, SLOT), 0.2, settle=0.0):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{kind} did not answer")
            finally:
                for p in ports:
                    p.close()
            disk = AoeDisk.open(SHELF, SLOT, [cable.b_ifname], dead_timeout=30)
        return Setup(kind, lab, disk)
    except BaseException:
        lab.close()
        raise


def one_round(s: Setup, payload: bytes) -> None:
    with open(os.devnull, "wb") as null:
        c0, t0 = time.process_time(), time.perf_counter()
        copy_from_disk(s.disk, null)
        dt = time.perf_counter() - t0
        s.reads.append(s.disk.size / dt / 1e6)
        s.read_cpu.append((time.process_time() - c0) / dt)
    c0, t0 = time.process_time(), time.perf_counter()
    copy_to_disk(s.disk, io.BytesIO(payload))
    dt = time.perf_counter() - t0
    s.writes.append(s.disk.size / dt / 1e6)
    s.write_cpu.append((time.process_time() - c0) / dt)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    size = args.size_mib << 20
    payload = os.urandom(size)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-init-") as tmpdir:
        tmp = Path(tmpdir)
        for link in args.links:
            for mtu in args.mtus:
                setups = [start(kind, mtu, link, size, tmp) for kind in args.targets]
                try:
                    one_round(setups[0], payload)  # warm-up (page cache, windows)
                    setups[0].reads.clear()
                    setups[0].writes.clear()
                    setups[0].read_cpu.clear()
                    setups[0].write_cpu.clear()
                    for _ in range(args.rounds):
                        for s in setups:
                            one_round(s, payload)
                    for s in setups:
                        row = {
                            "link": link,
                            "mtu": mtu,
                            "target": s.kind,
                            "read_mb_s": round(statistics.median(s.reads), 1),
                            "write_mb_s": round(statistics.median(s.writes), 1),
                            "read_runs": [round(x, 1) for x in s.reads],
                            "write_runs": [round(x, 1) for x in s.writes],
                            "read_cpu": round(statistics.median(s.read_cpu), 2),
                            "write_cpu": round(statistics.median(s.write_cpu), 2),
                            "frame_sectors": s.disk.info.paths[0].frame_sectors,
                            "buffer_count": s.disk.info.buffer_count,
                        }
                        if link != "veth":
                            row["wire_limit_mb_s"] = round(wire_limit(mtu) / 1e6, 1)
                        results.append(row)
                        print(_line(row), flush=True)
                finally:
                    for s in setups:
                        s.disk.close()
                        s.lab.close()
    return results


def _line(r: dict[str, Any]) -> str:
    extra = ""
    if "wire_limit_mb_s" in r:
        lim = r["wire_limit_mb_s"]
        extra = (f"  (wire limit {lim} MB/s: read {100 * r['read_mb_s'] / lim:.0f}%, "
                 f"write {100 * r['write_mb_s'] / lim:.0f}%)")
    return (f"{r['link']:>6} mtu {r['mtu']:>5} {r['target']:>6}: read {r['read_mb_s']:7.1f} MB/s "
            f"(cpu {r['read_cpu']:.2f})  write {r['write_mb_s']:7.1f} MB/s "
            f"(cpu {r['write_cpu']:.2f}){extra}")


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| link | MTU | target | read MB/s | write MB/s | initiator CPU (read/write) |"
             " % of wire limit (read/write) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lim = r.get("wire_limit_mb_s")
        pct = (f"{100 * r['read_mb_s'] / lim:.0f}% / {100 * r['write_mb_s'] / lim:.0f}%"
               if lim else "-")
        lines.append(f"| {r['link']} | {r['mtu']} | {r['target']} | {r['read_mb_s']} | "
                     f"{r['write_mb_s']} | {r['read_cpu']:.2f} / {r['write_cpu']:.2f} | {pct} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--targets", default="vblade,serve")
    ap.add_argument("--mtus", default="1500,9000")
    ap.add_argument("--links", default="veth,1gbit")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    args.targets = args.targets.split(",")
    args.mtus = [int(m) for m in args.mtus.split(",")]
    args.links = args.links.split(",")
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark builds network namespaces")
    results = run(args)
    print()
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
