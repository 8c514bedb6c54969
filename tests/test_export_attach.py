"""`aoe attach` / `aoe detach` and the kernel nbd binding.

Where the kernel has no nbd driver (this project's test machines), the commands must say
so plainly. Where it has one, a real attach is exercised: mkfs, mount, fsck on /dev/nbdN.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
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

from .support.export import random_image, run, umount_quietly

AOE = str(Path(sys.executable).with_name("aoe"))
HAVE_NBD = os.path.isdir("/sys/module/nbd") or nbd_family() is not None
no_driver = pytest.mark.skipif(HAVE_NBD, reason="this kernel has the nbd driver")
with_driver = pytest.mark.skipif(not HAVE_NBD, reason="this kernel has no nbd driver")


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


@with_driver
def test_attach_mount_detach(tmp_path: Path) -> None:  # pragma: no cover - needs nbd
    """Only where the driver exists: the kernel block device carries a filesystem."""
    img, mnt = tmp_path / "d.img", tmp_path / "mnt"
    random_image(img, 64 << 20)
    mnt.mkdir()
    device = "/dev/nbd7"
    proc = subprocess.Popen([AOE, "attach", "--foreground", f"file:{img}", device],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline() if proc.stderr else ""
        assert "attached as /dev/nbd7" in line, line
        run(["mkfs.ext4", "-q", "-F", device])
        run(["mount", device, str(mnt)])
        (mnt / "f").write_bytes(b"over the kernel nbd device")
        run(["umount", str(mnt)])
        run(["fsck.ext4", "-n", "-f", device])
        run([AOE, "detach", device])
        assert proc.wait(30) == 0
    finally:
        umount_quietly(mnt)
        if proc.poll() is None:
            subprocess.run([AOE, "detach", device], capture_output=True)
            time.sleep(1)
            proc.kill()
            proc.wait()
    run(["fsck.ext4", "-n", "-f", str(img)])
