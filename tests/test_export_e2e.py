"""The exports over real AoE: a target (`aoe serve` or vblade) in one namespace, the
initiator and the export on the other side, real clients on the export.

The FUSE mount lives in the test's own mount namespace (the initiator's sockets belong to
the lab namespace, the mount does not), so mkfs, loop mounts and fsck run as usual.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aoe.export import nbdproto as p
from aoe.export.fuse import mounted
from aoe.export.nbdserver import NbdServer
from aoe.initiator import AoeDisk
from aoe.lab import Lab

from .support.export import CountFlushes, RawNbd, random_image, run, sha256, umount_quietly
from .support.initiator import SHELF, SLOT, Rig, make_rig
from .test_export_fuse import AOE, check_files, ext4_roundtrip, wait_mounted

SIZE = 64 << 20


@pytest.fixture(params=["serve", "vblade"])
def rig(request: pytest.FixtureRequest, lab: Lab, tmp_path: Path) -> Rig:
    return make_rig(lab, request.param, tmp_path, mtu=9000, size=SIZE)


@pytest.fixture
def serve_rig(lab: Lab, tmp_path: Path) -> Rig:
    return make_rig(lab, "serve", tmp_path, mtu=9000, size=SIZE)


def test_ext4_through_fuse_over_aoe(rig: Rig, tmp_path: Path) -> None:
    mp, mnt = tmp_path / "mp", tmp_path / "mnt"
    mp.mkdir()
    mnt.mkdir()
    disk = CountFlushes(rig.open())
    try:
        with mounted(disk, mp) as disk_file:
            assert os.stat(disk_file).st_size == SIZE
            sums = ext4_roundtrip(disk_file, mnt)
    finally:
        umount_quietly(mnt)
        umount_quietly(mp, fuse=True)
        disk.close()
    assert disk.flushes > 0  # mkfs and the loop device fsync the file
    if rig.kind == "serve":  # and the target saw them as ATA FLUSH CACHE
        target = rig.procs[0]
        target.send_signal(signal.SIGTERM)
        target.wait(20)
        log = (tmp_path / "target0.log").read_text()
        m = re.search(r"flushes=(\d+)", log)
        assert m and int(m.group(1)) > 0, log
    check_files(rig.image, mnt, sums)


class SubmitThreads:
    """An AoE disk that notes which threads hand it requests without waiting."""

    def __init__(self, disk: AoeDisk) -> None:
        self.disk = disk
        self.names: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.disk, name)

    def submit_read(self, *args: Any) -> bool:
        self.names.add(threading.current_thread().name)
        return self.disk.submit_read(*args)

    def submit_write(self, *args: Any) -> bool:
        self.names.add(threading.current_thread().name)
        return self.disk.submit_write(*args)


def test_nbdcopy_over_aoe_bit_identical(rig: Rig, tmp_path: Path) -> None:
    """Four connections at once, each read on the AoE session's own I/O thread."""
    disk = SubmitThreads(rig.open())
    try:
        with NbdServer(disk, socket_path=tmp_path / "aoe.sock",  # type: ignore[arg-type]
                       name="e5.2") as srv:
            srv.start()
            out = tmp_path / "out.img"
            run(["nbdcopy", "--connections=4", srv.uri, str(out)], timeout=120)
            assert out.read_bytes() == rig.data
            src = tmp_path / "src.img"
            random_image(src, SIZE, seed=77)
            run(["nbdcopy", "--connections=4", "--flush", str(src), srv.uri], timeout=120)
    finally:
        disk.close()
    assert sha256(rig.image) == sha256(src)
    assert disk.names == {f"aoe-{SHELF}.{SLOT}"}  # the session's I/O thread, only


def test_aoe_mount_and_aoe_nbd_commands(serve_rig: Rig, tmp_path: Path) -> None:
    """The commands as a user runs them, on the initiator host."""
    rig = serve_rig
    mp = tmp_path / "mp"
    mp.mkdir()
    iface = ["-i", rig.ifaces[0]]
    # private_sysfs=False: the FUSE mount must land in the test's mount namespace
    mount = rig.initiator.popen([AOE, "mount", "-f", f"{SHELF}.{SLOT}", str(mp), *iface],
                                private_sysfs=False, stderr=subprocess.PIPE, text=True)
    try:
        wait_mounted(mp, mount)
        assert sha256(mp / "disk") == sha256(rig.image)
        with open(mp / "disk", "r+b") as f:
            f.seek(SIZE - 4096)
            f.write(b"end of the disk".ljust(4096, b"."))
            os.fsync(f.fileno())
        mount.send_signal(signal.SIGTERM)
        assert mount.wait(30) == 143  # 128 + SIGTERM
        assert not os.path.ismount(mp)
    finally:
        if mount.poll() is None:
            mount.kill()
            mount.wait()
        umount_quietly(mp, fuse=True)
    assert rig.image.read_bytes()[SIZE - 4096 :] == b"end of the disk".ljust(4096, b".")

    sock = tmp_path / "cli.sock"
    nbd = rig.initiator.popen([AOE, "nbd", f"{SHELF}.{SLOT}", "--socket", str(sock), *iface],
                              stderr=subprocess.PIPE, text=True)
    try:
        uri = nbd.stderr.readline().strip() if nbd.stderr else ""
        assert uri == f"nbd+unix:///e{SHELF}.{SLOT}?socket={sock}"
        out = tmp_path / "out.img"
        run(["nbdcopy", uri, str(out)], timeout=120)
        assert sha256(out) == sha256(rig.image)
        nbd.send_signal(signal.SIGINT)
        assert nbd.wait(30) == 130  # 128 + SIGINT
    finally:
        if nbd.poll() is None:
            nbd.kill()
            nbd.wait()


def test_missing_target_is_a_clear_error(serve_rig: Rig, tmp_path: Path) -> None:
    rig = serve_rig
    mp = tmp_path / "mp"
    mp.mkdir()
    done = rig.initiator.run([AOE, "mount", "-f", "--timeout", "0.5", f"{SHELF}.99", str(mp),
                              "-i", rig.ifaces[0]], check=False, private_sysfs=False)
    assert done.returncode == 1 and "no answer from AoE target" in done.stderr
    assert "Traceback" not in done.stderr and not os.path.ismount(mp)


def test_nbd_client_that_stops_reading_blocks_nobody(serve_rig: Rig, tmp_path: Path) -> None:
    """Replies are sent from the AoE session's thread without waiting: a client that
    leaves 32 MiB of replies unread holds up neither the session nor another client, and
    gets every reply intact once it reads."""
    rig = serve_rig
    disk = rig.open()
    try:
        with NbdServer(disk, socket_path=tmp_path / "aoe.sock") as srv:
            srv.start()
            slow, quick = RawNbd.unix(str(srv.socket_path)), RawNbd.unix(str(srv.socket_path))
            try:
                for c in (slow, quick):
                    c.greeting()
                    assert c.go()[-1][0] == p.REP_ACK
                chunk = 1 << 20
                for cookie in range(32):
                    slow.request(p.CMD_READ, cookie, cookie * chunk, chunk)
                time.sleep(0.5)  # far more than the socket holds is now waiting
                for cookie in range(100, 120):
                    offset = (cookie * 7919 % 8000) * 4096
                    quick.request(p.CMD_READ, cookie, offset, 4096)
                    assert quick.simple_reply(4096) == (0, cookie,
                                                        rig.data[offset : offset + 4096])
                seen = set()
                for _ in range(32):
                    error, cookie, data = slow.simple_reply(chunk)
                    assert error == 0 and data == rig.data[cookie * chunk : (cookie + 1) * chunk]
                    seen.add(cookie)
                assert seen == set(range(32))
            finally:
                slow.close()
                quick.close()
    finally:
        disk.close()


def test_nbd_requests_fail_cleanly_when_the_target_dies(serve_rig: Rig, tmp_path: Path) -> None:
    """Requests in flight when the target goes silent, and those sent after, get EIO
    replies (from the session's failure, through the completion path); the connection
    and the server stay usable and close promptly."""
    rig = serve_rig
    disk = rig.open(dead_timeout=1.0)
    try:
        with NbdServer(disk, socket_path=tmp_path / "aoe.sock") as srv:
            srv.start()
            c = RawNbd.unix(str(srv.socket_path))
            try:
                c.greeting()
                assert c.go()[-1][0] == p.REP_ACK
                c.request(p.CMD_READ, 1, 0, 65536)
                assert c.simple_reply(65536) == (0, 1, rig.data[:65536])
                rig.kill_targets()
                started = time.monotonic()
                c.request(p.CMD_READ, 2, 1 << 20, 65536)
                c.request(p.CMD_WRITE, 3, 2 << 20, 4096, data=b"w" * 4096)
                replies = {c.simple_reply(65536)[:2] for _ in range(2)}
                assert replies == {(p.EIO, 2), (p.EIO, 3)}
                assert time.monotonic() - started < 10
                c.request(p.CMD_READ, 4, 0, 4096)  # the session has failed: at once
                assert c.simple_reply(4096)[:2] == (p.EIO, 4)
            finally:
                c.close()
    finally:
        disk.close()


def test_fuse_reads_ahead_but_never_returns_old_data(serve_rig: Rig, tmp_path: Path) -> None:
    """A sequential reader makes the FUSE file start the next pieces early; a write through
    the file must still be what the next read of those bytes returns."""
    mib = 1 << 20
    mp = tmp_path / "mp"
    mp.mkdir()
    disk = serve_rig.open()
    started: list[int] = []
    submit = disk.submit_read

    def counting(offset: int, buf: memoryview, on_done: Callable[..., None]) -> bool:
        started.append(offset)
        return submit(offset, buf, on_done)

    disk.submit_read = counting  # type: ignore[method-assign]
    image = serve_rig.data
    new = os.urandom(mib)
    try:
        with mounted(disk, mp, cache="none") as disk_file:
            fd = os.open(disk_file, os.O_RDWR)
            try:
                for offset in range(0, 4 * mib, mib):
                    assert os.pread(fd, mib, offset) == image[offset:offset + mib]
                assert 4 * mib in started  # the next piece was on its way before asked for
                assert os.pwrite(fd, new, 4 * mib) == mib
                assert os.pread(fd, mib, 4 * mib) == new
                assert os.pread(fd, mib, 5 * mib) == image[5 * mib:6 * mib]
            finally:
                os.close(fd)
            expected = image[:4 * mib] + new + image[5 * mib:]
            assert sha256(disk_file) == hashlib.sha256(expected).hexdigest()
    finally:
        umount_quietly(mp, fuse=True)
        disk.close()
    assert serve_rig.image.read_bytes()[4 * mib:5 * mib] == new
