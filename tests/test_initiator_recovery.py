"""A dead target that comes back: I/O fails while it is away (after the dead time, then at
once), resumes on its own when the same device (IDENTIFY serial and size) answers again,
and stays refused while another device answers at the address."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from aoe.initiator import AoeDisk
from aoe.initiator.errors import TargetDeadError
from aoe.lab import Host, Lab

from .support.initiator import SHELF, SLOT, start_target, wait_answering, write_image

pytestmark = pytest.mark.netns


def read_when_back(disk: AoeDisk, offset: int, length: int, within: float) -> bytes:
    deadline = time.monotonic() + within
    while True:
        try:
            return disk.read(offset, length)
        except TargetDeadError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def hosts(lab: Lab) -> tuple[Host, Host, str, str]:
    target, initiator = lab.host("target"), lab.host("initiator")
    cable = lab.cable(target, initiator)
    return target, initiator, cable.a_ifname, cable.b_ifname


def test_the_same_device_resumes_another_is_refused(
        lab: Lab, hosts: tuple[Host, Host, str, str], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    target, initiator, t_if, i_if = hosts
    image = tmp_path / "disk.img"
    data = write_image(image, 1 << 20, seed=5)
    state = tmp_path / "state"
    proc = start_target("serve", target, t_if, image, state_dir=state)
    wait_answering(initiator, i_if, proc=proc)
    caplog.set_level(logging.WARNING, logger="aoe.initiator")
    with initiator.enter():
        disk = AoeDisk.open(SHELF, SLOT, [i_if], dead_timeout=1.0, give_up=None)
    try:
        assert disk.read(0, 4096) == data[:4096]
        lab.kill(proc)
        t0 = time.monotonic()
        with pytest.raises(TargetDeadError):
            disk.read(8192, 4096)
        assert time.monotonic() - t0 >= 0.9  # it waited the dead time first
        t1 = time.monotonic()
        with pytest.raises(TargetDeadError):  # while dead: at once
            disk.read(0, 512)
        assert time.monotonic() - t1 < 0.5

        # another device at the address (another image: other serial and size)
        other = tmp_path / "other.img"
        write_image(other, 2 << 20, seed=6)
        impostor = start_target("serve", target, t_if, other, state_dir=tmp_path / "state2")
        deadline = time.monotonic() + 15
        while "is another device" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.1)
        with pytest.raises(TargetDeadError):
            disk.read(0, 512)
        lab.kill(impostor)

        # the same device again: I/O resumes without reopening anything
        back = start_target("serve", target, t_if, image, state_dir=state)
        assert read_when_back(disk, 0, 1 << 20, within=15) == data
        disk.write(4096, b"\xa5" * 4096)
        disk.flush()
        assert image.read_bytes()[4096:8192] == b"\xa5" * 4096
        assert "is back after" in caplog.text
        assert disk.session.core.revivals == 1
        lab.kill(back)
    finally:
        disk.close()


def test_give_up_ends_the_session(lab: Lab, hosts: tuple[Host, Host, str, str],
                                  tmp_path: Path) -> None:
    target, initiator, t_if, i_if = hosts
    image = tmp_path / "disk.img"
    write_image(image, 1 << 20)
    proc = start_target("serve", target, t_if, image)
    wait_answering(initiator, i_if, proc=proc)
    with initiator.enter():
        disk = AoeDisk.open(SHELF, SLOT, [i_if], dead_timeout=0.5, give_up=1.0)
    try:
        lab.kill(proc)
        with pytest.raises(TargetDeadError):
            disk.read(0, 512)
        time.sleep(2.5)
        with pytest.raises(TargetDeadError, match="did not come back within"):
            disk.read(0, 512)
        assert disk.session.failure is not None  # over for good
    finally:
        disk.close()
