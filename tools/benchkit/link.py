"""Scenarios "cable" (AoE goodput on a shaped veth against the wire limit) and "peers"
(what a user would run instead on the same cable: nbdkit + nbdcopy, and tar | nc)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from peers import nbdkit_nbdcopy, tcp_stream

from aoe.lab.cable import parse_rate
from benchkit.env import Bench, fill_random, wire_limit
from benchkit.options import Options
from benchkit.report import Bar, Goal, Table, median, spread

GOAL_WIRE = 0.95
RATES = ("1gbit", "100mbit")
Results = dict[tuple[str, int, str], list[float]]  # (rate, mtu, what) -> MB/s


def measure(bench: Bench, opts: Options, cable: bool, peers: bool) -> Results:
    """On the `aoe serve` cable, shaped: AoE reads and writes, and (at 1 Gbit/s, when
    asked) nbdkit/nbdcopy and tar | nc, interleaved within each round."""
    res: Results = defaultdict(list)
    bench.stop_all()
    rates = list(RATES) if cable else ["1gbit"]
    peer_image: Path | None = None
    scratch = bench.shm / "nbdcopy-scratch.img"
    try:
        for rate in rates:
            bits = parse_rate(rate)
            length = opts.slow_link_size(bits)
            with_peers = peers and rate == "1gbit"
            if with_peers and peer_image is None:
                peer_image = bench.shm / "peer.img"
                fill_random(peer_image, length)
                addr_t, addr_i = bench.ip_addresses("serve")
            for mtu in opts.mtus:
                bench.set_mtu(mtu)
                bench.shape("serve", rate)
                bench.start_target("serve")
                bench.start_worker("serve")
                bench.transfer("serve", "read", min(length, 16 << 20))  # window warm-up
                for _ in range(opts.rounds):
                    for op in ("read", "write"):
                        res[(rate, mtu, op)].append(bench.transfer("serve", op, length).mbps)
                    if with_peers:
                        assert peer_image is not None
                        nbd = nbdkit_nbdcopy(bench.lab, bench.target_host,
                                             bench.initiator_host, addr_t, peer_image,
                                             scratch)
                        res[(rate, mtu, "nbd read")].append(nbd["read"])
                        res[(rate, mtu, "nbd write")].append(nbd["write"])
                        res[(rate, mtu, "tcp")].append(
                            tcp_stream(bench.lab, bench.target_host, bench.initiator_host,
                                       addr_i, peer_image))
                        bench.log(f"nbdkit read {nbd['read']:.1f} write {nbd['write']:.1f} "
                                  f"tar|nc {res[(rate, mtu, 'tcp')][-1]:.1f} MB/s")
                bench.stop_all()
    finally:
        bench.shape("serve", None)
        scratch.unlink(missing_ok=True)
    return res


def cable_table(res: Results, opts: Options) -> Table:
    t = Table("cable", "2. Crossover cable: veth shaped with tbf, `aoe serve` ↔ AoeDisk",
              ["link", "MTU", "direction", "MB/s", "wire limit MB/s", "% of wire limit"])
    for rate in RATES:
        bits = parse_rate(rate)
        for mtu in opts.mtus:
            limit = wire_limit(bits, mtu) / 1e6
            for op in ("read", "write"):
                runs = res.get((rate, mtu, op))
                if not runs:
                    continue
                pct = median(runs) / limit * 100
                t.rows.append([rate, str(mtu), op, spread(runs, 1), f"{limit:.1f}",
                               f"{pct:.0f} %"])
                t.bars.append(Bar(f"{rate} MTU {mtu} {op}", "aoe serve", median(runs)))
                t.bars.append(Bar(f"{rate} MTU {mtu} {op}", "wire limit", limit))
                if rate == "1gbit":
                    t.goals.append(Goal(f"shaped 1 Gbit/s, MTU {mtu} {op}: ≥ 95 % of the "
                                        "wire limit", f"{pct:.0f} %", pct >= GOAL_WIRE * 100))
    t.notes.append(
        "Wire limit: the AoE payload a link of that rate carries with full frames (data / "
        "(data + 36 header bytes + 24 bytes of FCS, preamble and gap)). tbf counts frames "
        "without FCS and gap, so a shaped run can show a little over 100 %. "
        f"Transfers: {opts.slow_link_size(parse_rate('1gbit')) >> 20} MiB at 1 Gbit/s, "
        f"{opts.slow_link_size(parse_rate('100mbit')) >> 20} MiB at 100 Mbit/s.")
    return t


def peers_table(res: Results, opts: Options) -> Table:
    t = Table("peers", "3. What a user would pick instead, same cable shaped to 1 Gbit/s",
              ["MTU", "AoE read", "AoE write", "nbdkit+nbdcopy read", "nbdkit+nbdcopy write",
               "tar \\| nc", "AoE / nbdkit (read, write)"])
    for mtu in opts.mtus:
        key = ("1gbit", mtu)
        aoe_r, aoe_w = res.get((*key, "read"), []), res.get((*key, "write"), [])
        nbd_r, nbd_w = res.get((*key, "nbd read"), []), res.get((*key, "nbd write"), [])
        tcp = res.get((*key, "tcp"), [])
        if not nbd_r:
            continue
        rr, rw = median(aoe_r) / median(nbd_r), median(aoe_w) / median(nbd_w)
        t.rows.append([str(mtu), spread(aoe_r, 1), spread(aoe_w, 1), spread(nbd_r, 1),
                       spread(nbd_w, 1), spread(tcp, 1), f"{rr:.2f}, {rw:.2f}"])
        for op, ours, theirs in (("read", aoe_r, nbd_r), ("write", aoe_w, nbd_w)):
            group = f"MTU {mtu} {op}"
            t.bars += [Bar(group, "AoE (aoe serve + AoeDisk)", median(ours)),
                       Bar(group, "nbdkit + nbdcopy (TCP)", median(theirs))]
        t.bars.append(Bar(f"MTU {mtu} read", "tar | nc (TCP)", median(tcp)))
        t.goals.append(Goal(f"≥ 1.0× nbdkit+nbdcopy, shaped 1 Gbit/s, MTU {mtu}",
                            f"{rr:.2f}× read, {rw:.2f}× write", min(rr, rw) >= 1.0))
    t.notes.append(
        "MB/s. nbdkit (file plugin) serves an image in tmpfs from the target namespace over "
        "TCP on the cable's private addresses; nbdcopy reads it into a tmpfs file and writes "
        "it back. tar | nc streams the image from the target host to the initiator host. "
        "AoE figures are the same runs as table 2, interleaved with these in each round.")
    return t
