#!/usr/bin/env python3
"""Micro-benchmark of the initiator's session core: Python time per frame, no network.

A read is cut into frames (``next_frames``), each frame's header is turned into a clean
answer in a receive batch, and the batch is handed back (``on_answers``, which copies the
data into the caller's buffer). Only the core calls are timed, in CPU time of the
thread, so the figure is the core's own cost per frame without system calls; on a loaded
machine it still varies (caches, clock rate): take the lowest of several runs.

Three patterns: one long read answered a whole window at a time (the best case), and the
way `aoe copy` reads: three 4 MiB requests in flight, each replaced as it completes, the
answers coming back in sending order a few dozen at a time (28 per batch is what
recvmmsg returned on average under a 25 % CPU cap at MTU 1500), so requests take turns
and the window opens a batch at a time; and 4 KiB requests (one frame each at MTU
9000) kept 32 in flight, as fio drives `aoe nbd` in the random scenario.

Usage: python tools/bench_core.py [--frames N] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque
from dataclasses import dataclass, field

from aoe.initiator.core import BATCH, TX_HEAD, Request, SessionCore
from aoe.initiator.window import MacBudget, PathWindow
from aoe.protocol import ATA_HEADER_LEN, SECTOR_SIZE, AtaFlag, AtaOpcode, AtaStatus
from aoe.protocol.fastpath import ANSWER_OK_VERFLAGS

LOCAL = bytes.fromhex("020000000001")
TARGET = bytes.fromhex("020000000002")
DRDY = int(AtaStatus.DRDY)
RANDOM_DEPTH = 32


@dataclass
class Port:
    ifname: str = "eth0"
    mac: bytes = LOCAL
    mtu: int = 9000


@dataclass
class Outbox:
    """Header slots the core writes into; flushing just empties them."""

    buf: bytearray = field(default_factory=lambda: bytearray(BATCH * TX_HEAD))
    queued: int = 0
    data_addrs: list[int] = field(default_factory=lambda: [0] * BATCH)
    data_lens: list[int] = field(default_factory=lambda: [0] * BATCH)

    def flush(self) -> None:
        self.queued = 0


def _one_path_core(port: Port, sectors: int, window: int) -> tuple[SessionCore, Outbox]:
    """A core with one path through ``port``, its window open to ``window`` frames, and
    the outbox the core writes its frames into."""
    path = PathWindow(0, port, TARGET, 1, 0, MacBudget(window),  # type: ignore[arg-type]
                      sectors, 0.0005, 0.02, 1.0, window, 0.0)
    path.io = port
    path.tx = out = Outbox()
    path.cwnd = float(window)
    return SessionCore(1, 0, [path], now=0.0), out


def measure(frames: int, sectors: int, window: int) -> float:
    """Seconds of core time per frame reading ``frames`` frames of ``sectors`` sectors."""
    port = Port()
    core, out = _one_path_core(port, sectors, window)
    slot = ATA_HEADER_LEN + sectors * SECTOR_SIZE
    rx = bytearray(BATCH * slot)
    rxmv = memoryview(rx)
    lengths = [slot] * BATCH
    dest = bytearray(frames * sectors * SECTOR_SIZE)
    core.submit(Request(AtaOpcode.READ_SECTORS_EXT, AtaFlag.EXTENDED, 0, frames * sectors,
                        memoryview(dest), on_done=lambda r: None))
    spent = 0.0
    now = 0.0
    clock = time.thread_time  # CPU time of this thread: other load does not count
    while core.pending or core.tags:
        t = clock()
        core.next_frames(now)
        spent += clock() - t
        n = out.queued
        out.queued = 0
        for q in range(min(n, BATCH)):  # the target: the header back as a clean answer
            head = out.buf[q * TX_HEAD : q * TX_HEAD + ATA_HEADER_LEN]
            base = q * slot
            rx[base : base + 6] = LOCAL
            rx[base + 6 : base + 12] = TARGET
            rx[base + 12 : base + ATA_HEADER_LEN] = head[12:]
            rx[base + 14] = ANSWER_OK_VERFLAGS
            rx[base + 27] = DRDY  # status in place of the command
        now += 0.0001
        t = clock()
        core.on_answers(now, port, rx, rxmv, lengths, min(n, BATCH), slot)
        spent += clock() - t
        for req in core.take_completed():
            if req.error is not None:
                raise RuntimeError(f"the read failed: {req.error}")
    if core.stats.answers != frames or core.stats.retransmits:
        raise RuntimeError(f"{core.stats.answers} answers for {frames} frames")
    return spent / frames


def measure_copy(sectors: int, mtu: int, per_batch: int, total: int, depth: int = 3,
                 chunk: int = 4 << 20, window: int = BATCH) -> float:
    """Seconds of core time per frame reading ``total`` bytes as `aoe copy` does (a
    window of at most one outbox, so every header sent is seen here)."""
    port = Port(mtu=mtu)
    core, out = _one_path_core(port, sectors, window)
    slot = (mtu + 14 + 63) // 64 * 64  # as the session sizes its receive slots
    rx = bytearray(BATCH * slot)
    rxmv = memoryview(rx)
    lengths = [0] * BATCH
    bufs = [memoryview(bytearray(chunk)) for _ in range(depth)]
    requests = total // chunk
    issued = done = frames = 0
    wire: deque[bytes] = deque()  # headers sent, not yet answered, in sending order

    def issue() -> None:
        nonlocal issued
        core.submit(Request(AtaOpcode.READ_SECTORS_EXT, AtaFlag.EXTENDED,
                            issued * chunk // SECTOR_SIZE, chunk // SECTOR_SIZE,
                            bufs[issued % depth], on_done=lambda r: None))
        issued += 1

    for _ in range(depth):
        issue()
    spent = now = 0.0
    clock = time.thread_time
    while done < requests:
        t = clock()
        core.next_frames(now)
        spent += clock() - t
        for q in range(out.queued):
            wire.append(bytes(out.buf[q * TX_HEAD : q * TX_HEAD + ATA_HEADER_LEN]))
        out.queued = 0
        k = min(per_batch, len(wire), BATCH)
        for j in range(k):
            head = wire.popleft()
            base = j * slot
            rx[base : base + 6] = LOCAL
            rx[base + 6 : base + 12] = TARGET
            rx[base + 12 : base + ATA_HEADER_LEN] = head[12:]
            rx[base + 14] = ANSWER_OK_VERFLAGS
            rx[base + 27] = DRDY
            lengths[j] = ATA_HEADER_LEN + head[26] * SECTOR_SIZE
        now += 0.0001
        t = clock()
        core.on_answers(now, port, rx, rxmv, lengths, k, slot)
        finished = core.take_completed()
        spent += clock() - t
        frames += k
        for req in finished:
            if req.error is not None:
                raise RuntimeError(f"the read failed: {req.error}")
            done += 1
            if issued < requests:
                issue()
    if core.stats.retransmits:
        raise RuntimeError("frames were resent")
    return spent / frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--copy-mib", type=int, default=32,
                    help="MiB read in the aoe copy pattern (default 32)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = {}
    for mtu, sectors in ((1500, 2), (9000, 17)):
        best = min(measure(args.frames, sectors, 64) for _ in range(3))
        results[f"read, MTU {mtu} ({sectors} sectors/frame)"] = round(best * 1e6, 3)
    for mtu, sectors in ((1500, 2), (9000, 17)):
        best = min(measure_copy(sectors, mtu, 28, args.copy_mib << 20) for _ in range(3))
        results[f"aoe copy pattern, MTU {mtu}"] = round(best * 1e6, 3)
    best = min(measure_copy(17, 9000, RANDOM_DEPTH, args.copy_mib << 20, depth=RANDOM_DEPTH,
                            chunk=4096) for _ in range(3))
    results[f"4 KiB requests, {RANDOM_DEPTH} in flight, MTU 9000"] = round(best * 1e6, 3)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, us in results.items():
        print(f"{name}: {us:.3f} µs of core time per frame")


if __name__ == "__main__":
    main()
