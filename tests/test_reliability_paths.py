"""Path failure: one `aoe serve` process on two interfaces, one initiator with two paths.

A cable is pulled at the target's end in the middle of a copy (the target's socket gets
ENETDOWN, its sends fail): the copy fails over to the other path and completes, the target
keeps running, and once the cable is back the path is used again. Then the other cable is
pulled, at both ends, in the middle of a write.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aoe.initiator import AoeDisk
from aoe.initiator.copy import copy_from_disk, copy_to_disk
from aoe.lab import Lab
from aoe.lab.cable import Cable
from aoe.lab.host import Host
from aoe.protocol import AtaOpcode

from .support.reliability import MIB, ExportDef, figure, open_disk, serve, write_random
from .support.target import Client

pytestmark = pytest.mark.netns


def pull_at(fraction: float, cable: Cable, end: Host | None, log: list[float]) -> \
        Callable[[int, int], None]:
    """A progress callback that pulls ``cable`` (one end, or both) once, at ``fraction``."""
    def progress(done: int, total: int) -> None:
        if not log and done >= total * fraction:
            cable.set_link(False, end=end)
            log.append(time.monotonic())
    return progress


def path_state(disk: AoeDisk, ifname: str) -> dict[str, Any]:
    return next(s for s in disk.session.path_states() if s["ifname"] == ifname)


def test_copy_fails_over_when_a_target_interface_goes_down(lab: Lab, tmp_path: Path) -> None:
    target, initiator = lab.host("target"), lab.host("initiator")
    cables = [lab.cable(target, initiator), lab.cable(target, initiator)]
    size = 32 * MIB
    image = tmp_path / "disk.img"
    write_random(image, size, seed=21)
    original = image.read_bytes()
    served = serve(lab, target, tmp_path, [c.a_ifname for c in cables],
                   [ExportDef("5.2", image)])
    ifaces = [c.b_ifname for c in cables]
    with open_disk(initiator, 5, 2, ifaces, dead_timeout=10) as disk:
        assert len(disk.info.paths) == 2
        # Disk -> file; the target's end of cable 1 goes down a quarter of the way.
        pulled: list[float] = []
        out = io.BytesIO()
        t0 = time.monotonic()
        copy_from_disk(disk, out, progress=pull_at(0.25, cables[1], target, pulled),
                       chunk=1 * MIB)
        read_time = time.monotonic() - t0
        assert pulled and out.getvalue() == original
        assert served.alive(), "the target died when its interface went down"
        state = path_state(disk, ifaces[1])
        assert state["answered"] > 0 and (state["timeouts"] > 0 or state["down"])
        after_read = disk.stats()
        # Cable back: the target serves on that interface again, and the path comes back.
        cables[1].set_link(True, end=target)
        client = Client(initiator, ifaces[1])
        try:
            mac1 = bytes.fromhex(cables[1].a_mac.replace(":", ""))
            deadline = time.monotonic() + 10
            reply = None
            while reply is None and time.monotonic() < deadline:
                reply = client.request(client.ata(mac1, 5, 2, AtaOpcode.READ_SECTORS_EXT, 8, 2),
                                       timeout=0.3)
            assert reply is not None, "no answer on the interface that came back"
            assert bytes(reply.frame.body.data) == original[4096:5120]  # type: ignore[union-attr]
        finally:
            client.close()
        back_at = time.monotonic()
        while path_state(disk, ifaces[1])["down"] and time.monotonic() < back_at + 10:
            time.sleep(0.05)
        assert not path_state(disk, ifaces[1])["down"]
        answered_before = path_state(disk, ifaces[1])["answered"]
        # File -> disk; cable 0 pulled at both ends a quarter of the way.
        new = random.Random(22).randbytes(size)
        pulled_w: list[float] = []
        t0 = time.monotonic()
        copy_to_disk(disk, io.BytesIO(new), progress=pull_at(0.25, cables[0], None, pulled_w),
                     chunk=1 * MIB)
        write_time = time.monotonic() - t0
        assert pulled_w
        assert path_state(disk, ifaces[1])["answered"] > answered_before  # it carried the rest
        assert disk.read(0, size) == new
        stats = disk.stats()
    assert served.alive()
    out_text, err_text = served.stop()
    assert image.read_bytes() == new
    assert "Traceback" not in err_text
    counters = out_text.strip().splitlines()[-1]
    figure(f"paths: {size >> 20} MiB over 2 paths, one pulled a quarter of the way: "
           f"disk->file {read_time:.2f} s ({size / read_time / 1e6:.0f} MB/s), "
           f"file->disk {write_time:.2f} s ({size / write_time / 1e6:.0f} MB/s); "
           f"failovers {after_read.path_failovers} + "
           f"{stats.path_failovers - after_read.path_failovers}, "
           f"retransmits {stats.retransmits}; target {counters}")
    assert stats.retransmits > 0
