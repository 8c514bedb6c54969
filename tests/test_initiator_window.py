"""The window stays within what is useful and safe even when `aoe serve` announces
thousands of buffers, and concurrent writes (sent from the callers' own buffers, in turns
of adjacent frames) land intact."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from aoe.initiator.copy import copy_from_disk, copy_to_disk
from aoe.initiator.window import MAX_WINDOW
from aoe.lab import Lab

from .support.initiator import make_rig

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("mtu", [1500, 9000])
def test_window_is_capped_and_copies_round_trip(lab: Lab, tmp_path: Path, mtu: int) -> None:
    rig = make_rig(lab, "serve", tmp_path, mtu=mtu, size=16 << 20)
    disk = rig.open()
    try:
        if mtu == 1500:  # the target would allow far more
            assert disk.info.buffer_count > MAX_WINDOW
        payload = os.urandom(disk.size)
        # copy_to_disk keeps three 4 MiB writes in flight from reused buffers.
        copy_to_disk(disk, io.BytesIO(payload), chunk=1 << 20)
        assert rig.image_now() == payload
        out = tmp_path / "back.img"
        with open(out, "wb") as f:
            copy_from_disk(disk, f, chunk=1 << 20)
        assert out.read_bytes() == payload
        [state] = disk.session.path_states()
        assert 1 <= state["cwnd"] <= min(MAX_WINDOW, disk.info.buffer_count)
    finally:
        disk.close()
