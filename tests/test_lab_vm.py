"""The qemu guest harness itself (aoe.lab.vm): module order, the initramfs, and that a guest
that overruns its time is killed with its tap removed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from aoe.lab import Lab
from aoe.lab.vm import (
    Guest,
    VmError,
    VmUnavailable,
    build_initramfs,
    find_busybox,
    find_kernel,
    hidden_by_scratch,
    module_depends,
)

from .support.vm import require_vm


def test_a_missing_kernel_names_the_setup_script(tmp_path: Path) -> None:
    with pytest.raises(VmUnavailable, match=r"scripts/setup\.sh"):
        find_kernel(tmp_path)


def test_modules_come_after_what_they_depend_on() -> None:
    require_vm()
    kernel = find_kernel()
    order = [p.name[:-3] for p in kernel.with_dependencies(["ext4", "9p"])]
    assert order.index("jbd2") < order.index("ext4")
    assert order.index("mbcache") < order.index("ext4")
    assert order.index("9pnet") < order.index("9p")
    ext4 = kernel.module_paths()["ext4"]
    assert {"jbd2", "mbcache"} <= set(module_depends(ext4))
    with pytest.raises(VmUnavailable, match="no module"):
        kernel.with_dependencies(["no_such_module"])


def test_initramfs_is_a_cpio_archive_busybox_can_read(tmp_path: Path) -> None:
    require_vm()
    archive = build_initramfs({"init": (b"#!/bin/sh\n", 0o755), "a/b/c.txt": b"hello"})
    (tmp_path / "x.cpio").write_bytes(archive)
    out = tmp_path / "out"
    out.mkdir()
    with (tmp_path / "x.cpio").open("rb") as f:
        subprocess.run([str(find_busybox()), "cpio", "-id"], stdin=f, cwd=out, check=True,
                       capture_output=True, timeout=30)
    assert (out / "a/b/c.txt").read_bytes() == b"hello"
    assert os.access(out / "init", os.X_OK)


def test_only_paths_under_the_guests_scratch_dirs_are_held_aside() -> None:
    assert hidden_by_scratch(["/tmp/ci/clone", "/run/x", "/var/tmp/y", "/work/main",
                              "/tmp", "/tmpx/z", "/tmp/ci/clone"]) == [
        "/run/x", "/tmp/ci/clone", "/var/tmp/y"]


@pytest.mark.vm
@pytest.mark.netns
def test_a_checkout_under_tmp_is_seen_by_the_guest(tmp_path: Path) -> None:
    """A checkout under /tmp (as CI may clone it) stays visible under the guest's own
    tmpfs on /tmp; what the guest writes there stays in the guest."""
    require_vm()
    (tmp_path / "marker").write_text("from the host\n")
    leak = Path(f"/tmp/pyaoe-guest-only-{os.getpid()}")
    with Lab("aoevm-") as lab, Guest(lab.host("target"), keep=[str(tmp_path)]) as guest:
        result = guest.run(f"echo @@marker=$(cat {tmp_path}/marker)\n"
                           f"echo guest > {leak}; echo @@wrote=$?\n", timeout=120)
    assert result.mark("marker") == "from the host"
    assert result.mark("wrote") == "0" and not leak.exists()


@pytest.mark.vm
@pytest.mark.netns
def test_a_guest_that_overruns_is_killed_and_its_tap_removed() -> None:
    require_vm()
    with Lab("aoevm-") as lab:
        host = lab.host("target")
        with Guest(host) as guest:
            tap = guest.tap
            assert tap in host.run(["ip", "-br", "link"]).stdout
            with pytest.raises(VmError, match="script timed out after 3s"):
                guest.run("echo @@started=1; sleep 600\n", timeout=3)
            assert guest._proc is None  # killed and reaped by the harness
        assert tap not in host.run(["ip", "-br", "link"]).stdout
        gone = subprocess.run(["pgrep", "-f", f"ifname={tap},"], capture_output=True,
                              text=True, check=False)
        assert gone.stdout == "", f"qemu still running: {gone.stdout}"
