"""The FUSE export over a local image: a filesystem made on the file and loop-mounted,
flushes reaching the device, read-only mounts, concurrency, and `aoe mount`."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aoe.export.blockdev import FileBlockDevice
from aoe.export.fuse import mounted

from .support.export import random_image, run, sha256, terminal_signals, umount_quietly

AOE = str(Path(sys.executable).with_name("aoe"))


class CountingDevice(FileBlockDevice):
    """A file device that counts flushes, to see fsync reach the device."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def ext4_roundtrip(disk_file: str, mnt: Path) -> dict[str, str]:
    """mkfs.ext4 on the file, loop-mount it, write files, unmount, fsck -n: the
    checksums of what was written."""
    run(["mkfs.ext4", "-q", "-F", disk_file])
    run(["mount", "-o", "loop", disk_file, str(mnt)])
    sums = {}
    try:
        for n, size in enumerate([1, 4096, 123457, 3 << 20]):
            path = mnt / f"file{n}"
            path.write_bytes(os.urandom(size))
            sums[path.name] = sha256(path)
        (mnt / "sub").mkdir()
        (mnt / "sub" / "note").write_text("written through FUSE\n")
        sums["sub/note"] = sha256(mnt / "sub" / "note")
        run(["umount", str(mnt)])
    finally:
        umount_quietly(mnt)
    run(["fsck.ext4", "-n", "-f", disk_file])
    return sums


def check_files(image: Path, mnt: Path, sums: dict[str, str]) -> None:
    """Loop-mount the backing image itself, read-only, and compare checksums."""
    run(["fsck.ext4", "-n", "-f", str(image)])
    run(["mount", "-o", "loop,ro", str(image), str(mnt)])
    try:
        assert {name: sha256(mnt / name) for name in sums} == sums
    finally:
        umount_quietly(mnt)


def test_ext4_on_the_fuse_file(tmp_path: Path) -> None:
    image, mp, mnt = tmp_path / "disk.img", tmp_path / "mp", tmp_path / "mnt"
    image.write_bytes(b"")
    os.truncate(image, 64 << 20)
    mp.mkdir()
    mnt.mkdir()
    dev = CountingDevice(image)
    try:
        with mounted(dev, mp) as disk_file:
            assert os.listdir(mp) == ["disk"]
            assert os.stat(disk_file).st_size == 64 << 20
            sums = ext4_roundtrip(disk_file, mnt)
            assert dev.flushes > 0  # mkfs and the loop device fsync the file
        assert not os.path.ismount(mp)
    finally:
        umount_quietly(mnt)
        umount_quietly(mp, fuse=True)
        dev.close()
    check_files(image, mnt, sums)


def test_file_io_semantics_and_flush(tmp_path: Path) -> None:
    image, mp = tmp_path / "disk.img", tmp_path / "mp"
    data = random_image(image, 1 << 20, seed=4)
    mp.mkdir()
    dev = CountingDevice(image)
    try:
        with mounted(dev, mp, name="e1.2") as f:
            assert f == str(mp / "e1.2")
            fd = os.open(f, os.O_RDWR)
            try:
                assert os.pread(fd, 100, 1001) == data[1001:1101]
                assert os.pread(fd, 4096, (1 << 20) - 10) == data[-10:]  # short at the end
                assert os.pread(fd, 10, 1 << 20) == b""
                assert os.pwrite(fd, b"unaligned", 777) == 9
                assert os.pwrite(fd, b"0123456789", (1 << 20) - 4) == 4  # short write
                with pytest.raises(OSError) as info:
                    os.pwrite(fd, b"x", 1 << 20)
                assert info.value.errno == errno.ENOSPC
                before = dev.flushes
                os.fsync(fd)
                assert dev.flushes == before + 1
            finally:
                os.close(fd)
            reads_only = dev.flushes
            with open(f, "rb") as r:  # closing after reads only: no flush
                r.read(10)
            assert dev.flushes == reads_only
            with open(f, "r+b") as w:  # closing a written file: flush
                w.write(b"W")
            assert dev.flushes == reads_only + 1
            # O_TRUNC is ignored like on a block device: dd works without conv=notrunc
            run(["dd", "if=/dev/zero", f"of={f}", "bs=4k", "count=1", "status=none"])
            assert os.stat(f).st_size == 1 << 20
    finally:
        umount_quietly(mp, fuse=True)
        dev.close()
    now = image.read_bytes()
    assert now[:4096] == bytes(4096)
    assert now[4096:] == (data[:777] + b"unaligned" + data[786:])[4096:-4] + b"0123"


def test_read_only_mount(tmp_path: Path) -> None:
    image, mp, mnt = tmp_path / "disk.img", tmp_path / "mp", tmp_path / "mnt"
    image.write_bytes(b"")
    os.truncate(image, 16 << 20)
    run(["mkfs.ext4", "-q", "-F", str(image)])
    before = sha256(image)
    mp.mkdir()
    mnt.mkdir()
    dev = FileBlockDevice(image, read_only=True)  # a read-only device: the mount follows
    try:
        with mounted(dev, mp) as f:
            assert os.stat(f).st_mode & 0o777 == 0o444
            with pytest.raises(OSError) as info:
                os.open(f, os.O_RDWR)
            assert info.value.errno in (errno.EROFS, errno.EACCES)
            run(["mount", "-o", "loop,ro", f, str(mnt)])
            assert os.listdir(mnt) == ["lost+found"]
            run(["umount", str(mnt)])
    finally:
        umount_quietly(mnt)
        umount_quietly(mp, fuse=True)
        dev.close()
    assert sha256(image) == before


class GatedDevice(FileBlockDevice):
    """Reads at offset 0 wait for a gate: another read must finish meanwhile."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.arrived = threading.Event()
        self.gate = threading.Event()

    def _wait(self, offset: int) -> None:
        if offset == 0:
            self.arrived.set()
            assert self.gate.wait(20), "gate never opened"

    def read(self, offset: int, length: int) -> bytes:
        self._wait(offset)
        return super().read(offset, length)

    def readinto(self, offset: int, buf: bytearray | memoryview) -> int:
        self._wait(offset)
        return super().readinto(offset, buf)


@pytest.mark.parametrize("cache", ["none", "open"])
def test_requests_are_served_concurrently(tmp_path: Path, cache: str) -> None:
    image, mp = tmp_path / "disk.img", tmp_path / "mp"
    data = random_image(image, 4 << 20, seed=8)
    mp.mkdir()
    dev = GatedDevice(image)
    got: list[bytes] = []
    try:
        with mounted(dev, mp, cache=cache) as f:
            fd = os.open(f, os.O_RDONLY)
            try:
                stalled = threading.Thread(target=lambda: got.append(os.pread(fd, 4096, 0)))
                stalled.start()
                assert dev.arrived.wait(20)  # the first read now waits inside the device
                assert os.pread(fd, 4096, 2 << 20) == data[2 << 20 : (2 << 20) + 4096]
            finally:
                dev.gate.set()
                stalled.join(20)
                os.close(fd)
    finally:
        dev.gate.set()
        umount_quietly(mp, fuse=True)
        dev.close()
    assert got == [data[:4096]]


def test_cleanup_with_a_file_left_open(tmp_path: Path) -> None:
    """A test that leaks an open file must not hang the process: the mount goes away
    and its connection is aborted, so the leaked descriptor fails instead of waiting."""
    image, mp = tmp_path / "disk.img", tmp_path / "mp"
    random_image(image, 1 << 20)
    mp.mkdir()
    dev = FileBlockDevice(image)
    fd = -1
    try:
        with mounted(dev, mp) as f:
            fd = os.open(f, os.O_RDWR)
            os.pwrite(fd, b"x", 0)  # dirty: closing it would need the server
        assert not os.path.ismount(mp)
        with pytest.raises(OSError) as info:
            os.pread(fd, 1, 0)
        assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO)
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):  # closing reports the lost connection too
                os.close(fd)
        umount_quietly(mp, fuse=True)
        dev.close()


def wait_mounted(path: Path, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + 20
    while not os.path.ismount(path):
        assert proc is None or proc.poll() is None, "aoe mount exited"
        assert time.monotonic() < deadline, "mount did not appear"
        time.sleep(0.05)


def test_aoe_mount_daemon(tmp_path: Path) -> None:
    image, mp = tmp_path / "disk.img", tmp_path / "mp"
    data = random_image(image, 2 << 20, seed=9)
    mp.mkdir()
    pid = None
    try:
        done = run([AOE, "mount", f"file:{image}", str(mp)], timeout=30)
        m = re.search(r"\(pid (\d+)\)", done.stdout)
        assert m, done.stdout
        pid = int(m.group(1))
        assert os.path.ismount(mp)
        assert (mp / "disk").read_bytes() == data
        with open(mp / "disk", "r+b") as f:
            f.write(b"daemon")
        # (--cached, the flag of 0.1.0, is still understood: the refusal is the mount's)
        again = run([AOE, "mount", "--cached", f"file:{image}", str(mp)], check=False)
        assert again.returncode == 2 and "already a mount point" in again.stderr
        run(["fusermount3", "-u", str(mp)])
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}"), "the daemon outlived its mount"
        pid = None
    finally:
        umount_quietly(mp, fuse=True)
        if pid is not None and os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)
    assert image.read_bytes()[:6] == b"daemon"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_aoe_mount_foreground_unmounts_on_signal(tmp_path: Path, sig: int) -> None:
    image, mp = tmp_path / "disk.img", tmp_path / "mp"
    random_image(image, 1 << 20)
    mp.mkdir()
    proc = subprocess.Popen([AOE, "mount", "--foreground", f"file:{image}", str(mp)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=terminal_signals)  # noqa: PLW1509 - only signal()
    try:
        wait_mounted(mp, proc)
        proc.send_signal(sig)
        assert proc.wait(20) == 128 + sig  # the shell's status for a signal
        assert not os.path.ismount(mp)
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        umount_quietly(mp, fuse=True)


def test_aoe_mount_errors(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    img.write_bytes(bytes(4096))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([f"file:{tmp_path / 'missing.img'}", str(empty)], 1, "cannot open"),
        ([f"file:{img}", str(tmp_path / "nodir")], 2, "does not exist (create it"),
        ([f"file:{img}", str(img)], 2, "is a file"),
        ([f"file:{img}", str(tmp_path)], 2, "is not empty: the mount would hide its files"),
        ([f"file:{img}", str(empty), "--name", "a/b"], 2, "plain file name"),
        (["7", str(empty)], 2, "SHELF.SLOT"),
    ]
    for argv, code, words in cases:
        done = run([AOE, "mount", *argv], check=False, timeout=30)
        assert done.returncode == code and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not os.path.ismount(tmp_path)


def test_libfuse_is_loaded_by_soname_without_a_library_search() -> None:
    """mfusepy's own search for libfuse runs ldconfig in a subprocess (30 ms of every
    mount's start); the export names the library by its soname instead."""
    probe = (
        "import ctypes.util, os\n"
        "def no_search(name):\n"
        "    raise AssertionError('find_library(%r) was called' % name)\n"
        "ctypes.util.find_library = no_search\n"
        "from aoe.export.fuse import _load_mfusepy\n"
        "m = _load_mfusepy()\n"
        "print(os.environ['FUSE_LIBRARY_PATH'], m._libfuse._name)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSE_LIBRARY")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    named, loaded = done.stdout.split()
    assert named == loaded and named in ("libfuse.so.2", "libfuse3.so.3")


@pytest.mark.parametrize("cache", ["open", "keep", "none"])
def test_cache_modes_and_what_another_writer_shows(tmp_path: Path, cache: str) -> None:
    """A write made past the mount (another machine) shows at the next open with the
    default cache mode, at once without a cache, and not while a kept cache holds the
    bytes; a caching mount reads ahead 4 MiB, a direct one leaves the kernel's window.
    The mount point is named through a symlink: finding the mount's window must not stat
    the mount while it waits for its own init (that hung)."""
    image, mp = tmp_path / "disk.img", tmp_path / "mp"
    data = random_image(image, 8 << 20, seed=9)
    mp.mkdir()
    (tmp_path / "via").symlink_to(mp)
    dev = FileBlockDevice(image)
    try:
        with mounted(dev, tmp_path / "via", cache=cache) as f:
            st = os.stat(f)
            window = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
                          "/read_ahead_kb").read_text().strip()
            assert window == ("128" if cache == "none" else "4096")
            fd = os.open(f, os.O_RDONLY)
            try:
                assert os.pread(fd, 4096, 0) == data[:4096]
                new = os.urandom(4096)
                with open(image, "r+b") as other:  # the other writer
                    other.write(new)
                assert os.pread(fd, 4096, 0) == (new if cache == "none" else data[:4096])
            finally:
                os.close(fd)
            with open(f, "rb") as again:
                assert again.read(4096) == (data[:4096] if cache == "keep" else new)
    finally:
        umount_quietly(mp, fuse=True)
        dev.close()
