#!/usr/bin/env python3
"""The Linux kernel's own AoE initiator against `aoe serve` and vblade: synchronous I/O.

One qemu guest per target and round (the distribution kernel, aoe.ko, busybox), each
target alone on the guest's cable with an image of its own. The guest times, with
/proc/uptime: 2,000 reads of 4 KiB one after another (`dd iflag=direct`), 500 writes of
4 KiB each waited for (`oflag=direct,dsync`), `mkfs.ext4` of 48 MiB, a mount, 300 small
files and `sync`, a cold `ls -lR` and `cat` of them, and 48 MiB read in 1 MiB direct
reads. What a machine with the `aoe` driver feels of a target's latency, not its
bandwidth. `--pythonpath DIR` runs a second `aoe serve` from another checkout's src/
(named "other") to compare two versions in the same run. Run as root:

    .venv/bin/python tools/bench_kernel.py [--mtu 1500] [--rounds 2] [--pythonpath DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aoe.lab import Host, Lab
from aoe.lab.vm import Guest, unavailable_reason

AOE = str(Path(sys.executable).with_name("aoe"))
MiB = 1 << 20
STEPS = ("read4k_x2000", "write4k_dsync_x500", "mkfs_48M", "mount", "files300_sync",
         "umount", "cold_ls_cat", "read48M_in_1M")
GUEST_SCRIPT = r"""
i=0; while [ $i -lt 600 ] && ! [ -b /dev/etherd/e1.0 ]; do
  [ $((i % 50)) -eq 0 ] && echo > /dev/etherd/discover; sleep 0.1; i=$((i+1)); done
now() { cut -d' ' -f1 /proc/uptime; }
took() { echo "@@$1=$(awk -v a=$2 -v b=$(now) 'BEGIN{printf "%.3f", b-a}')"; }
D=/dev/etherd/e1.0
t=$(now); dd if=$D of=/dev/null bs=4k count=2000 iflag=direct 2>/dev/null; took read4k_x2000 $t
t=$(now); dd if=/dev/zero of=$D bs=4k count=500 seek=5000 oflag=direct,dsync 2>/dev/null
took write4k_dsync_x500 $t
t=$(now); mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0 $D 48M; took mkfs_48M $t
mkdir -p /tmp/m; t=$(now); mount -t ext4 $D /tmp/m; took mount $t
t=$(now); mkdir /tmp/m/d; n=0
while [ $n -lt 300 ]; do echo "file $n" > /tmp/m/d/f$n; n=$((n+1)); done; sync
took files300_sync $t
t=$(now); umount /tmp/m; took umount $t
echo 3 > /proc/sys/vm/drop_caches
t=$(now); mount -t ext4 -o ro $D /tmp/m; ls -lR /tmp/m > /dev/null; cat /tmp/m/d/* > /dev/null
umount /tmp/m; took cold_ls_cat $t
t=$(now); dd if=$D of=/dev/null bs=1M count=48 iflag=direct 2>/dev/null; took read48M_in_1M $t
"""


def start_target(host: Host, kind: str, tap: str, image: Path, work: Path,
                 pythonpath: str | None) -> subprocess.Popen[str]:
    if kind == "vblade":
        proc = host.popen(["vblade", "1", "0", tap, str(image)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, text=True)
        time.sleep(0.5)  # vblade prints nothing when ready; the guest keeps discovering
        return proc
    env = dict(os.environ)
    if kind == "other" and pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = host.popen([AOE, "serve", "--state-dir", str(work / f"state-{kind}"), tap, "1.0",
                       str(image)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                      text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready" not in line:
        raise SystemExit(f"aoe serve ({kind}) did not start: {line.strip()!r}")
    return proc


def run_one(kind: str, mtu: int, work: Path, pythonpath: str | None) -> dict[str, str]:
    image = work / f"{kind}.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    with Lab("aoebk-") as lab:
        host = lab.host("target")
        with Guest(host, mtu=mtu, module_args={"aoe": "aoe_iflist=eth0"}) as guest:
            proc = start_target(host, kind, guest.tap, image, work, pythonpath)
            try:
                result = guest.run(GUEST_SCRIPT, timeout=300)
            finally:
                lab.kill(proc)
    return {step: result.mark(step) for step in STEPS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pythonpath", help="src/ of another checkout, served as 'other'")
    args = ap.parse_args()
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"no guest can boot here: {reason}")
    kinds = ["aoe serve", *(["other"] if args.pythonpath else []), "vblade"]
    print(f"MTU {args.mtu}, seconds per step; rounds alternate {', '.join(kinds)}\n")
    print("| round | target | " + " | ".join(STEPS) + " |")
    print("|---" * (len(STEPS) + 2) + "|")
    with tempfile.TemporaryDirectory(prefix="pyaoe-bench-kernel-") as tmp:
        for rnd in range(1, args.rounds + 1):
            for kind in kinds:
                marks = run_one(kind.split()[0], args.mtu, Path(tmp), args.pythonpath)
                print(f"| {rnd} | {kind} | " + " | ".join(marks[s] for s in STEPS) + " |",
                      flush=True)


if __name__ == "__main__":
    main()
