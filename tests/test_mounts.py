"""The mount table reader shared by the target and the exports: a mount point with a
space (written \\040 by the kernel) comes back as it was named, with its device."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from aoe.mounts import mounts

from .support.export import umount_quietly


def test_a_mount_with_a_space_is_found_with_its_device(tmp_path: Path) -> None:
    where = tmp_path / "a dir\twith blanks"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        st = os.stat(where)
        device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        assert (device, str(where)) in mounts()
        assert (device, str(where)) == mounts()[-1]  # the newest comes last
    finally:
        umount_quietly(where)
    assert all(path != str(where) for _, path in mounts())
