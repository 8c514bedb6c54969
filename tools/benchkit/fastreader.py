"""Scenario "fastreader": the target alone, read by a batched C reader (tools/aoefloor.c).

pyaoe's initiator is not in the way here: the same small C reader reads `aoe serve`,
vblade and the C responder of the same file (the floor: what a batched userspace AoE pair
reaches on this kernel), and that responder once more copying each read into a buffer
first, as `aoe serve` and vblade do (the floor sends straight from a mapping of the file:
one copy per byte instead of two). Each target runs alone on the cable, in a cgroup of its own,
capped at 25 % of one core or uncapped; the reader runs uncapped in a group of its own.
The C program is built with the system compiler into the run's scratch directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from benchkit.cgroup import CpuCap, available
from benchkit.env import ADDRESS, AOE, TOOLS, Bench, BenchError, MiB
from benchkit.options import Options
from benchkit.report import Bar, Goal, Table, median, spread

SOURCE = TOOLS / "aoefloor.c"
TARGETS = ("serve", "vblade", "floor", "copy")
LABEL = {"serve": "aoe serve", "vblade": "vblade", "floor": "C responder (floor)",
         "copy": "C responder, reads copied (pread)"}
CAPS = (25, 100)
WINDOW = 64


def build(into: Path) -> Path:
    """Compile tools/aoefloor.c with the system compiler (cc, or $CC) into `into`."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BenchError("no C compiler (cc) for the C reader and responder (apt gcc)")
    exe = into / "aoefloor"
    done = subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(SOURCE)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise BenchError(f"building {SOURCE.name} failed: {done.stderr.strip()[-400:]}")
    return exe


@dataclass
class Read:
    nbytes: int
    seconds: float
    target_cpu: float
    retransmits: int

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6


Results = dict[tuple[int, int, str], list[Read]]  # (mtu, cap %, target) -> reads


def start(bench: Bench, cap: CpuCap, exe: Path, kind: str, image: Path,
          state: Path) -> subprocess.Popen[str]:
    """`kind` serving `image` as 7.7 on the serve cable, inside `cap`."""
    ifname = bench.ifname("serve", "target")
    shelf, slot = ADDRESS["serve"]
    argv = {
        "serve": [AOE, "serve", "--state-dir", str(state), "--no-announce", ifname,
                  f"{shelf}.{slot}", str(image)],
        "vblade": ["vblade", str(shelf), str(slot), ifname, str(image)],
        "floor": [str(exe), "serve", ifname, str(shelf), str(slot), str(image)],
        "copy": [str(exe), "serve-copy", ifname, str(shelf), str(slot), str(image)],
    }[kind]
    proc = cap.popen(bench.target_host, argv, stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True)
    if kind == "vblade":
        time.sleep(0.3)  # vblade prints nothing once ready
    else:
        assert proc.stdout is not None
        if "ready" not in proc.stdout.readline():
            raise BenchError(f"{LABEL[kind]} did not start (exit {proc.poll()})")
    return proc


def read_once(bench: Bench, cap: CpuCap, reader: CpuCap, exe: Path,
              length: int, output: Path | None = None) -> Read:
    """One run of the C reader (writing what it reads to `output` if given)."""
    shelf, slot = ADDRESS["serve"]
    c0 = cap.cpu_seconds()
    to_file = [] if output is None else [str(output)]
    try:
        out = reader.run(bench.initiator_host,
                         [str(exe), "read", bench.ifname("serve", "initiator"), str(shelf),
                          str(slot), str(length), str(WINDOW), *to_file],
                         timeout=600).stdout
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"C reader failed: {exc.stderr.strip()}") from None
    nbytes, seconds, retrans = out.split()
    return Read(int(nbytes), float(seconds), cap.cpu_seconds() - c0, int(retrans))


def measure(bench: Bench, opts: Options) -> Results:
    why = available()
    if why:
        raise BenchError(f"fastreader scenario: {why}")
    if shutil.which("vblade") is None:
        raise BenchError("vblade is not installed (Debian package vblade)")
    bench.stop_all()
    exe = build(bench.work)
    state = bench.work / "fastreader-state"
    state.mkdir(exist_ok=True)
    image = bench.images["serve"]
    length = min(bench.size, 512 * MiB)
    res: Results = defaultdict(list)
    tag = f"pyaoe-perf-bench-{os.getpid()}"
    reader = CpuCap(f"{tag}-reader")
    caps = {kind: CpuCap(f"{tag}-{kind}") for kind in TARGETS}
    try:
        bench.shape("serve", None)
        for mtu in opts.mtus:
            bench.set_mtu(mtu)
            for cap_pct in CAPS:
                for _ in range(opts.rounds):
                    for kind in TARGETS:  # each alone on the cable, in its own group
                        cap = caps[kind]
                        cap.set(None if cap_pct >= 100 else cap_pct)
                        try:
                            start(bench, cap, exe, kind, image, state)
                            read = read_once(bench, cap, reader, exe, length)
                        finally:
                            cap.kill_all()
                        res[(mtu, cap_pct, kind)].append(read)
                        bench.log(f"fast reader, MTU {mtu}, {cap_pct} %: {LABEL[kind]} "
                                  f"{read.mbps:.1f} MB/s, target CPU {read.target_cpu:.2f} s, "
                                  f"{read.retransmits} resent")
    finally:
        for cap in (*caps.values(), reader):
            cap.remove()
    return res


def fastreader_table(res: Results, opts: Options) -> Table:
    t = Table("fastreader", "8. The target alone, read by a batched C reader",
              ["MTU", "target cap", "target", "MB/s", "target CPU s/GB", "requests resent",
               "/ vblade", "/ C responder"])
    for mtu in opts.mtus:
        for cap in CAPS:
            med = {k: median([r.mbps for r in res.get((mtu, cap, k), [])]) for k in TARGETS}
            for kind in TARGETS:
                reads = res.get((mtu, cap, kind), [])
                if not reads:
                    continue
                cpu = median([r.target_cpu / (r.nbytes / 1e9) for r in reads])
                t.rows.append([str(mtu), f"{cap} %", LABEL[kind],
                               spread([r.mbps for r in reads], 1), f"{cpu:.2f}",
                               str(sum(r.retransmits for r in reads)),
                               f"{med[kind] / med['vblade']:.2f}",
                               f"{med[kind] / med['floor']:.2f}"])
                t.bars.append(Bar(f"MTU {mtu}, target {cap} %", LABEL[kind], med[kind]))
            if cap == 25:
                need = 1.2 if mtu == 1500 else 1.0
                rv, rf = med["serve"] / med["vblade"], med["serve"] / med["floor"]
                t.goals.append(Goal(f"target alone, 25 %, MTU {mtu}: aoe serve ≥ {need}× "
                                    "vblade", f"{rv:.2f}×", rv >= need))
                t.goals.append(Goal(f"target alone, 25 %, MTU {mtu}: aoe serve ≥ 0.9× the C "
                                    "responder", f"{rf:.2f}×", rf >= 0.9))
    t.notes.append(
        f"Unshaped veth; {min(opts.size, 512 * MiB) // MiB} MiB read from sector 0 per run "
        f"by tools/aoefloor.c (READ SECTORS EXT, {WINDOW} requests in flight, "
        "recvmmsg/sendmmsg), which runs uncapped and resends its window after 250 ms of "
        "silence (longer than a 25 % target is ever held). Target CPU: its cgroup's counter. "
        "100 % = uncapped.")
    return t


def floor_pair(bench: Bench, exe: Path, tcap: CpuCap, icap: CpuCap, image: Path,
               length: int) -> Read:
    """The C responder and the C reader, each in the given group (the netbook way)."""
    start(bench, tcap, exe, "floor", image, bench.work)
    return read_once(bench, tcap, icap, exe, length)
