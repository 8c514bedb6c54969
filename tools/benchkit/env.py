"""The bench's lab: two namespaces, one cable per target, images in memory, workers.

Host "target" runs `aoe serve` on one cable (eth0) and vblade on the other (eth1); host
"initiator" runs one initiator worker per target. Each target thus has a cable of its own:
an idle initiator or target never sees the other pair's frames, so A B A B rounds compare
like with like. Images live in /dev/shm (tmpfs): the page cache is warm by construction
and writes never wait for a disk. Everything is removed by :meth:`Bench.close`.
"""

from __future__ import annotations

import json
import mmap
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aoe.lab import Cable, Lab
from benchkit.procstat import cpu_seconds, peak_rss, reset_peak_rss

TOOLS = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
AOE = str(Path(sys.executable).with_name("aoe"))
KINDS = ("serve", "vblade")
LABEL = {"serve": "aoe serve", "vblade": "vblade"}
ADDRESS = {"serve": (7, 7), "vblade": (7, 8)}
MiB = 1 << 20
# Payload bytes per second of a link at `rate` bit/s for AoE frames at `mtu`: data over
# what goes on the wire (36 bytes of Ethernet and AoE/ATA header, 24 of FCS, preamble and
# inter-frame gap).


def wire_limit(rate_bits: int, mtu: int) -> float:
    """AoE goodput ceiling in bytes/s of a link (frames as full as the MTU allows)."""
    data = min(255, (mtu - 36) // 512) * 512
    return rate_bits / 8 * data / (data + 36 + 24)


class BenchError(RuntimeError):
    """Something in the set-up failed; the message says what."""


def compile_bytecode() -> None:
    """Byte-compile the package as `pip install` does: a checkout run with
    PYTHONDONTWRITEBYTECODE (or read-only) would otherwise compile every module at every
    command's start, which is not what a user's installed commands do (measured: 60 ms
    of CPU per `aoe copy`, 0.24 s of wall time at 25 % of a core)."""
    import compileall

    import aoe

    compileall.compile_dir(str(Path(aoe.__file__).parent), quiet=1)


def fill_random(path: Path, size: int) -> None:
    """A file of `size` bytes of random data (a 16 MiB random block, repeated)."""
    block = os.urandom(16 * MiB)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def warm_memory(size: int) -> None:
    """Touch `size` bytes of fresh memory and free them again, just before a timed run.

    This machine is a virtual machine whose free memory goes back to its host (free page
    reporting); the first touch of such a page then costs a fault in the host, about 2 s
    of CPU per GB, charged to whichever process allocates it. Page caches and output
    files allocate, so without this a way's figure would depend on how much memory the
    bench itself had written and freed before it (writing a new tmpfs file: 0.4 GB/s
    against 3.0).
    A page freed here goes back to the kernel's free lists, not yet to the host, and the
    run that follows takes it. A netbook has no host: the kernel's own cost of a page
    (allocating and zeroing it) is still in every figure.
    """
    block = bytes(MiB)
    with mmap.mmap(-1, max(size, 1)) as mem:
        for _ in range(size // MiB):
            mem.write(block)
        mem.write(block[: size % MiB])


@dataclass
class Worker:
    """An initiator worker process (benchkit.worker) and its pipe."""

    kind: str
    proc: subprocess.Popen[str]
    info: dict[str, Any] = field(default_factory=dict)

    def request(self, cmd: dict[str, Any], timeout: float = 900.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.answer(timeout)

    def answer(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise BenchError(f"initiator worker for {LABEL[self.kind]} gave no answer "
                             f"(exit status {self.proc.poll()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise BenchError(f"initiator worker for {LABEL[self.kind]}: {reply['error']}")
        return reply


@dataclass
class Sample:
    """One timed transfer with the CPU and memory both ends used for it."""

    nbytes: int
    seconds: float
    target_cpu: float = 0.0
    initiator_cpu: float = 0.0
    target_rss: int = 0
    initiator_rss: int = 0

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6


class Bench:
    """The lab, the images and the processes of one bench run."""

    def __init__(self, size: int, verbose: bool = False) -> None:
        self.size = size
        self.verbose = verbose
        compile_bytecode()
        self.lab = Lab()
        # The pid in the name tells whose scratch it is when several benches run at once.
        self.shm = Path(tempfile.mkdtemp(prefix=f"pyaoe-bench-{os.getpid()}-", dir="/dev/shm"))
        self.work = Path(tempfile.mkdtemp(prefix=f"pyaoe-bench-{os.getpid()}-"))
        self.mtu = 1500
        self.targets: dict[str, subprocess.Popen[str]] = {}
        self.workers: dict[str, Worker] = {}
        self.cables: dict[str, Cable] = {}
        self._addressed: set[str] = set()
        try:
            self.target_host = self.lab.host("target")
            self.initiator_host = self.lab.host("initiator")
            for kind in KINDS:
                self.cables[kind] = self.lab.cable(self.target_host, self.initiator_host)
            self.images = {kind: self.shm / f"{kind}.img" for kind in KINDS}
            self.source = self.shm / "source.bin"  # what writes send
            for path in [*self.images.values(), self.source]:
                fill_random(path, size)
        except BaseException:
            self.close()
            raise

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # --- the cables ------------------------------------------------------------------
    def set_mtu(self, mtu: int) -> None:
        """Both cables to `mtu` (targets must be restarted to see it)."""
        if mtu != self.mtu:
            for cable in self.cables.values():
                cable.set_mtu(mtu)
            self.mtu = mtu

    def shape(self, kind: str, rate: str | None) -> None:
        """Shape the cable of `kind` to `rate` (tbf on both ends), or unshape it."""
        cable = self.cables[kind]
        if rate is None:
            cable.unshape()
        else:
            cable.shape(rate)

    def ip_addresses(self, kind: str) -> tuple[str, str]:
        """Private addresses on the cable of `kind` (target end, initiator end), for the
        TCP peers; they exist only inside the lab's namespaces."""
        from peers import address_cable

        net = "10.231.0" if kind == "serve" else "10.231.1"
        if kind not in self._addressed:
            address_cable(self.cables[kind], net)
            self._addressed.add(kind)
        return f"{net}.1", f"{net}.2"

    def ifname(self, kind: str, side: str) -> str:
        cable = self.cables[kind]
        return cable.a_ifname if side == "target" else cable.b_ifname

    # --- targets ---------------------------------------------------------------------
    def start_target(self, kind: str, extra: list[str] | None = None) -> subprocess.Popen[str]:
        """Start `aoe serve` or vblade on its cable at the current MTU."""
        self.stop_target(kind)
        shelf, slot = ADDRESS[kind]
        ifname = self.ifname(kind, "target")
        image = str(self.images[kind])
        if kind == "serve":
            state = self.work / "state"
            state.mkdir(exist_ok=True)
            argv = [AOE, "serve", "--state-dir", str(state), "--no-announce",
                    *(extra or []), ifname, f"{shelf}.{slot}", image]
        else:
            if shutil.which("vblade") is None:
                raise BenchError("vblade is not installed (Debian package vblade)")
            argv = ["vblade", str(shelf), str(slot), ifname, image]
        errlog = self.work / f"{kind}.log"
        with open(errlog, "a") as err:
            proc = self.target_host.popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        if kind == "serve":
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 20)
            line = proc.stdout.readline() if ready else ""
            if not line.startswith("ready"):
                self.lab.kill(proc)
                raise BenchError(f"aoe serve did not start: {line.strip()} "
                                 f"{errlog.read_text().strip()}")
        self.targets[kind] = proc
        self.log(f"{LABEL[kind]} started (pid {proc.pid}, MTU {self.mtu})")
        return proc

    def stop_target(self, kind: str) -> None:
        proc = self.targets.pop(kind, None)
        if proc is not None:
            self.lab.kill(proc, grace=3.0)

    # --- initiator workers -----------------------------------------------------------
    def start_worker(self, kind: str) -> Worker:
        """An initiator worker for the target of `kind`, once the disk is open."""
        self.stop_worker(kind)
        shelf, slot = ADDRESS[kind]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TOOLS), env.get("PYTHONPATH"))
                                            if p)
        proc = self.initiator_host.popen(
            [PYTHON, "-m", "benchkit.worker", self.ifname(kind, "initiator"),
             f"{shelf}.{slot}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        worker = Worker(kind, proc)
        self.workers[kind] = worker
        worker.info = worker.answer(60.0)
        return worker

    def stop_worker(self, kind: str) -> None:
        worker = self.workers.pop(kind, None)
        if worker is None:
            return
        try:
            if worker.proc.poll() is None and worker.proc.stdin is not None:
                worker.proc.stdin.write('{"op": "quit"}\n')
                worker.proc.stdin.flush()
                worker.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.lab.kill(worker.proc)

    def transfer(self, kind: str, op: str, length: int) -> Sample:
        """One sequential read or write of `length` bytes through the worker of `kind`,
        with the CPU time and peak RSS of the target and the initiator."""
        worker = self.workers[kind]
        target = self.targets[kind]
        reset_peak_rss(target.pid)
        c0 = cpu_seconds(target.pid)
        cmd: dict[str, Any] = {"op": op, "length": length}
        if op == "write":
            cmd["src"] = str(self.source)
        reply = worker.request(cmd)
        sample = Sample(length, reply["seconds"], cpu_seconds(target.pid) - c0,
                        reply["cpu"], peak_rss(target.pid), reply["rss"])
        self.log(f"{LABEL[kind]:>9} {op:<5} {length // MiB} MiB: {sample.mbps:8.1f} MB/s "
                 f"(retransmits so far {reply.get('retransmits', 0)})")
        return sample

    # --- teardown --------------------------------------------------------------------
    def stop_all(self) -> None:
        for kind in list(self.workers):
            self.stop_worker(kind)
        for kind in list(self.targets):
            self.stop_target(kind)

    def close(self) -> None:
        """Stop every process, remove the lab, the images and the scratch directory."""
        try:
            self.stop_all()
        finally:
            try:
                self.lab.close()
            finally:
                shutil.rmtree(self.shm, ignore_errors=True)
                shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
