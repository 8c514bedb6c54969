"""Initiator logic that needs no network: RTT/RTO and window arithmetic, the sector range
lock, size parsing, and the copy pipeline on an in-memory block device."""

from __future__ import annotations

import io
import json
import random
import threading
import time
from pathlib import Path

import click
import pytest

from aoe.initiator.cli import SizeType, human_size
from aoe.initiator.copy import VerifyError, copy_from_disk, copy_to_disk
from aoe.initiator.discovery import PathInfo, TargetInfo
from aoe.initiator.disk import _RangeLock
from aoe.initiator.window import INITIAL_WINDOW, MacBudget, PathWindow


class _Port:
    """Just what PathWindow reads from a port."""

    ifname = "eth0"
    mac = b"\x02\x00\x00\x00\x00\x01"


def make_path(buffers: int = 16, rtt: float = 0.001) -> PathWindow:
    return PathWindow(0, _Port(), b"\x02\x00\x00\x00\x00\x02", 1, 2, MacBudget(buffers), 17, rtt,
                   min_rto=0.005, max_rto=0.5)


def test_rto_follows_rtt_and_backs_off() -> None:
    p = make_path(rtt=0.001)
    assert p.rto == pytest.approx(0.005)  # 1 ms + 4 * 0.5 ms = 3 ms, clamped to min_rto
    for _ in range(50):
        p.sample_rtt(0.010)
    assert 0.010 <= p.rto < 0.02  # converged near 10 ms with a small deviation
    before = p.rto
    p.on_timeouts()
    assert p.rto == pytest.approx(2 * before)
    for _ in range(10):
        p.on_timeouts()
    assert p.rto == 0.5  # capped at max_rto
    p.sample_rtt(0.010)
    assert p.rto < 0.5  # a clean sample resets the backoff


def test_a_folded_batch_lowers_min_rtt_by_its_lowest_sample() -> None:
    p = make_path(rtt=0.002)
    p.sample_rtt(0.004, 0.0005)  # a batch: latest 4 ms, lowest 0.5 ms
    assert p.min_rtt == 0.0005
    assert p.srtt == pytest.approx(0.002 + (0.004 - 0.002) / 8)  # srtt follows the latest
    p.sample_rtt(0.003, 0.009)  # a lowest above the latest is no lower: the latest counts
    assert p.min_rtt == 0.0005


def test_window_halves_on_loss_and_respects_buffer_count() -> None:
    p = make_path(buffers=16)
    assert p.cwnd == INITIAL_WINDOW and p.limit == 16
    p.cwnd = 12.0
    p.on_loss()
    assert p.cwnd == 6.0 and p.ssthresh == 6.0
    for _ in range(20):
        p.on_loss()
    assert p.cwnd == 1.0  # never below one frame
    capped = PathWindow(0, _Port(), b"\x02" * 6, 1, 2, MacBudget(16), 17, 0.001, 0.005, 0.5,
                     max_window=4)
    assert capped.limit == 4


def test_path_marked_alive_again() -> None:
    p = make_path()
    p.down = True
    p.timeouts_in_row = 5
    p.cwnd = 1.0
    p.on_alive(1.0)
    assert not p.down and p.timeouts_in_row == 0 and p.cwnd == INITIAL_WINDOW


def test_range_lock_serialises_overlaps_only() -> None:
    lock = _RangeLock()
    order: list[str] = []
    with lock.hold(0, 10):
        t_overlap = threading.Thread(target=lambda: _hold(lock, 5, 15, order, "overlap"))
        t_disjoint = threading.Thread(target=lambda: _hold(lock, 10, 20, order, "disjoint"))
        t_overlap.start()
        t_disjoint.start()
        t_disjoint.join(5)
        assert order == ["disjoint"]  # did not wait for [0, 10)
        order.append("released")
    t_overlap.join(5)
    assert order == ["disjoint", "released", "overlap"]


def _hold(lock: _RangeLock, start: int, end: int, order: list[str], name: str) -> None:
    with lock.hold(start, end):
        order.append(name)


@pytest.mark.parametrize(("text", "value"), [("4096", 4096), ("64k", 65536), ("32M", 32 << 20),
                                             ("1GiB", 1 << 30), ("2 kb", 2048)])
def test_sizes(text: str, value: int) -> None:
    assert SizeType().convert(text, None, None) == value


def test_bad_size() -> None:
    with pytest.raises(click.BadParameter):
        SizeType().convert("12x", None, None)


def test_human_size() -> None:
    assert human_size(512) == "512 B"
    assert human_size(4 << 20) == "4.0 MiB"


class MemoryDisk:
    """The block duck type over a bytearray (the copy pipeline's own contract)."""

    def __init__(self, data: bytes) -> None:
        self.buf = bytearray(data)
        self.size = len(data)
        self.read_only = False
        self.flushed = 0

    def read(self, offset: int, length: int) -> bytes:
        time.sleep(0.001)  # let the pipeline overlap
        return bytes(self.buf[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        self.buf[offset : offset + len(data)] = data

    def flush(self) -> None:
        self.flushed += 1

    def close(self) -> None:
        pass


def test_copy_out_is_sparse_and_verified(tmp_path: Path) -> None:
    data = bytearray(b"\x5a" * (3 << 20))
    data[1 << 20 : 2 << 20] = bytes(1 << 20)
    data[-(256 << 10) :] = bytes(256 << 10)
    disk = MemoryDisk(bytes(data))
    out = tmp_path / "out.img"
    with open(out, "w+b") as f:
        result = copy_from_disk(disk, f, verify=True, chunk=1 << 20)
    assert out.read_bytes() == data
    assert result.holes == (1 << 20) + (256 << 10) and result.verified
    assert out.stat().st_blocks * 512 <= len(data) - (1 << 20)


def test_copy_in_range_and_verify_failure() -> None:
    disk = MemoryDisk(bytes(1 << 20))
    payload = bytes(range(256)) * 100
    result = copy_to_disk(disk, io.BytesIO(payload), offset=777, verify=True, chunk=4096)
    assert result.nbytes == len(payload) and disk.flushed == 1
    assert bytes(disk.buf[777 : 777 + len(payload)]) == payload
    with pytest.raises(ValueError, match="do not fit"):
        copy_to_disk(disk, io.BytesIO(payload), offset=disk.size - 10, length=len(payload))

    class Liar(MemoryDisk):
        def write(self, offset: int, data: bytes) -> None:
            super().write(offset, bytes(data[:-1]) + b"?")

    with pytest.raises(VerifyError, match="verify failed"):
        copy_to_disk(Liar(bytes(4096)), io.BytesIO(b"x" * 4096), verify=True)


class _FailingDisk(MemoryDisk):
    """Fails the ``nth`` read or write (0-based); the others go through."""

    def __init__(self, data: bytes, nth: int) -> None:
        super().__init__(data)
        self.calls = 0
        self.nth = nth
        self.lock = threading.Lock()

    def _maybe_fail(self) -> None:
        with self.lock:
            n = self.calls
            self.calls += 1
        if n == self.nth:
            raise OSError(5, "injected I/O error")

    def read(self, offset: int, length: int) -> bytes:
        self._maybe_fail()
        return super().read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self._maybe_fail()
        super().write(offset, data)


def _copy_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("aoe-copy", "aoe-read"))]


@pytest.mark.parametrize("nth", [0, 2, 5])
def test_a_failed_chunk_ends_the_copy_with_its_error_and_its_threads(
        tmp_path: Path, nth: int) -> None:
    """The copy's worker threads hand a chunk's error to the copy, which raises it, and
    end: none is left waiting once the copy has returned, whichever chunk failed."""
    data = bytes(range(256)) * (24 << 10)  # 6 MiB: six chunks of 1 MiB
    with pytest.raises(OSError, match="injected"), open(tmp_path / "out", "w+b") as f:
        copy_from_disk(_FailingDisk(data, nth), f, chunk=1 << 20)
    assert _copy_threads() == []
    disk = _FailingDisk(bytes(len(data)), nth)
    with pytest.raises(OSError, match="injected"):
        copy_to_disk(disk, io.BytesIO(data), chunk=1 << 20)
    assert _copy_threads() == [] and disk.flushed == 0


def test_chunks_run_on_the_workers_in_order_and_all_complete() -> None:
    data = bytes(random.Random(7).randbytes(5 << 20))
    disk = MemoryDisk(bytes(len(data)))
    result = copy_to_disk(disk, io.BytesIO(data), chunk=300_000)  # a short last chunk
    assert result.nbytes == len(data) and bytes(disk.buf) == data and disk.flushed == 1
    assert _copy_threads() == []


def test_macs_are_bytes_inside_and_text_only_in_the_dict_form() -> None:
    local, target = b"\x02\x00\x00\x00\x00\x01", b"\x02\xaa\xbb\xcc\xdd\xee"
    info = TargetInfo(1, 2, [PathInfo("eth0", local, target, 9000, 16, 17, 0.001)])
    assert info.target_macs == [target]
    out = json.loads(json.dumps(info.as_dict()))
    assert out["target_macs"] == ["02:aa:bb:cc:dd:ee"]
    assert out["paths"][0]["local_mac"] == "02:00:00:00:00:01"
    assert out["paths"][0]["target_mac"] == "02:aa:bb:cc:dd:ee"
    assert info.paths[0].target_mac == target  # as_dict left the path itself alone
    window = PathWindow(0, _Port(), info.paths[0].target_mac, 1, 2, MacBudget(16), 17, 0.001,
                        0.005, 0.5)
    assert window.describe() == "eth0->02:aa:bb:cc:dd:ee"


def test_range_lock_agrees_with_a_scan_of_every_held_range() -> None:
    """The bisection finds every overlap a scan of all held ranges finds, and no other,
    as ranges are taken and given back in any order (empty ranges included)."""
    rng = random.Random(12)
    lock = _RangeLock()
    held: list[tuple[int, int]] = []
    for _ in range(5000):
        if held and rng.random() < 0.4:
            span = held.pop(rng.randrange(len(held)))
            lock.give_back(span)
            continue
        start = rng.randrange(200)
        end = start + rng.choice((0, 1, 2, 8, 30))
        free = not any(s < max(end, start + 1) and start < max(e, s + 1) for s, e in held)
        got = lock.try_take(start, end)
        assert (got is not None) == free, (start, end, sorted(held))
        if got is not None:
            held.append(got)
