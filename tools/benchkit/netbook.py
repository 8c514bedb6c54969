"""Scenario "netbook": the user's own commands on a slow CPU and a real link rate.

Each host's processes run in a CPU-capped cgroup of their own (25 % or 100 % of one core),
the cable is shaped with tbf (1 Gbit/s at MTU 1500 and 9000, 100 Mbit/s at MTU 1500), and
every way of moving data is timed as the user types it, start-up included: the servers
(`aoe serve`, vblade, nbdkit, the rsync daemon, the receiving `nc -l`) are started first
and not timed; the client side commands are. Start-up is also measured alone: the same
commands moving 4 KiB (one small file), or `nbdinfo` for the NBD ways.

CPU seconds per GB come from each cgroup's own counter: every process of that side
(`cp`, `tar`, the detached FUSE daemon...) is counted, kernel work done in softirq
context on the side's behalf is not. Between two ways both groups are emptied.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from aoe.lab import Host
from aoe.lab.cable import parse_rate
from benchkit import fastreader
from benchkit.cgroup import CpuCap, available
from benchkit.env import ADDRESS, AOE, Bench, BenchError, MiB, fill_random, warm_memory, wire_limit
from benchkit.options import Options
from benchkit.report import Bar, Goal, Table, median, spread

WAYS = ("copy-to-file", "copy-from-file", "mount-large", "mount-tree", "nbd",
        "vblade-copy", "tar-nc", "nbdkit", "rsync", "c-pair", "c-pair-file", "local-tree")
LABEL = {
    "copy-to-file": "aoe serve + aoe copy to a file",
    "copy-from-file": "aoe serve + aoe copy from a file",
    "mount-large": "aoe mount + loop + cp large file",
    "mount-tree": "aoe mount + loop + cp -r 2,000 files",
    "nbd": "aoe nbd + nbdcopy",
    "vblade-copy": "vblade + aoe copy to a file",
    "tar-nc": "tar | nc",
    "nbdkit": "nbdkit + nbdcopy",
    "rsync": "rsync daemon + rsync -a",
    "c-pair": "C responder + C reader (floor)",
    "c-pair-file": "C responder + C reader to a file (floor)",
    "local-tree": "loop + cp -r 2,000 files, no network (floor)",
}
FLOORS = ("c-pair", "c-pair-file", "local-tree")  # references, not ways a user would take
LINKS = (("1gbit", 1500), ("1gbit", 9000), ("100mbit", 1500))
CAPS = (25, 100)
TREE_FILES = 2000
TCP_PORT = 5101
NBD_PORT = 10911
RSYNC_PORT = 8731
PREFIX = "pyaoe-perf-bench"  # cgroup names: PREFIX-<pid>-target / -initiator


@dataclass
class Run:
    """One timed way: bytes moved, wall seconds and each side's CPU seconds."""

    nbytes: int
    seconds: float
    target_cpu: float
    initiator_cpu: float

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6


Key = tuple[str, int, int, str]  # (rate, mtu, cap %, way)


@dataclass
class Results:
    runs: dict[Key, list[Run]]
    startup: dict[Key, list[float]]
    big: int
    tree: int


def warm_size(big: int) -> int:
    """Bytes touched and freed before each timed run of ways moving `big` bytes: more
    than the page caches and output a way fills (3 x `big` for the mount way)."""
    return min(4 * big, 768 * MiB)


class Netbook:
    """The files, the two capped groups and the ways, over the bench's `serve` cable
    (the `vblade` cable for vblade)."""

    def __init__(self, bench: Bench, big: int, tree_file: int,
                 period_ms: float = 100.0) -> None:
        self.bench = bench
        self.root = bench.shm / "netbook"
        self.fsroot = self.root / "fsroot"
        self.plain = self.root / "plain"  # what tar, nbdkit and rsync serve
        self.tiny = self.root / "tiny"
        self.out = self.root / "out"
        for d in (self.fsroot / "tree", self.plain, self.tiny, self.out):
            d.mkdir(parents=True)
        self.big = big
        fill_random(self.fsroot / "big.bin", big)
        os.link(self.fsroot / "big.bin", self.plain / "big.bin")
        block = os.urandom(tree_file)
        for i in range(TREE_FILES):
            sub = self.fsroot / "tree" / f"d{i // 100:02d}"
            sub.mkdir(exist_ok=True)
            (sub / f"f{i:04d}").write_bytes(block[i % 64:] + block[: i % 64])
        self.tree = TREE_FILES * tree_file
        (self.tiny / "small.bin").write_bytes(os.urandom(4096))
        self.image = self.root / "fs.img"
        image_size = (big + self.tree * 2 + 32 * MiB) * 11 // 10 // MiB * MiB
        # -T default: the layout mkfs.ext4 gives any filesystem from 512 MiB up (4 KiB
        # blocks, 128 MiB groups), as on a user's disk. An image this small would get the
        # "small" one (1 KiB blocks, 8 MiB groups), which splits the large file into ten
        # extents around group metadata; each gap restarts the kernel's read-ahead on the
        # FUSE file (`cp` off it: 10.8-11.1 MB/s at 100 Mbit/s against 11.8 with 4 KiB).
        done = subprocess.run(["mkfs.ext4", "-q", "-F", "-T", "default", "-d",
                               str(self.fsroot), "-E",
                               "lazy_itable_init=0,lazy_journal_init=0", str(self.image),
                               f"{image_size // 1024}k"],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            raise BenchError(f"mkfs.ext4 -d failed: {done.stderr.strip()}")
        self.scratch = self.root / "scratch.img"  # what `aoe copy FILE DISK` writes over
        with open(self.scratch, "wb") as f:
            f.truncate(image_size)
        self.state = self.root / "state"
        self.state.mkdir()
        self.fuse_mp = self.root / "fuse"
        self.loop_mp = self.root / "loop"
        self.fuse_mp.mkdir()
        self.loop_mp.mkdir()
        self.rsync_conf = self.root / "rsyncd.conf"
        self.addr_t, self.addr_i = bench.ip_addresses("serve")
        self.rsync_conf.write_text(
            "use chroot = no\nuid = root\ngid = root\nlog file = /dev/null\n"
            f"pid file = {self.root / 'rsyncd.pid'}\n"
            f"[bench]\npath = {self.plain}\nread only = yes\n"
            f"[tiny]\npath = {self.tiny}\nread only = yes\n")
        self.floor_exe = fastreader.build(bench.work)
        tag = f"{PREFIX}-{os.getpid()}"
        period = int(period_ms * 1000)
        self.tcap = CpuCap(f"{tag}-target", period_us=period)
        try:
            self.icap = CpuCap(f"{tag}-initiator", period_us=period)
        except BaseException:
            self.tcap.remove()
            raise

    # --- plumbing ----------------------------------------------------------------------
    def set_cap(self, percent: int) -> None:
        for cap in (self.tcap, self.icap):
            cap.set(None if percent >= 100 else percent)

    def clear(self) -> None:
        """Empty both groups and the output directory (between two ways)."""
        for mp in (self.loop_mp, self.fuse_mp):
            if os.path.ismount(mp):
                subprocess.run(["umount", "-l", str(mp)], capture_output=True, check=False)
        self.tcap.kill_all()
        self.icap.kill_all()
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir()

    def close(self) -> None:
        try:
            self.clear()
        finally:
            self.tcap.remove()
            self.icap.remove()

    def ifname(self, side: str, kind: str = "serve") -> str:
        return self.bench.ifname(kind, side)

    def irun(self, argv: list[str], netns: bool = True) -> str:
        """A user's command on the initiator host (in its group); its stdout."""
        host = self.bench.initiator_host if netns else None
        try:
            return self.icap.run(host, argv, private_sysfs=False).stdout
        except subprocess.CalledProcessError as exc:
            raise BenchError(f"{' '.join(argv)} failed: {exc.stderr.strip()[-300:]}") from None

    def wait_ready(self, proc: subprocess.Popen[str], needle: str, what: str) -> None:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if needle not in line:
            raise BenchError(f"{what} did not start: {line.strip()} (exit {proc.poll()})")

    # --- servers (not timed) -----------------------------------------------------------
    def serve(self, image: Path) -> None:
        shelf, slot = ADDRESS["serve"]
        proc = self.tcap.popen(
            self.bench.target_host,
            [AOE, "serve", "--state-dir", str(self.state), "--no-announce",
             self.ifname("target"), f"{shelf}.{slot}", str(image)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.wait_ready(proc, "ready", "aoe serve")

    def vblade(self) -> None:
        if shutil.which("vblade") is None:
            raise BenchError("vblade is not installed (Debian package vblade)")
        shelf, slot = ADDRESS["vblade"]
        self.tcap.popen(self.bench.target_host,
                        ["vblade", str(shelf), str(slot), self.ifname("target", "vblade"),
                         str(self.image)], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # vblade prints nothing when ready; it opens its socket at once

    def nbdkit(self, path: Path) -> None:
        self.tcap.popen(self.bench.target_host,
                        ["nbdkit", "--foreground", "-i", self.addr_t, "-p", str(NBD_PORT),
                         "file", str(path)], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
        self.wait_listen(self.bench.target_host, NBD_PORT)

    def rsyncd(self) -> None:
        self.tcap.popen(self.bench.target_host,
                        ["rsync", "--daemon", "--no-detach", f"--config={self.rsync_conf}",
                         f"--address={self.addr_t}", f"--port={RSYNC_PORT}"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_listen(self.bench.target_host, RSYNC_PORT)

    def wait_listen(self, host: Host, port: int) -> None:
        from peers import _wait_listen

        try:
            _wait_listen(host, port)
        except TimeoutError as exc:
            raise BenchError(str(exc)) from None

    # --- the ways ----------------------------------------------------------------------
    def disk(self, kind: str = "serve") -> str:
        shelf, slot = ADDRESS[kind]
        return f"{shelf}.{slot}"

    def copy_to_file(self, tiny: bool, kind: str = "serve") -> int:
        length = 4096 if tiny else self.big
        self.irun([AOE, "copy", "-i", self.ifname("initiator", kind), "--length",
                   str(length), self.disk(kind), str(self.out / "disk.img")])
        return length

    def copy_from_file(self, tiny: bool) -> int:
        src = self.tiny / "small.bin" if tiny else self.fsroot / "big.bin"
        self.irun([AOE, "copy", "-i", self.ifname("initiator"), str(src), self.disk()])
        return src.stat().st_size

    @contextmanager
    def mounted(self) -> Iterator[Path]:
        """`aoe mount` (detaching) + `mount -o loop,ro`; both undone on the way out."""
        self.irun([AOE, "mount", "-i", self.ifname("initiator"), "-r", self.disk(),
                   str(self.fuse_mp)])
        try:
            self.irun(["mount", "-o", "loop,ro", str(self.fuse_mp / "disk"),
                       str(self.loop_mp)], netns=False)
            try:
                yield self.loop_mp
            finally:
                subprocess.run(["umount", str(self.loop_mp)], capture_output=True, check=False)
        finally:
            subprocess.run(["fusermount3", "-u", str(self.fuse_mp)], capture_output=True,
                           check=False)

    def copy_tree(self, fs: Path, tiny: bool) -> int:
        """`cp -r` of the tree off the mounted filesystem `fs` (one of its files when
        `tiny`); the bytes copied."""
        if tiny:
            one = fs / "tree" / "d00" / "f0000"
            self.irun(["cp", str(one), str(self.out)], netns=False)
            return one.stat().st_size
        self.irun(["cp", "-r", str(fs / "tree"), str(self.out)], netns=False)
        return self.tree

    def mount_large(self, tiny: bool) -> int:
        with self.mounted() as fs:
            if tiny:
                return self.copy_tree(fs, True)
            self.irun(["cp", str(fs / "big.bin"), str(self.out)], netns=False)
        return self.big

    def mount_tree(self, tiny: bool) -> int:
        with self.mounted() as fs:
            return self.copy_tree(fs, tiny)

    def local_tree(self, tiny: bool) -> int:
        """The tree way without any network: the image itself loop-mounted, under the
        initiator's cap. What the filesystem and `cp -r` cost alone bounds every
        initiator on this machine."""
        self.irun(["mount", "-o", "loop,ro", str(self.image), str(self.loop_mp)], netns=False)
        try:
            return self.copy_tree(self.loop_mp, tiny)
        finally:
            subprocess.run(["umount", str(self.loop_mp)], capture_output=True, check=False)

    def nbd(self, tiny: bool) -> int:
        sock = self.root / "aoe-nbd.sock"
        uri = self.irun([AOE, "nbd", "-d", "-i", self.ifname("initiator"), "-r",
                         "--socket", str(sock), self.disk()]).strip().split()[-1]
        size = self.image.stat().st_size
        if tiny:
            self.irun(["nbdinfo", "--size", uri])
            return 0
        self.irun(["nbdcopy", uri, str(self.out / "disk.img")])
        return size

    def tar_nc(self, tiny: bool) -> int:
        src = self.tiny / "small.bin" if tiny else self.plain / "big.bin"
        sink = self.icap.popen(self.bench.initiator_host,
                               ["sh", "-c", f"nc -l -p {TCP_PORT} | tar xf - -C {self.out}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_listen(self.bench.initiator_host, TCP_PORT)
        try:
            self.tcap.run(self.bench.target_host,
                          ["sh", "-c", f"tar cf - -C {src.parent} {src.name} | "
                           f"nc -N {self.addr_i} {TCP_PORT}"])
            sink.wait(60)
        finally:
            self.bench.lab.kill(sink)
        return src.stat().st_size

    def nbdkit_copy(self, tiny: bool) -> int:
        uri = f"nbd://{self.addr_t}:{NBD_PORT}"
        if tiny:
            self.irun(["nbdinfo", "--size", uri])
            return 0
        self.irun(["nbdcopy", uri, str(self.out / "big.bin")])
        return self.big

    def rsync(self, tiny: bool) -> int:
        module = "tiny" if tiny else "bench"
        self.irun(["rsync", "-a", f"--port={RSYNC_PORT}", f"{self.addr_t}::{module}/",
                   f"{self.out}/"])
        return 4096 if tiny else self.big

    def c_pair(self, tiny: bool, to_file: bool = False) -> int:
        """The C reader; `to_file`: it also writes what it reads to a file, as `aoe copy`
        to a file does, so that the floor of that way counts the output too."""
        length = 4096 if tiny else self.big
        fastreader.read_once(self.bench, self.tcap, self.icap, self.floor_exe, length,
                             self.out / "c-reader.img" if to_file else None)
        return length

    def floor(self) -> None:
        fastreader.start(self.bench, self.tcap, self.floor_exe, "floor", self.image,
                         self.state)

    def way(self, name: str) -> tuple[Callable[[], None], Callable[[bool], int]]:
        """(start the server, the timed client) of way `name`."""
        def nothing() -> None:
            return None

        table: dict[str, tuple[Callable[[], None], Callable[[bool], int]]] = {
            "copy-to-file": (lambda: self.serve(self.image), self.copy_to_file),
            "copy-from-file": (lambda: self.serve(self.scratch), self.copy_from_file),
            "mount-large": (lambda: self.serve(self.image), self.mount_large),
            "mount-tree": (lambda: self.serve(self.image), self.mount_tree),
            "nbd": (lambda: self.serve(self.image), self.nbd),
            "vblade-copy": (self.vblade, lambda tiny: self.copy_to_file(tiny, "vblade")),
            "tar-nc": (nothing, self.tar_nc),
            "nbdkit": (lambda: self.nbdkit(self.plain / "big.bin"), self.nbdkit_copy),
            "rsync": (self.rsyncd, self.rsync),
            "c-pair": (self.floor, self.c_pair),
            "c-pair-file": (self.floor, lambda tiny: self.c_pair(tiny, to_file=True)),
            "local-tree": (nothing, self.local_tree),
        }
        return table[name]

    def measure_way(self, name: str, tiny: bool) -> Run:
        start, client = self.way(name)
        try:
            start()
            warm_memory(warm_size(self.big))  # what this VM's host took back (env.py)
            t0, i0 = self.tcap.cpu_seconds(), self.icap.cpu_seconds()
            w0 = time.perf_counter()
            nbytes = client(tiny)
            seconds = time.perf_counter() - w0
            return Run(nbytes, seconds, self.tcap.cpu_seconds() - t0,
                       self.icap.cpu_seconds() - i0)
        finally:
            self.clear()


def links(opts: Options) -> list[tuple[str, int]]:
    return [(rate, mtu) for rate, mtu in opts.netbook_links if mtu in opts.mtus]


def measure(bench: Bench, opts: Options) -> Results:
    why = available()
    if why:
        raise BenchError(f"netbook scenario: {why}")
    bench.stop_all()
    big = opts.netbook_size
    tree_file = 2048 if opts.quick else 8192
    nb = Netbook(bench, big, tree_file, opts.netbook_period_ms)
    res = Results(defaultdict(list), defaultdict(list), big, nb.tree)
    try:
        for rate, mtu in links(opts):
            bench.set_mtu(mtu)
            for kind in ("serve", "vblade"):
                bench.shape(kind, rate)
            for cap in opts.netbook_caps:
                nb.set_cap(cap)
                for _ in range(opts.rounds):
                    for way in opts.netbook_ways:
                        key = (rate, mtu, cap, way)
                        run = nb.measure_way(way, tiny=False)
                        res.runs[key].append(run)
                        res.startup[key].append(nb.measure_way(way, tiny=True).seconds)
                        bench.log(f"netbook {rate} MTU {mtu} cap {cap} % {LABEL[way]}: "
                                  f"{run.mbps:.1f} MB/s, CPU {run.target_cpu:.2f} + "
                                  f"{run.initiator_cpu:.2f} s, start-up "
                                  f"{res.startup[key][-1]:.2f} s")
    finally:
        try:
            nb.close()
        finally:
            for kind in ("serve", "vblade"):
                with suppress(Exception):
                    bench.shape(kind, None)
    return res


def _per_gb(runs: list[Run], side: str) -> float:
    return median([getattr(r, f"{side}_cpu") / (r.nbytes / 1e9) for r in runs])


def netbook_table(res: Results, opts: Options) -> Table:
    t = Table("netbook", "7. Netbook mode: the user's commands, CPU-capped hosts, shaped "
              "cable", ["link", "MTU", "cap", "way", "MB/s", "% of wire", "start-up s",
                        "target CPU s/GB", "initiator CPU s/GB", "/ tar \\| nc"])
    for rate, mtu in links(opts):
        limit = wire_limit(parse_rate(rate), mtu) / 1e6
        for cap in opts.netbook_caps:
            tcp = res.runs.get((rate, mtu, cap, "tar-nc"), [])
            tcp_m = median([r.mbps for r in tcp]) if tcp else float("nan")
            group = f"{rate} MTU {mtu}, {cap} %"
            for way in opts.netbook_ways:
                runs = res.runs.get((rate, mtu, cap, way))
                if not runs:
                    continue
                mb = [r.mbps for r in runs]
                ratio = median(mb) / tcp_m
                t.rows.append([rate, str(mtu), f"{cap} %", LABEL[way].replace("|", "\\|"),
                               spread(mb, 1),
                               f"{median(mb) / limit * 100:.0f} %",
                               f"{median(res.startup[(rate, mtu, cap, way)]):.2f}",
                               f"{_per_gb(runs, 'target'):.1f}",
                               f"{_per_gb(runs, 'initiator'):.1f}", f"{ratio:.2f}"])
                t.bars.append(Bar(group, LABEL[way], median(mb)))
            _goals(t, res, rate, mtu, cap, limit, tcp_m)
    t.notes.append(
        f"Each host's processes in a cgroup of its own capped at the given share of one core "
        f"(100 % = uncapped; CFS period {opts.netbook_period_ms:g} ms, so a capped host runs "
        f"at most {opts.netbook_period_ms * 0.25:g} ms of every {opts.netbook_period_ms:g} at "
        f"25 %), the veth shaped with tbf. {res.big // MiB} MiB file or disk "
        f"range per way, the tree {TREE_FILES} files of {res.tree // TREE_FILES // 1024} KiB; "
        "all in tmpfs. Servers are started before the clock starts; the client commands are "
        "timed as typed, start-up included. Start-up alone: the same commands moving 4 KiB "
        "(`nbdinfo --size` for the NBD ways). CPU s/GB: the cgroup's own counter (every "
        "process of that side) over the gigabytes moved. `aoe copy -i` names the cable. "
        f"Before every timed run the bench touches and frees {warm_size(res.big) // MiB} MiB "
        "of memory (outside both groups): this machine is a virtual machine whose host takes freed "
        "memory back, and a page's first touch after that costs a fault in the host that "
        "a netbook does not have; every way gets the same.")
    return t


def _goals(t: Table, res: Results, rate: str, mtu: int, cap: int, limit: float,
           tcp: float) -> None:
    def med(way: str) -> float | None:
        runs = res.runs.get((rate, mtu, cap, way))
        return median([r.mbps for r in runs]) if runs else None

    copy, mount = med("copy-to-file"), med("mount-large")
    if rate == "1gbit" and cap == 25 and mtu == 9000:
        # Beside it, the floor of a copy to a file: the C reader writing what it reads.
        to_file = med("c-pair-file")
        beside = f" (the C reader to a file {to_file / tcp:.2f}×)" if to_file else ""
        for name, v in (("aoe copy to a file", copy), ("aoe mount + loop + cp", mount)):
            if v is not None:
                t.goals.append(Goal(f"netbook 25 %, 1 Gbit/s, MTU 9000: {name} ≥ 1.0× "
                                    "tar \\| nc", f"{v / tcp:.2f}×{beside}", v / tcp >= 1.0))
    floor = med("c-pair")
    if rate == "1gbit" and cap == 25 and mtu == 1500 and floor:
        for name, v, goal in (("aoe copy to a file", copy, 0.9),
                              ("aoe mount + loop + cp", mount, 0.8)):
            if v is not None:
                t.goals.append(Goal(f"netbook 25 %, 1 Gbit/s, MTU 1500: {name} ≥ {goal}× "
                                    "the C pair", f"{v / floor:.2f}× ({v / tcp:.2f}× "
                                    "tar \\| nc)", v / floor >= goal))
    if rate == "1gbit" and cap >= 100 and mtu == 1500:
        for name, v, goal in (("aoe copy to a file", copy, 0.95),
                              ("aoe mount + loop + cp", mount, 0.90)):
            if v is not None:
                t.goals.append(Goal(f"full CPU, 1 Gbit/s, MTU 1500: {name} ≥ "
                                    f"{goal * 100:.0f} % of the wire",
                                    f"{v / limit * 100:.0f} %", v / limit >= goal))
    if rate == "100mbit" and cap == 25:
        worst = min(((med(w) or 0.0) / limit, w) for w in WAYS
                    if w not in FLOORS and res.runs.get((rate, mtu, cap, w)))
        tree, local = med("mount-tree"), med("local-tree")
        beside = (f"; the tree {tree / local:.2f}× its no-network floor"
                  if tree and local else "")
        t.goals.append(Goal("100 Mbit/s, 25 %, MTU 1500: every way ≥ 95 % of the wire",
                            f"lowest {worst[0] * 100:.0f} % ({LABEL[worst[1]]}){beside}",
                            worst[0] >= 0.95))
