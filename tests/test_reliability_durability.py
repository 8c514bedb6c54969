"""Durability: what the initiator was told is written, is.

- Acknowledged writes survive a SIGKILL of the target: the test kills `aoe serve` right
  after a write() returns (while other threads keep writing), and every write acknowledged
  so far is found in the image file. The target comes back and the session carries on.
  (A killed process loses nothing the kernel already has; what a power cut could lose is
  what FLUSH is for.)
- FLUSH CACHE (EXT) is answered only after the store is synced: under strace, the
  fdatasync of the image comes after the pwrites of the writes before it and before the
  frame that answers the flush.
"""

from __future__ import annotations

import random
import re
import threading
from pathlib import Path

import pytest

from aoe.lab import Lab
from aoe.protocol import AtaOpcode, AtaStatus

from .support.reliability import MIB, ExportDef, figure, open_disk, serve
from .support.target import Client

pytestmark = pytest.mark.netns

ROUNDS = 6
SLOT = 64 * 1024 + 1024  # every write gets a slot of its own, a sector apart from the next


class Writer(threading.Thread):
    """Writes random data into fresh slots of its region and records each write once
    write() has returned, i.e. once the target acknowledged all of it."""

    def __init__(self, disk: object, base: int, slots: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.disk = disk
        self.base = base
        self.slots = slots
        self.rng = random.Random(seed)
        self.acked: list[tuple[int, bytes]] = []
        self.next_slot = 0
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def one(self) -> tuple[int, bytes]:
        """One write (unaligned start and length, so edges go through read-modify-write)."""
        if self.next_slot >= self.slots:
            raise RuntimeError("region full")
        offset = self.base + self.next_slot * SLOT + self.rng.randrange(512)
        data = self.rng.randbytes(self.rng.randrange(1, 64 * 1024))
        self.next_slot += 1
        self.disk.write(offset, data)  # type: ignore[attr-defined]
        self.acked.append((offset, data))
        return offset, data

    def run(self) -> None:
        try:
            while not self.halt.is_set() and self.next_slot < self.slots:
                self.one()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def missing(image: Path, acked: list[tuple[int, bytes]]) -> list[int]:
    """Offsets of acknowledged writes whose bytes are not in the image file."""
    bad = []
    with open(image, "rb") as f:
        for offset, data in acked:
            f.seek(offset)
            if f.read(len(data)) != data:
                bad.append(offset)
    return bad


def test_acknowledged_writes_survive_sigkill_of_the_target(lab: Lab, tmp_path: Path) -> None:
    target, initiator = lab.host("target"), lab.host("initiator")
    lab.cable(target, initiator)
    size = 64 * MIB
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(size)
    served = serve(lab, target, tmp_path, ["eth0"], [ExportDef("5.2", image)])
    region = size // 4
    rng = random.Random(1)
    with open_disk(initiator, 5, 2, ["eth0"], dead_timeout=10) as disk:
        main = Writer(disk, 0, region // SLOT, seed=100)
        others = [Writer(disk, region * (i + 1), region // SLOT, seed=101 + i) for i in range(3)]
        for w in others:
            w.start()
        for _ in range(ROUNDS):
            for _ in range(rng.randrange(5, 30)):
                main.one()
            served.kill9()  # right after the last write() returned
            acked = main.acked + [a for w in others for a in list(w.acked)]
            assert missing(image, acked) == [], "an acknowledged write is not in the image"
            served.start()
        for w in others:
            w.halt.set()
        for w in others:
            w.join(30)
            assert w.error is None, w.error
        everything = main.acked + [a for w in others for a in w.acked]
    served.stop()
    assert missing(image, everything) == []
    kills = served.starts - 1
    figure(f"durability: {kills} SIGKILLs right after an acknowledged write, "
           f"{len(everything)} writes acknowledged, all in the image at each kill")
    assert kills == ROUNDS and len(everything) > ROUNDS * 5


def _hex(data: bytes) -> str:
    r"""How ``strace -xx`` prints these bytes: \xNN each."""
    return "".join(f"\\x{b:02x}" for b in data)


def test_flush_is_answered_only_after_fdatasync(lab: Lab, tmp_path: Path) -> None:
    target, initiator = lab.host("target"), lab.host("initiator")
    cable = lab.cable(target, initiator)
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(4 * MIB)
    trace = tmp_path / "trace.txt"
    strace = ("strace", "-f", "-ttt", "-xx", "-s", "32", "-o", str(trace), "-e",
              "trace=pwrite64,pwritev,pwritev2,write,fsync,fdatasync,sync_file_range,"
              "sendto,sendmsg,sendmmsg")
    served = serve(lab, target, tmp_path, ["eth0"], [ExportDef("1.0", image)],
                   wrapper=strace)
    client = Client(initiator)
    mac = bytes.fromhex(cable.a_mac.replace(":", ""))
    rounds: list[tuple[list[tuple[int, int]], int]] = []  # ([(write tag, offset)], flush tag)
    try:
        for n in range(3):
            writes = []
            for i in range(8):
                lba = 64 * n + 2 * i
                w = client.ata(mac, 1, 0, AtaOpcode.WRITE_SECTORS_EXT, lba, 2,
                               bytes([0xA0 + n]) * 1024, write=True)
                reply = client.request(w)
                assert reply is not None and not reply.frame.is_error
                writes.append((w.tag, lba * 512))
            flush = client.ata(mac, 1, 0, AtaOpcode.FLUSH_CACHE_EXT)
            reply = client.request(flush, timeout=5)
            assert reply is not None
            assert reply.frame.body.cmd_status == AtaStatus.DRDY  # type: ignore[union-attr]
            rounds.append((writes, flush.tag))
    finally:
        client.close()
        served.stop()
    lines = trace.read_text().splitlines()

    def first(pattern: str, start: int = 0) -> int:
        for i in range(start, len(lines)):
            if re.search(pattern, lines[i]):
                return i
        raise AssertionError(f"{pattern!r} not in the trace after line {start}")

    def answer_to(tag: int) -> str:
        return r"send(mmsg|msg|to)\(.*" + re.escape(_hex(tag.to_bytes(4, "big")))

    gaps = []
    for writes, flush_tag in rounds:
        last_store = 0
        for tag, offset in writes:  # each write reaches the store before its answer leaves
            stored = first(rf"pwrite\w*\(\d+, .*, 1024, {offset}\)\s+= 1024")
            assert stored < first(answer_to(tag)), "a write was answered before pwrite"
            last_store = max(last_store, stored)
        fd = re.search(r"pwrite\w*\((\d+),", lines[last_store]).group(1)  # type: ignore[union-attr]
        sync = first(rf"(fdatasync|fsync)\({fd}\)\s+= 0", last_store)
        answer = first(answer_to(flush_tag))
        assert last_store < sync < answer, "the flush was answered before the image was synced"
        gaps.append(float(lines[answer].split()[1]) - float(lines[sync].split()[1]))
    figure(f"flush ordering: in {len(rounds)} rounds of 8 writes + FLUSH CACHE EXT every "
           f"write's pwrite preceded its answer and the fdatasync of the image preceded the "
           f"flush answer by {min(gaps) * 1e6:.0f}-{max(gaps) * 1e6:.0f} us (strace -f)")
