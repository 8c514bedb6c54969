"""Scenario "paths": the ways a user reaches the disk, against the raw initiator.

raw: `aoe copy` (copy_from_disk / copy_to_disk on an AoeDisk) in the initiator worker;
fuse: `aoe mount` and dd on the file (bs=4M; writes with conv=fsync); fuse-direct: the
same with `--cache none` (direct I/O, the mount's own read-ahead);
nbd: `aoe nbd` on a Unix socket and nbdcopy (writes with --flush).
Only one of them runs at a time (each is a separate initiator: an idle one would still
receive every frame on the cable), in rounds raw, fuse, nbd, raw, fuse, nbd ...
"""

from __future__ import annotations

from collections import defaultdict

from benchkit import services
from benchkit.env import ADDRESS, Bench
from benchkit.options import Options
from benchkit.report import Bar, Goal, Table, median, spread

WAYS = ("raw", "fuse", "fuse-direct", "nbd")
NAMES = {"raw": "raw initiator (aoe copy)", "fuse": "FUSE file + dd",
         "fuse-direct": "FUSE file + dd, --cache none", "nbd": "NBD export + nbdcopy"}
MOUNT_OPTIONS = {"fuse": (), "fuse-direct": ("--cache", "none")}
GOAL_SHARE = 0.8
GOAL_WAYS = ("fuse", "nbd")  # the defaults; --cache none is shown beside them
Results = dict[tuple[int, str, str], list[float]]  # (mtu, way, op) -> MB/s


def measure(bench: Bench, opts: Options) -> Results:
    res: Results = defaultdict(list)
    bench.stop_all()
    shelf, slot = ADDRESS["serve"]
    address = f"{shelf}.{slot}"
    ifname = bench.ifname("serve", "initiator")
    size = bench.size
    mountpoint = bench.work / "mnt"
    sock = bench.work / "nbd.sock"
    host = bench.initiator_host
    for mtu in opts.mtus:
        bench.set_mtu(mtu)
        bench.shape("serve", None)
        bench.start_target("serve")
        for _ in range(opts.rounds):
            bench.start_worker("serve")
            for op in ("read", "write"):
                res[(mtu, "raw", op)].append(bench.transfer("serve", op, size).mbps)
            bench.stop_worker("serve")
            for way, extra in MOUNT_OPTIONS.items():
                with services.fuse_mount(host, address, ifname, mountpoint,
                                         extra) as disk_file:
                    res[(mtu, way, "read")].append(
                        size / services.dd_read(disk_file, size) / 1e6)
                    res[(mtu, way, "write")].append(
                        size / services.dd_write(bench.source, disk_file, size) / 1e6)
            with services.nbd_export(host, address, ifname, sock) as uri:
                res[(mtu, "nbd", "read")].append(size / services.nbdcopy_read(uri) / 1e6)
                res[(mtu, "nbd", "write")].append(
                    size / services.nbdcopy_write(bench.source, uri) / 1e6)
            bench.log(f"MTU {mtu}: " + ", ".join(
                f"{w} {res[(mtu, w, 'read')][-1]:.0f}/{res[(mtu, w, 'write')][-1]:.0f}"
                for w in WAYS) + " MB/s read/write")
        bench.stop_all()
    return res


def paths_table(res: Results, opts: Options) -> Table:
    t = Table("paths", "4. The user's paths against the raw initiator (unshaped veth, "
              "`aoe serve`)",
              ["MTU", "way", "read MB/s", "write MB/s", "% of raw (read, write)"])
    for mtu in opts.mtus:
        raw_r = median(res[(mtu, "raw", "read")])
        raw_w = median(res[(mtu, "raw", "write")])
        for way in WAYS:
            r, w = res[(mtu, way, "read")], res[(mtu, way, "write")]
            pr, pw = median(r) / raw_r * 100, median(w) / raw_w * 100
            t.rows.append([str(mtu), NAMES[way], spread(r), spread(w),
                           "-" if way == "raw" else f"{pr:.0f} %, {pw:.0f} %"])
            for op, runs in (("read", r), ("write", w)):
                t.bars.append(Bar(f"MTU {mtu} {op}", NAMES[way], median(runs)))
            if way in GOAL_WAYS:
                t.goals.append(Goal(f"{NAMES[way]} ≥ 80 % of raw, MTU {mtu}",
                                    f"{pr:.0f} % read, {pw:.0f} % write",
                                    min(pr, pw) >= GOAL_SHARE * 100))
    t.notes.append(
        "Each way is a separate process with its own AoE session, started fresh for each "
        "round (start-up is not timed). `aoe mount` runs with its defaults (the page "
        "cache, `--cache open`), "
        "`aoe nbd` with its defaults (4 requests at once per connection; nbdcopy opens 4 "
        "connections).")
    return t
