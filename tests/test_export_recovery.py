"""`aoe mount` and `aoe nbd` go on serving while their target restarts: killed and started
again during a copy, and away for longer than the dead time (I/O fails meanwhile, then
resumes by itself). No remount, no restart of the export; the data and the filesystem on
top stay whole (fsck clean). A filesystem mounted on top while I/O fails (an outage longer
than the dead time) aborts its journal as on any failing disk, so the long outage happens
between the two loop mounts."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aoe.lab import Host, Lab

from .support.export import run, sha256, umount_quietly
from .support.initiator import AOE_BIN, SHELF, SLOT, start_target, wait_answering, write_image

pytestmark = pytest.mark.netns

SIZE = 96 << 20
ADDR = f"{SHELF}.{SLOT}"
DEAD_TIME = "10"  # well above the time a restart of `aoe serve` takes, even under load


@dataclass
class Outage:
    """A target in a lab host that can be killed and started again on the same image."""

    lab: Lab
    target: Host
    initiator: Host
    t_if: str
    i_if: str
    image: Path
    state: Path
    proc: Any = None

    def start(self) -> None:
        self.proc = start_target("serve", self.target, self.t_if, self.image,
                                 state_dir=self.state, log=self.state.parent / "target.log")
        wait_answering(self.initiator, self.i_if, proc=self.proc)

    def kill(self) -> None:
        self.lab.kill(self.proc)

    def restart_after(self, seconds: float) -> None:
        self.kill()
        time.sleep(seconds)
        self.start()


@pytest.fixture
def outage(lab: Lab, tmp_path: Path) -> Iterator[Outage]:
    target, initiator = lab.host("target"), lab.host("initiator")
    cable = lab.cable(target, initiator, mtu=9000)
    image = tmp_path / "disk.img"
    write_image(image, SIZE, seed=11)
    o = Outage(lab, target, initiator, cable.a_ifname, cable.b_ifname, image,
               tmp_path / "state")
    o.state.mkdir()
    o.start()
    yield o
    o.kill()


def restarts_during(work: Any, o: Outage, times: int = 2) -> Any:
    """Run ``work()`` in a thread while the target is killed and restarted ``times``
    times (away ~0.5 s plus its start-up, inside the dead time); work's result."""
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    t = threading.Thread(target=runner)
    t.start()
    for _ in range(times):
        time.sleep(0.4)
        o.restart_after(0.5)
    t.join(180)
    assert not t.is_alive()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def wait_readable(path: Path, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.pread(fd, 4096, 0)
            finally:
                os.close(fd)
            return
        except OSError as exc:
            assert exc.errno == errno.EIO, exc
            assert time.monotonic() < deadline, "the target did not come back"
            time.sleep(0.2)


def away_longer_than_the_dead_time(o: Outage, disk_file: Path) -> None:
    """Kill the target, see I/O fail (EIO) after the dead time, start it again, see I/O
    work again through the same export."""
    fd = os.open(disk_file, os.O_RDONLY)
    try:
        o.kill()
        with pytest.raises(OSError) as failed:
            os.pread(fd, 4096, 1 << 20)
    finally:
        with contextlib.suppress(OSError):  # the close flushes: EIO too while away
            os.close(fd)
    assert failed.value.errno == errno.EIO
    o.start()
    wait_readable(disk_file)


def make_tree(root: Path) -> None:
    for d in range(8):
        sub = root / f"dir{d}"
        sub.mkdir(parents=True)
        for n in range(25):
            (sub / f"f{n}").write_bytes(os.urandom(1000 + 997 * n))


def tree_sums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_loop_mounted_ext4_over_aoe_mount_survives_restarts(outage: Outage,
                                                          tmp_path: Path) -> None:
    mp, mnt = tmp_path / "mp", tmp_path / "mnt"
    mp.mkdir()
    mnt.mkdir()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(40 << 20))
    tree = tmp_path / "tree"
    make_tree(tree)
    log = tmp_path / "mount.log"
    # private_sysfs=False: the FUSE mount lands in the test's mount namespace
    with open(log, "wb") as log_out:  # the child keeps its own copy of the descriptor
        mount = outage.initiator.popen(
            [AOE_BIN, "mount", "-f", ADDR, str(mp), "-i", outage.i_if, "--dead-time",
             DEAD_TIME, "-v"], private_sysfs=False, stdout=subprocess.DEVNULL, stderr=log_out)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mp):
            assert mount.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        disk_file = mp / "disk"
        run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
             str(disk_file)])
        run(["mount", "-o", "loop", str(disk_file), str(mnt)])

        def copy_big() -> None:
            shutil.copyfile(big, mnt / "big.bin")
            os.sync()

        restarts_during(copy_big, outage)
        assert sha256(mnt / "big.bin") == sha256(big)
        # A filesystem that meets EIO (the long outage below) aborts its journal, as on
        # any disk: it is unmounted meanwhile; the export itself stays up throughout.
        run(["umount", str(mnt)])
        os.sync()

        away_longer_than_the_dead_time(outage, disk_file)

        run(["mount", "-o", "loop", str(disk_file), str(mnt)])

        def copy_tree() -> None:
            shutil.copytree(tree, mnt / "tree")
            os.sync()

        restarts_during(copy_tree, outage)
        assert tree_sums(mnt / "tree") == tree_sums(tree)
        run(["umount", str(mnt)])
        run(["fsck.ext4", "-n", "-f", str(disk_file)])
        assert sha256(disk_file) == sha256(outage.image)  # every write reached the target
        text = log.read_text()
        assert "is back after" in text and "I/O resumes" in text, text
    finally:
        umount_quietly(mnt)
        umount_quietly(mp, fuse=True)
        if mount.poll() is None:
            mount.terminate()
            mount.wait(20)
    # What reached the target's image is the same filesystem. (Its journal may still
    # hold the last transactions: mounting a copy read-write replays it.)
    run(["fsck.ext4", "-n", "-f", str(outage.image)])
    copy = tmp_path / "image-copy.img"
    shutil.copyfile(outage.image, copy)
    run(["mount", "-o", "loop", str(copy), str(mnt)])
    try:
        assert sha256(mnt / "big.bin") == sha256(big)
        assert tree_sums(mnt / "tree") == tree_sums(tree)
    finally:
        umount_quietly(mnt)
    run(["fsck.ext4", "-n", "-f", str(copy)])


def test_aoe_nbd_serves_on_across_restarts(outage: Outage, tmp_path: Path) -> None:
    sock = tmp_path / "aoe.sock"
    nbd = outage.initiator.popen(
        [AOE_BIN, "nbd", ADDR, "--socket", str(sock), "-i", outage.i_if, "--dead-time",
         DEAD_TIME], stderr=subprocess.PIPE, text=True)
    try:
        uri = nbd.stderr.readline().strip() if nbd.stderr else ""
        assert uri.startswith("nbd+unix://"), uri
        out = tmp_path / "out.img"
        restarts_during(lambda: run(["nbdcopy", uri, str(out)], timeout=120), outage)
        assert sha256(out) == sha256(outage.image)

        # away for longer than the dead time: a client gets an error, then the same
        # server works again once the target is back
        outage.kill()
        failed = subprocess.run(["nbdcopy", uri, str(tmp_path / "partial.img")],
                                capture_output=True, text=True, timeout=120, check=False)
        assert failed.returncode != 0
        outage.start()
        deadline = time.monotonic() + 20
        while True:
            again = subprocess.run(["nbdcopy", uri, str(out)], capture_output=True,
                                   text=True, timeout=120, check=False)
            if again.returncode == 0:
                break
            assert time.monotonic() < deadline, again.stderr
            time.sleep(0.5)
        assert sha256(out) == sha256(outage.image)
        src = tmp_path / "src.img"
        write_image(src, SIZE, seed=12)
        restarts_during(lambda: run(["nbdcopy", "--flush", str(src), uri], timeout=120),
                        outage)
        assert sha256(outage.image) == sha256(src)
        assert nbd.poll() is None  # the same server all along
    finally:
        if nbd.poll() is None:
            nbd.terminate()
            nbd.wait(20)
