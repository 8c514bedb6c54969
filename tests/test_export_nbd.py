"""The NBD export with real clients: nbdinfo, nbdcopy, qemu-img, qemu-io, nbdsh and
nbdfuse (as a second way to a loop mount), several at once, plus the `aoe nbd` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aoe.export.blockdev import FileBlockDevice
from aoe.export.nbdserver import NbdServer, serve_nbd

from .support.export import CountFlushes, random_image, run, sha256, umount_quietly

SIZE = 32 << 20
AOE = str(Path(sys.executable).with_name("aoe"))
SYSTEM_PYTHON = "/usr/bin/python3"  # python3-libnbd (nbdsh) lives there


@pytest.fixture
def image(tmp_path: Path) -> Path:
    random_image(tmp_path / "disk.img", SIZE, seed=11)
    return tmp_path / "disk.img"


@pytest.fixture
def server(image: Path, tmp_path: Path) -> Iterator[NbdServer]:
    dev = FileBlockDevice(image)
    with NbdServer(dev, socket_path=tmp_path / "nbd.sock", name="e5.2",
                   description="pyaoe test") as srv:
        srv.start()
        yield srv
    dev.close()


def nbdinfo(uri: str) -> dict[str, object]:
    info = json.loads(run(["nbdinfo", "--json", uri]).stdout)
    (export,) = info["exports"]
    assert info["protocol"] == "newstyle-fixed"
    return dict(export)


def test_nbdinfo_sees_size_and_flags(server: NbdServer) -> None:
    ex = nbdinfo(server.uri)
    assert ex["export-size"] == SIZE and ex["export-name"] == "e5.2"
    assert ex["description"] == "pyaoe test"
    assert ex["can_flush"] and ex["can_fua"] and ex["can_zero"] and ex["can_multi_conn"]
    assert not ex["is_read_only"] and not ex["can_trim"] and not ex["is_rotational"]
    assert (ex["block_size_minimum"], ex["block_size_preferred"]) == (512, 4096)
    assert ex["block_size_maximum"] == 32 << 20
    listing = run(["nbdinfo", "--list", "--json", server.uri]).stdout
    assert [e["export-name"] for e in json.loads(listing)["exports"]] == ["e5.2"]
    default = f"nbd+unix:///?socket={server.socket_path}"  # the empty name works too
    assert run(["nbdinfo", "--size", default]).stdout.strip() == str(SIZE)


def test_nbdcopy_out_and_in_bit_identical(server: NbdServer, image: Path,
                                           tmp_path: Path) -> None:
    out = tmp_path / "out.img"
    run(["nbdcopy", "--connections=4", "--requests=16", server.uri, str(out)])
    assert sha256(out) == sha256(image)
    src = tmp_path / "src.img"
    random_image(src, SIZE, seed=12)
    run(["nbdcopy", "--connections=4", "--flush", str(src), server.uri])
    assert sha256(image) == sha256(src)


def test_qemu_img_and_qemu_io(server: NbdServer, image: Path, tmp_path: Path) -> None:
    info = json.loads(run(["qemu-img", "info", "--output=json", server.uri]).stdout)
    assert info["virtual-size"] == SIZE
    conv = tmp_path / "conv.img"
    run(["qemu-img", "convert", "-O", "raw", server.uri, str(conv)])
    assert sha256(conv) == sha256(image)
    done = run(["qemu-io", "-f", "raw",
                "-c", "write -P 0x5a 1M 192k",
                "-c", "read -P 0x5a 1M 192k",
                "-c", "write -z 4M 1M",
                "-c", "write -P 0x33 -f 6M 4k",  # FUA
                "-c", "flush",
                "-c", "read -P 0 4M 1M", server.uri])
    assert "Pattern verification failed" not in done.stdout + done.stderr
    data = image.read_bytes()
    assert data[1 << 20 : (1 << 20) + 192 * 1024] == b"\x5a" * (192 * 1024)
    assert data[4 << 20 : 5 << 20] == bytes(1 << 20)
    assert data[6 << 20 : (6 << 20) + 4096] == b"\x33" * 4096


def test_flush_from_qemu_reaches_the_device(image: Path, tmp_path: Path) -> None:
    """qemu's flushes end in device.flush() (ATA FLUSH CACHE on an AoE disk); the device
    here has no readinto, so reads take the plain read() path. (Exact FLUSH/FUA counts
    are checked at the protocol level, where the client sends nothing on its own.)"""
    dev = CountFlushes(FileBlockDevice(image))
    try:
        with NbdServer(dev, socket_path=tmp_path / "c.sock") as srv:
            srv.start()
            run(["qemu-io", "-f", "raw", "-c", "write -P 7 0 64k", "-c", "read -P 7 0 64k",
                 srv.uri])
            on_close = dev.flushes  # what qemu-io sends by itself when it closes
            run(["qemu-io", "-f", "raw", "-c", "write -f -P 9 64k 4k", srv.uri])
            fua = dev.flushes - on_close
            run(["qemu-io", "-f", "raw", "-c", "flush", "-c", "flush", srv.uri])
            flushed = dev.flushes - on_close - fua
            assert fua >= 1 and flushed >= 2, (on_close, fua, flushed)
    finally:
        dev.close()
    data = image.read_bytes()
    assert data[:65536] == b"\x07" * 65536 and data[65536:69632] == b"\x09" * 4096


def test_several_clients_at_once(server: NbdServer, image: Path, tmp_path: Path) -> None:
    outs = [tmp_path / f"copy{n}.img" for n in range(4)]
    procs = [subprocess.Popen(["nbdcopy", server.uri, str(o)], stderr=subprocess.PIPE)
             for o in outs]
    procs.append(subprocess.Popen(["qemu-io", "-r", "-f", "raw", "-c", "read 0 16M",
                                   server.uri], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE))
    try:
        codes = [p.wait(120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0] * len(procs)
    want = sha256(image)
    assert all(sha256(o) == want for o in outs)


def test_read_only_export(image: Path, tmp_path: Path) -> None:
    before = sha256(image)
    with FileBlockDevice(image) as dev, NbdServer(dev, socket_path=tmp_path / "ro.sock",
                                                  read_only=True) as srv:
        srv.start()
        assert nbdinfo(srv.uri)["is_read_only"] is True
        src = tmp_path / "src.img"
        random_image(src, 1 << 20, seed=5)
        done = run(["nbdcopy", str(src), srv.uri], check=False)
        assert done.returncode != 0 and "read-only" in done.stderr
        # a client that writes anyway gets the server's EPERM
        probe = [SYSTEM_PYTHON, "-c", "import nbd"]
        if subprocess.run(probe, capture_output=True, check=False).returncode:
            pytest.skip("python3-libnbd (nbdsh) is not installed")
        script = ("h.set_strict_mode(0)\n"
                  "try:\n    h.pwrite(b'x' * 512, 0)\nexcept nbd.Error as e:\n"
                  "    print(e.errno)\n")
        done = run([SYSTEM_PYTHON, "-m", "nbd", "-u", srv.uri, "-c", script])
        assert done.stdout.strip() == "EPERM"
    assert sha256(image) == before


def test_tcp_listener(image: Path) -> None:
    with FileBlockDevice(image) as dev, NbdServer(dev, port=0, name="t") as srv:
        srv.start()
        host, port = srv.address
        assert host == "127.0.0.1" and port > 0
        assert nbdinfo(f"nbd://127.0.0.1:{port}/t")["export-size"] == SIZE


def test_nbdfuse_then_loop_mount(server: NbdServer, image: Path, tmp_path: Path) -> None:
    """Second way to a filesystem: nbdfuse makes a file of the export; loop-mount it."""
    run(["mkfs.ext4", "-q", "-F", str(image)])
    fuse_dir, mnt = tmp_path / "nbdfuse", tmp_path / "mnt"
    fuse_dir.mkdir()
    mnt.mkdir()
    pidfile = tmp_path / "nbdfuse.pid"
    proc = subprocess.Popen(["nbdfuse", "-P", str(pidfile), str(fuse_dir / "disk"),
                             server.uri], stderr=subprocess.PIPE)
    payload = os.urandom(3 << 20)
    try:
        deadline = time.monotonic() + 20
        while not pidfile.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pidfile.exists(), proc.stderr.read() if proc.stderr else ""
        run(["mount", "-o", "loop", str(fuse_dir / "disk"), str(mnt)])
        (mnt / "payload").write_bytes(payload)
        (mnt / "dir").mkdir()
        (mnt / "dir" / "small").write_text("over nbdfuse\n")
        run(["umount", str(mnt)])
    finally:
        umount_quietly(mnt)
        umount_quietly(fuse_dir, fuse=True)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    run(["fsck.ext4", "-n", "-f", str(image)])
    run(["mount", "-o", "loop,ro", str(image), str(mnt)])
    try:
        assert (mnt / "payload").read_bytes() == payload
        assert (mnt / "dir" / "small").read_text() == "over nbdfuse\n"
    finally:
        umount_quietly(mnt)


def test_aoe_nbd_command(image: Path, tmp_path: Path) -> None:
    sock = tmp_path / "cli.sock"
    proc = subprocess.Popen([AOE, "nbd", f"file:{image}", "--socket", str(sock)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        uri = proc.stderr.readline().strip() if proc.stderr else ""
        assert uri == f"nbd+unix:///disk.img?socket={sock}"
        assert nbdinfo(uri)["export-size"] == SIZE
        out = tmp_path / "o.img"
        run(["nbdcopy", uri, str(out)])
        assert sha256(out) == sha256(image)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 143  # 128 + SIGTERM, as a shell reports it
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_aoe_nbd_command_errors(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    img.write_bytes(bytes(4096))
    for argv, words in [
        ([f"file:{img}"], "exactly one of --socket"),
        (["1-2", "--port", "0"], "not SHELF.SLOT"),
        ([f"file:{tmp_path / 'missing'}", "--port", "0"], "cannot open"),
        ([f"file:{img}", "--socket", str(tmp_path / "no" / "s")], "cannot listen"),
    ]:
        done = run([AOE, "nbd", *argv], check=False, timeout=30)
        assert done.returncode != 0 and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_a_signal_as_soon_as_the_socket_listens_stops_cleanly(image: Path,
                                                               tmp_path: Path) -> None:
    """The stop handlers are in place before the socket listens: a SIGINT sent the moment
    a client could connect ends the server with that signal, never a KeyboardInterrupt
    (which `aoe nbd` reported as "Aborted!" with status 1)."""
    sock = tmp_path / "early.sock"
    dev = FileBlockDevice(image)
    try:
        got = serve_nbd(dev, socket_path=sock,
                        ready=lambda _srv: os.kill(os.getpid(), signal.SIGINT))
    finally:
        dev.close()
    assert got == signal.SIGINT
    assert not sock.exists()
