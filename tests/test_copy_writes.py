"""`aoe copy` output: few large writes at their offsets, zero blocks left as holes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aoe.initiator import copy as copy_mod
from aoe.initiator.copy import HOLE_BLOCK, copy_from_disk


class MemDisk:
    size: int

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    def write(self, offset: int, data: bytes | memoryview) -> None:
        raise AssertionError("not written in this test")

    def flush(self) -> None:
        pass


def test_one_write_per_run_of_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = os.urandom(HOLE_BLOCK)
    zero = bytes(HOLE_BLOCK)
    # chunk 1: data data zero data; chunk 2: zero zero (a trailing hole)
    data = block * 2 + zero + block + zero * 2
    calls: list[tuple[int, int]] = []
    real = os.pwrite

    def counting(fd: int, buf: memoryview, pos: int) -> int:
        calls.append((pos, len(buf)))
        return real(fd, buf, pos)

    monkeypatch.setattr(copy_mod.os, "pwrite", counting)
    out = tmp_path / "out.img"
    with open(out, "wb") as f:
        f.write(b"x" * 10)  # buffered by the file object: must land before the copy
        res = copy_from_disk(MemDisk(data), f, chunk=4 * HOLE_BLOCK)
    assert calls == [(10, 2 * HOLE_BLOCK), (10 + 3 * HOLE_BLOCK, HOLE_BLOCK)]
    assert res.holes == 3 * HOLE_BLOCK
    assert out.read_bytes() == b"x" * 10 + data
    assert os.stat(out).st_blocks * 512 < len(data)  # the zero blocks are holes


def test_no_sparse_writes_every_byte_in_one_call_per_chunk(tmp_path: Path) -> None:
    data = bytes(3 * HOLE_BLOCK) + os.urandom(HOLE_BLOCK)
    out = tmp_path / "full.img"
    with open(out, "wb") as f:
        res = copy_from_disk(MemDisk(data), f, sparse=False, chunk=2 * HOLE_BLOCK)
    assert res.holes == 0 and out.read_bytes() == data
    assert os.stat(out).st_blocks * 512 >= len(data)


def test_a_block_zero_but_for_its_last_byte_is_data(tmp_path: Path) -> None:
    almost = bytearray(HOLE_BLOCK)
    almost[-1] = 1  # its first bytes are zero: decided by the whole-block comparison
    short_zero = bytes(HOLE_BLOCK // 2)  # a last block shorter than HOLE_BLOCK
    data = bytes(almost) + bytes(HOLE_BLOCK) + short_zero
    out = tmp_path / "out.img"
    with open(out, "wb") as f:
        res = copy_from_disk(MemDisk(data), f, chunk=4 * HOLE_BLOCK)
    assert res.holes == HOLE_BLOCK + len(short_zero)
    assert out.read_bytes() == data
    view = memoryview(data)
    assert not copy_mod._is_zero(view, 0, HOLE_BLOCK)
    assert copy_mod._is_zero(view, HOLE_BLOCK, 2 * HOLE_BLOCK)
    assert copy_mod._is_zero(view, 2 * HOLE_BLOCK, len(data))
    assert not copy_mod._is_zero(view, HOLE_BLOCK - 8, HOLE_BLOCK + 8)
