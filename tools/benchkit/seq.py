"""Scenario "target" (aoe serve against vblade, same initiator) and "cpu" (what both ends
spend per gigabyte, measured in the same transfers)."""

from __future__ import annotations

from collections import defaultdict

from benchkit.env import KINDS, LABEL, Bench, MiB, Sample
from benchkit.options import Options
from benchkit.report import Bar, Goal, Table, median, spread

Samples = dict[tuple[int, str, str], list[Sample]]  # (mtu, op, kind) -> samples
OPS = ("read", "write")
GOAL_GBPS = 1e9


def measure(bench: Bench, opts: Options) -> Samples:
    """Per MTU: both targets on their own cables, both initiator workers, rounds of
    A B A B (aoe serve, vblade) reads then writes of the whole image."""
    data: Samples = defaultdict(list)
    for mtu in opts.mtus:
        bench.set_mtu(mtu)
        for kind in KINDS:
            bench.shape(kind, None)
            bench.start_target(kind)
            bench.start_worker(kind)
        warm = min(bench.size, 64 * MiB)
        for kind in KINDS:  # first transfers grow the window and fault pages in
            bench.transfer(kind, "read", warm)
            bench.transfer(kind, "write", warm)
        for _ in range(opts.rounds):
            for op in OPS:
                for kind in KINDS:
                    data[(mtu, op, kind)].append(bench.transfer(kind, op, bench.size))
        bench.stop_all()
    return data


def target_table(data: Samples, opts: Options) -> Table:
    t = Table("target", "1. Target: `aoe serve` against vblade, same initiator (AoeDisk)",
              ["MTU", "direction", "aoe serve MB/s", "vblade MB/s", "aoe serve / vblade"])
    for mtu in opts.mtus:
        for op in OPS:
            ours = [s.mbps for s in data[(mtu, op, "serve")]]
            theirs = [s.mbps for s in data[(mtu, op, "vblade")]]
            ratio = median(ours) / median(theirs)
            t.rows.append([str(mtu), op, spread(ours), spread(theirs), f"{ratio:.2f}"])
            group = f"MTU {mtu} {op}"
            t.bars += [Bar(group, "aoe serve", median(ours)), Bar(group, "vblade",
                                                                     median(theirs))]
    if 9000 in opts.mtus:
        for op in OPS:
            m = median([s.mbps for s in data[(9000, op, "serve")]])
            t.goals.append(Goal(f"ours↔ours unshaped MTU 9000 {op} ≥ 1 GB/s"
                                + ("" if op == "read" else " (a try)"),
                                f"{m:.0f} MB/s", m * 1e6 >= GOAL_GBPS))
    t.notes.append(
        f"{bench_size_text(opts)} per transfer; medians of {opts.rounds} rounds with the "
        "range of single runs in brackets. Reads: `copy_from_disk` to /dev/null; writes: "
        "`copy_to_disk` from a file in tmpfs, ending with FLUSH CACHE (what `aoe copy` does).")
    return t


def cpu_table(data: Samples, opts: Options) -> Table:
    t = Table("cpu", "6. CPU seconds per GB and peak RSS (same transfers as table 1)",
              ["MTU", "direction", "target", "target CPU s/GB", "initiator CPU s/GB",
               "target peak RSS", "initiator peak RSS"], unit="CPU s/GB")
    for mtu in opts.mtus:
        for op in OPS:
            for kind in KINDS:
                ss = data[(mtu, op, kind)]
                tc = median([s.target_cpu / (s.nbytes / 1e9) for s in ss])
                ic = median([s.initiator_cpu / (s.nbytes / 1e9) for s in ss])
                trss = max(s.target_rss for s in ss) / MiB
                irss = max(s.initiator_rss for s in ss) / MiB
                t.rows.append([str(mtu), op, LABEL[kind], f"{tc:.2f}", f"{ic:.2f}",
                               f"{trss:.0f} MiB", f"{irss:.0f} MiB"])
                t.bars.append(Bar(f"MTU {mtu} {op}", f"{LABEL[kind]} (target)", tc))
                t.bars.append(Bar(f"MTU {mtu} {op}", f"initiator with {LABEL[kind]}", ic))
    t.notes.append(
        "CPU: user + system seconds of the whole process (all threads) during the transfer, "
        "divided by the gigabytes moved; kernel work done on behalf of the other side "
        "(veth delivery runs in the sender's context) lands in the sender's figure. "
        "Peak RSS: VmHWM, reset before each transfer; the initiator's includes its copy "
        "pipeline buffers (3 × 4 MiB in flight).")
    return t


def bench_size_text(opts: Options) -> str:
    size = opts.size
    return f"{size / (1 << 30):g} GiB" if size >= 1 << 30 else f"{size // MiB} MiB"
