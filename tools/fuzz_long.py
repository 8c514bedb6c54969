#!/usr/bin/env python3
"""A long fuzz run against `aoe serve` and/or vblade in a lab, for docs/conformance.md.

Builds a two-host lab, serves a patterned image, fuzzes it through `aoe.checks.fuzz`, then
compares the image file outside the scratch range byte for byte. Run as root:
    .venv/bin/python tools/fuzz_long.py [--count 100000] [--seed 1] [--target both]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aoe.checks.fuzz import run_fuzz
from aoe.checks.probe import Probe
from aoe.lab import Lab
from aoe.lab.pair import make_two_hosts

SECTORS = 16384
SCRATCH = (4000, 64)
AOE = str(Path(sys.executable).with_name("aoe"))


def patterned(path: Path) -> bytes:
    data = b"".join(n.to_bytes(8, "little") + bytes((n * 13 + i) & 0xFF for i in range(504))
                    for n in range(SECTORS))
    path.write_bytes(data)
    return data


def one_run(kind: str, count: int, seed: int, rate: float | None) -> bool:
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        image = Path(tmp) / "disk.img"
        original = patterned(image)
        th = make_two_hosts(lab)
        argv = (["vblade", "1", "0", "eth0", str(image)] if kind == "vblade" else
                [AOE, "serve", "--state-dir", f"{tmp}/state", "-i", "eth0", "1.0", str(image)])
        proc = th.target.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with th.initiator.enter():
            with Probe("eth0", 1, 0, timeout=0.2) as probe:
                deadline = time.monotonic() + 10
                while probe.discover() is None and time.monotonic() < deadline:
                    pass
            report = run_fuzz("eth0", 1, 0, count=count, seed=seed, scratch=SCRATCH,
                              rate=rate, timeout=0.5)
        lo, n = SCRATCH
        after = image.read_bytes()
        outside = (after[: lo * 512] == original[: lo * 512]
                   and after[(lo + n) * 512 :] == original[(lo + n) * 512 :])
        print(f"== {kind} ==")
        print(report.format())
        print(f"  process still running: {proc.poll() is None}")
        print(f"  image outside scratch byte-identical: {outside}; whole image restored: "
              f"{after == original}")
        return report.ok and outside


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=100000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=None)
    ap.add_argument("--target", choices=["aoe-serve", "vblade", "both"], default="both")
    args = ap.parse_args()
    kinds = ["aoe-serve", "vblade"] if args.target == "both" else [args.target]
    ok = all([one_run(kind, args.count, args.seed, args.rate) for kind in kinds])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
