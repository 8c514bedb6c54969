"""`aoe attach` / `aoe detach` and the kernel nbd binding.

Where the kernel has no nbd driver (this project's test machines), the commands must say
so plainly. The real attach (mkfs, mount, a refused busy detach, fsck on the host) runs on a
kernel that has the driver, in a qemu guest: test_vm_attach.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from aoe.export.attach import (
    GenlSocket,
    NbdUnavailable,
    attach_blockdev,
    check_nbd,
    nbd_family,
    nbd_index,
)
from aoe.export.blockdev import FileBlockDevice

from .support.export import run

AOE = str(Path(sys.executable).with_name("aoe"))
HAVE_NBD = os.path.isdir("/sys/module/nbd") or nbd_family() is not None
no_driver = pytest.mark.skipif(HAVE_NBD, reason="this kernel has the nbd driver")


def test_generic_netlink_lookup_is_real() -> None:
    with GenlSocket() as genl:
        assert genl.family_id("nlctrl") == 0x10  # the controller itself
        with pytest.raises(FileNotFoundError):
            genl.family_id("nosuchfamily")


def test_device_names() -> None:
    assert nbd_index("/dev/nbd0") == 0 and nbd_index("nbd15") == 15
    for bad in ["/dev/sda", "/dev/nbd", "nbd0p1", "/tmp/nbd1"]:
        with pytest.raises(ValueError):
            nbd_index(bad)


@no_driver
def test_attach_without_the_driver_is_a_clear_error(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(1 << 20))
    with pytest.raises(NbdUnavailable, match="nbd driver"):
        check_nbd("/dev/nbd0")
    with FileBlockDevice(img) as dev, pytest.raises(NbdUnavailable, match="modprobe nbd"):
        attach_blockdev(dev, "/dev/nbd0")
    for argv in (["attach", f"file:{img}", "/dev/nbd0"], ["attach", "1.2", "/dev/nbd3"],
                 ["detach", "/dev/nbd0"]):
        done = run([AOE, *argv], check=False, timeout=30)
        assert done.returncode == 1, done
        assert "nbd driver is not available" in done.stderr
        assert "Traceback" not in done.stderr


def test_attach_rejects_a_non_nbd_device(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    done = run([AOE, "attach", f"file:{img}", "/dev/sda"], check=False)
    assert done.returncode == 2 and "not an nbd device name" in done.stderr
