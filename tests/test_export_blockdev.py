"""FileBlockDevice: the local-file block device every export is tested on."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from aoe.export.blockdev import BlockDevice, FileBlockDevice, error_number
from aoe.export.source import SourceError, open_source, parse_source


def test_read_write_flush_roundtrip(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(range(256)) * 64)  # 16 KiB
    with FileBlockDevice(img) as dev:
        assert isinstance(dev, BlockDevice)
        assert dev.size == 16384 and not dev.read_only
        assert dev.read(0, 4) == b"\x00\x01\x02\x03"
        assert dev.read(1000, 7) == bytes((1000 + i) % 256 for i in range(7))
        dev.write(513, b"hello")  # unaligned is fine on a file
        dev.flush()
        assert dev.read(510, 10) == bytes([254, 255, 0]) + b"hello" + bytes([6, 7])
    assert img.read_bytes()[513:518] == b"hello"


def test_ranges_outside_the_disk_are_refused(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    with FileBlockDevice(img) as dev:
        for offset, length in [(4095, 2), (-1, 1), (5000, 0)]:
            with pytest.raises(OSError) as info:
                dev.read(offset, length)
            assert info.value.errno == errno.EINVAL
        with pytest.raises(OSError):
            dev.write(4000, bytes(100))
        assert dev.read(4096, 0) == b""


def test_read_only_device_refuses_writes(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(b"x" * 1024)
    with FileBlockDevice(img, read_only=True) as dev:
        assert dev.read_only
        with pytest.raises(OSError) as info:
            dev.write(0, b"y")
        assert info.value.errno == errno.EROFS
        dev.flush()  # nothing to flush, but allowed
    assert img.read_bytes() == b"x" * 1024


def test_concurrent_writers_land_where_they_belong(tmp_path: Path) -> None:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(64 * 4096))
    with FileBlockDevice(img) as dev:
        def writer(n: int) -> None:
            for k in range(n, 64, 8):
                dev.write(k * 4096, bytes([k]) * 4096)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k in range(64):
            assert dev.read(k * 4096, 4096) == bytes([k]) * 4096


def test_error_number_prefers_the_exception_errno() -> None:
    class Carries(Exception):
        errno = errno.EROFS

    assert error_number(OSError(errno.ENOSPC, "full")) == errno.ENOSPC
    assert error_number(Carries("ro")) == errno.EROFS
    assert error_number(ValueError("x")) == errno.EIO


def test_disk_names_parse_or_explain() -> None:
    assert parse_source("1.2").label == "e1.2"
    assert parse_source("e65534.254") .shelf == 65534
    assert parse_source("file:/tmp/x.img").path == "/tmp/x.img"
    assert parse_source("file:/tmp/x.img").label == "x.img"
    for bad in ["1", "a.b", "1.255", "65535.0", "file:", "1.2.3"]:
        with pytest.raises(SourceError):
            parse_source(bad)


def test_open_source_reports_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot open"):
        open_source(parse_source(f"file:{tmp_path / 'nope.img'}"))
    img = tmp_path / "ok.img"
    img.write_bytes(bytes(512))
    dev = open_source(parse_source(f"file:{img}"), read_only=True)
    try:
        assert dev.size == 512 and dev.read_only
    finally:
        dev.close()
    assert not os.path.exists(tmp_path / "nope.img")
