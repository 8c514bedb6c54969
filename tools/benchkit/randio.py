"""Scenario "random": 4 KiB random reads and writes with fio's nbd engine, in IOPS.

Each AoE target is reached through `aoe nbd` (the NBD export over an AoeDisk) on a Unix
socket; nbdkit (file plugin) over TCP on the same cable is the reference a user might pick
instead. Rounds alternate aoe serve, vblade, nbdkit.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict

from peers import NBD_PORT

from benchkit import services
from benchkit.env import ADDRESS, KINDS, LABEL, Bench, fill_random
from benchkit.options import Options
from benchkit.report import Bar, Table, median, spread

WHO = ("serve", "vblade", "nbdkit")
NAMES = {**LABEL, "nbdkit": "nbdkit (TCP)"}
IODEPTH = 32
Results = dict[tuple[str, str], list[float]]  # (who, rw) -> IOPS


def measure(bench: Bench, opts: Options) -> tuple[Results, int]:
    res: Results = defaultdict(list)
    bench.stop_all()
    mtu = max(opts.mtus)
    bench.set_mtu(mtu)
    for kind in KINDS:
        bench.shape(kind, None)
        bench.start_target(kind)
    addr_t, _ = bench.ip_addresses("serve")
    host = bench.initiator_host
    image = bench.shm / "nbdkit-random.img"
    fill_random(image, bench.size)
    nbdkit = bench.target_host.popen(
        ["nbdkit", "--foreground", "--exit-with-parent", "-i", addr_t, "-p", str(NBD_PORT),
         "file", str(image)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        services.wait_port(host, addr_t, NBD_PORT)
        for _ in range(opts.rounds):
            for who in WHO:
                for rw in ("randread", "randwrite"):
                    res[(who, rw)].append(_one(bench, who, rw, opts, addr_t))
                bench.log(f"{NAMES[who]}: {res[(who, 'randread')][-1]:.0f} / "
                          f"{res[(who, 'randwrite')][-1]:.0f} IOPS read/write")
    finally:
        bench.lab.kill(nbdkit)
        bench.stop_all()
        image.unlink(missing_ok=True)
    return res, mtu


def _one(bench: Bench, who: str, rw: str, opts: Options, addr_t: str) -> float:
    host = bench.initiator_host
    if who == "nbdkit":
        uri = f"nbd://{addr_t}:{NBD_PORT}"
        return services.fio_iops(host, uri, rw, opts.random_seconds, bench.size, IODEPTH)
    shelf, slot = ADDRESS[who]
    with services.nbd_export(host, f"{shelf}.{slot}", bench.ifname(who, "initiator"),
                             bench.work / f"{who}.sock") as uri:
        return services.fio_iops(host, uri, rw, opts.random_seconds, bench.size, IODEPTH)


def random_table(res: Results, mtu: int, opts: Options) -> Table:
    t = Table("random", f"5. Random 4 KiB I/O, fio (nbd engine, iodepth {IODEPTH}), "
              f"MTU {mtu}, unshaped", ["server", "randread IOPS", "randwrite IOPS"],
              unit="IOPS")
    for who in WHO:
        r, w = res[(who, "randread")], res[(who, "randwrite")]
        t.rows.append([NAMES[who], spread(r), spread(w)])
        t.bars += [Bar("randread", NAMES[who], median(r)),
                   Bar("randwrite", NAMES[who], median(w))]
    t.notes.append(
        f"{opts.random_seconds:g} s per run over the whole image. The AoE targets are "
        "reached through `aoe nbd` with its defaults (an AoeDisk behind an NBD server on a "
        "Unix socket) so that fio can drive them; nbdkit serves an image of the "
        "same size over TCP on the `aoe serve` cable.")
    return t
