"""Many initiators on one target, sustained.

A target host with one cable to each of four initiator hosts; one `aoe serve` process on
the four interfaces, exporting two disks. Each initiator (its own process, in its own
host) opens both disks and, for the length of the run, writes random data at random
(unaligned) places of its own part of each disk, reads back and compares with what it
wrote, flushes now and then, and checks its whole part at the end. Meanwhile the target's
resident memory is sampled: after a warm-up it must stay flat. At the end the image files
hold exactly what the initiators wrote.

``AOE_RELIABILITY_MANY_SECONDS`` sets the length of the run (default 20 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aoe.initiator import AoeDisk
from aoe.lab import Lab

from .support.reliability import MIB, ExportDef, figure, serve, sha256_of, write_random

pytestmark = pytest.mark.netns

SECONDS = float(os.environ.get("AOE_RELIABILITY_MANY_SECONDS", "20"))
INITIATORS = 4
EXPORTS = {"3.0": 64 * MIB, "3.1": 32 * MIB}  # each initiator owns a quarter of each
RSS_GROWTH_LIMIT_KIB = 4096
REPO = Path(__file__).resolve().parent.parent


def worker(index: int, seconds: float, seed: int) -> dict[str, Any]:
    """One initiator: runs in its own process inside its lab host (see main below)."""
    rng = random.Random(seed)
    disks: dict[str, AoeDisk] = {}
    for address in EXPORTS:
        shelf, slot = map(int, address.split("."))
        disks[address] = AoeDisk.open(shelf, slot, ["eth0"], timeout=2, dead_timeout=10)
    part = {a: size // INITIATORS for a, size in EXPORTS.items()}
    base = {a: index * part[a] for a in EXPORTS}
    model = {a: bytearray(disks[a].read(base[a], part[a])) for a in EXPORTS}
    counts = {"writes": 0, "reads": 0, "flushes": 0, "bytes_written": 0, "bytes_read": 0,
              "mismatches": 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        address = rng.choice(list(EXPORTS))
        disk, mine = disks[address], model[address]
        length = rng.choice([1, 512, 4096, 65536, rng.randrange(1, 256 * 1024)])
        offset = rng.randrange(len(mine) - length)
        roll = rng.random()
        if roll < 0.45:
            data = rng.randbytes(length)
            disk.write(base[address] + offset, data)
            mine[offset : offset + length] = data
            counts["writes"] += 1
            counts["bytes_written"] += length
        elif roll < 0.98:
            got = disk.read(base[address] + offset, length)
            counts["mismatches"] += got != mine[offset : offset + length]
            counts["reads"] += 1
            counts["bytes_read"] += length
        else:
            disk.flush()
            counts["flushes"] += 1
    digests = {}
    for address, disk in disks.items():
        whole = disk.read(base[address], part[address])
        counts["mismatches"] += whole != model[address]
        digests[address] = hashlib.sha256(model[address]).hexdigest()
        stats = disk.stats()
        counts["retransmits"] = counts.get("retransmits", 0) + stats.retransmits
        disk.close()
    return {"index": index, "counts": counts, "digests": digests, "base": base,
            "part": part}


def main() -> None:
    index, seconds, seed = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(worker(index, seconds, seed)))


def test_four_initiators_two_exports_sustained(lab: Lab, tmp_path: Path) -> None:
    target = lab.host("target")
    hosts = [lab.host(f"init{i}") for i in range(INITIATORS)]
    cables = [lab.cable(target, h) for h in hosts]
    images = {}
    for n, (address, size) in enumerate(EXPORTS.items()):
        images[address] = tmp_path / f"disk{n}.img"
        write_random(images[address], size, seed=30 + n)
    served = serve(lab, target, tmp_path, [c.a_ifname for c in cables],
                   [ExportDef(a, p) for a, p in images.items()])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        h.popen([sys.executable, "-c", "from tests.test_reliability_many import main; main()",
                 str(i), str(SECONDS), str(1000 + i)], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, cwd=str(REPO), env=env)
        for i, h in enumerate(hosts)
    ]
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    while any(p.poll() is None for p in procs):
        samples.append((time.monotonic() - t0, served.rss_kib()))
        time.sleep(0.25)
        assert time.monotonic() - t0 < SECONDS + 120, "the initiators did not finish"
    results = []
    for p in procs:
        out, err = p.communicate()
        lab.untrack(p)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out))
    assert served.alive()
    rss_end = served.rss_kib()
    out_text, _ = served.stop()
    # Data: every initiator saw what it wrote, and the images hold it.
    for r in results:
        assert r["counts"]["mismatches"] == 0, r
        assert r["counts"]["writes"] > 10 and r["counts"]["reads"] > 10, r
        for address, digest in r["digests"].items():
            assert sha256_of(images[address], r["base"][address], r["part"][address]) == digest
    # Memory: flat after the first quarter of the run.
    warm = [kib for t, kib in samples if t >= SECONDS / 4]
    assert len(warm) >= 10
    growth = max(warm) - warm[0]
    total = {k: sum(r["counts"].get(k, 0) for r in results)
             for k in ("writes", "reads", "flushes", "bytes_written", "bytes_read",
                       "retransmits")}
    figure(f"many: {INITIATORS} initiators x 2 exports for {SECONDS:g} s: {total}; "
           f"{(total['bytes_written'] + total['bytes_read']) / SECONDS / 1e6:.1f} MB/s "
           f"together")
    figure(f"many: target RSS {samples[0][1]} KiB at start, {warm[0]} KiB after warm-up, "
           f"max {max(warm)} KiB, {rss_end} KiB at the end ({len(samples)} samples); "
           f"{out_text.strip().splitlines()[-1]}")
    assert growth <= RSS_GROWTH_LIMIT_KIB, f"RSS grew by {growth} KiB: {samples}"
