"""Loss and disorder: a whole-disk copy each way through the impairment relay.

5 % of frames dropped and 1 % duplicated in each direction, 2 % held back until the next
frame overtakes them, and every frame delayed by 0.5 ms ± 0.5 ms (jitter that reorders
too). The disk is 256 MiB by default (``AOE_RELIABILITY_LOSS_MIB`` changes it), at MTU
9000 against `aoe serve`; both copies must be bit-identical. Throughput is printed as a
FIGURE line, never asserted.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aoe.initiator.copy import copy_from_disk, copy_to_disk
from aoe.lab import Lab

from .support.reliability import (
    MIB,
    ExportDef,
    figure,
    open_disk,
    same_file,
    serve,
    write_random,
)

pytestmark = pytest.mark.netns

SIZE_MIB = int(os.environ.get("AOE_RELIABILITY_LOSS_MIB", "256"))
IMPAIRMENT = dict(drop=0.05, duplicate=0.01, reorder=0.02, delay=0.0005, jitter=0.0005)


def test_whole_disk_copies_are_exact_through_loss_and_disorder(lab: Lab,
                                                               tmp_path: Path) -> None:
    target, initiator = lab.host("target"), lab.host("initiator")
    relay = lab.relay_between(target, initiator, mtu=9000, seed=2024, **IMPAIRMENT)
    size = SIZE_MIB * MIB
    image = tmp_path / "disk.img"
    write_random(image, size, seed=1)
    served = serve(lab, target, tmp_path, [relay.a_ifname], [ExportDef("5.2", image)])
    with open_disk(initiator, 5, 2, [relay.b_ifname], dead_timeout=10) as disk:
        assert disk.size == size
        # Disk -> file.
        copy = tmp_path / "copy.img"
        with open(copy, "w+b") as out:
            read = copy_from_disk(disk, out)
        assert same_file(copy, image)
        copy.unlink()
        after_read = disk.stats()
        # File -> disk, with other data.
        source = tmp_path / "source.img"
        write_random(source, size, seed=2)
        with open(source, "rb") as src:
            written = copy_to_disk(disk, src)
        stats = disk.stats()
    relay_counts = relay.stop().total
    assert served.alive()
    served.stop()
    assert same_file(image, source)
    figure(f"loss: {SIZE_MIB} MiB at MTU 9000, {IMPAIRMENT}: disk->file "
           f"{read.rate / 1e6:.1f} MB/s ({read.seconds:.1f} s), file->disk "
           f"{written.rate / 1e6:.1f} MB/s ({written.seconds:.1f} s)")
    figure(f"loss: relay {relay_counts}")
    figure(f"loss: initiator after read {after_read.as_dict()}, total {stats.as_dict()}")
    # The impairments really happened, and the initiator really recovered from them.
    assert relay_counts.dropped > 0 and relay_counts.duplicated > 0
    assert relay_counts.reordered > 0 and relay_counts.delayed > 0
    assert after_read.retransmits > 0 and stats.retransmits > after_read.retransmits
    assert stats.stale_or_duplicate > 0
