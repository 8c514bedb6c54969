"""The initiator against real targets (vblade and `aoe serve`) over a veth, MTU 1500 and 9000:
discovery, IDENTIFY, whole-disk reads, aligned and unaligned writes, flush, LBA28,
concurrent callers."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from aoe.initiator import TargetReadOnlyError, discover
from aoe.initiator.session import SEND_EVERY
from aoe.lab import Lab
from aoe.protocol import max_sectors_for_mtu

from .support.initiator import DISK_SIZE, SHELF, SLOT, TARGET_KINDS, Rig, make_rig, patterned


@pytest.fixture(params=[(k, m) for k in TARGET_KINDS for m in (1500, 9000)],
                ids=lambda p: f"{p[0]}-mtu{p[1]}")
def rig(request: pytest.FixtureRequest, lab: Lab, tmp_path: Path) -> Rig:
    kind, mtu = request.param
    return make_rig(lab, kind, tmp_path, mtu=mtu)


@pytest.fixture(params=TARGET_KINDS)
def small_rig(request: pytest.FixtureRequest, lab: Lab, tmp_path: Path) -> Rig:
    return make_rig(lab, request.param, tmp_path, mtu=9000, size=4 << 20)


def test_discover_and_identify(rig: Rig) -> None:
    mtu = rig.lab.cables[0].mtu
    with rig.initiator.enter():
        found = discover(rig.ifaces, timeout=0.3)
        directed = discover(rig.ifaces, (SHELF, SLOT), timeout=0.3)
    assert [t.address for t in found] == [f"{SHELF}.{SLOT}"]
    assert [t.address for t in directed] == [f"{SHELF}.{SLOT}"]
    t = found[0]
    assert t.size == DISK_SIZE and t.identify_error is None
    assert t.model and t.lba48
    assert t.buffer_count >= 1 and t.aoe_version == 1
    assert t.max_sectors == max_sectors_for_mtu(mtu)
    assert [p.ifname for p in t.paths] == rig.ifaces
    assert t.paths[0].frame_sectors == max_sectors_for_mtu(mtu)


def test_read_whole_disk(rig: Rig) -> None:
    with rig.open() as disk:
        assert disk.size == DISK_SIZE and not disk.read_only
        assert disk.read(0, DISK_SIZE) == rig.data
        stats = disk.stats()
    frame_bytes = max_sectors_for_mtu(rig.lab.cables[0].mtu) * 512
    assert stats.answers >= DISK_SIZE // frame_bytes
    assert stats.wrong_length == stats.wrong_source == stats.wrong_address == 0


def test_writes_aligned_and_unaligned(rig: Rig) -> None:
    expected = bytearray(rig.data)
    writes = [
        (0, 512),  # one sector
        (4096, 300 * 1024),  # many frames
        (1000, 100),  # inside one sector
        (2000, 3000),  # unaligned head and tail, several sectors
        (DISK_SIZE - 700, 700),  # unaligned start, ends at the end of the disk
        (8192 + 512, 1024 - 1),  # aligned start, unaligned end
        (1 << 20, 17 * 512 * 3 + 5),  # crosses frame boundaries, ragged end
    ]
    with rig.open() as disk:
        for n, (offset, length) in enumerate(writes):
            data = patterned(length, n + 1)
            disk.write(offset, data)
            expected[offset : offset + length] = data
        disk.flush()
        for offset, length in writes:
            assert disk.read(offset, length) == bytes(expected[offset : offset + length])
        assert disk.read(1999, 3002) == bytes(expected[1999:5001])
    assert rig.image_now() == bytes(expected)


def test_lba28_commands(small_rig: Rig) -> None:
    with small_rig.open(lba48=False) as disk:
        assert not disk.lba48
        data = patterned(70000, 9)
        disk.write(12345, data)
        disk.flush()
        assert disk.read(12345, len(data)) == data
    assert small_rig.image_now()[12345 : 12345 + len(data)] == data


def test_concurrent_callers(small_rig: Rig) -> None:
    size = len(small_rig.data)
    expected = bytearray(small_rig.data)
    errors: list[BaseException] = []
    reads: list[tuple[int, int, bytes]] = []
    # Each writer owns a disjoint quarter (unaligned offsets); readers read the far half.
    quarter = size // 8

    def writer(n: int) -> None:
        rnd = random.Random(n)
        base = n * quarter
        try:
            for _ in range(20):
                off = base + rnd.randrange(quarter - 5000)
                length = rnd.randrange(1, 5000)
                data = rnd.randbytes(length)
                disk.write(off, data)
                expected[off : off + length] = data
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader(n: int) -> None:
        rnd = random.Random(100 + n)
        try:
            for _ in range(10):
                off = size // 2 + rnd.randrange(size // 2 - 300000)
                length = rnd.randrange(1, 300000)
                reads.append((off, length, disk.read(off, length)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    with small_rig.open() as disk:
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        threads += [threading.Thread(target=reader, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(reads) == 40
        for off, length, got in reads:
            assert got == small_rig.data[off : off + length]
        disk.flush()
        assert disk.read(0, size) == bytes(expected)
    assert small_rig.image_now() == bytes(expected)


def test_same_sector_writes_do_not_interleave(small_rig: Rig) -> None:
    """Two threads each write their own bytes of the same sectors (read-modify-write):
    no update is lost."""
    with small_rig.open() as disk:
        def fill(start: int, byte: int) -> None:
            for i in range(start, 4096, 2):
                disk.write(i * 3, bytes([byte]))

        a = threading.Thread(target=fill, args=(0, 0xAA))
        b = threading.Thread(target=fill, args=(1, 0xBB))
        a.start(), b.start()
        a.join(60), b.join(60)
        got = disk.read(0, 4096 * 3)
    for i in range(4096):
        assert got[i * 3] == (0xAA if i % 2 == 0 else 0xBB)


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_target_read_only(lab: Lab, tmp_path: Path, kind: str) -> None:
    rig = make_rig(lab, kind, tmp_path, size=1 << 20, extra=("-r",))
    with rig.open() as disk:
        assert disk.read(0, 4096) == rig.data[:4096]
        with pytest.raises(TargetReadOnlyError, match="read-only"):
            disk.write(512, b"x" * 512)
        assert disk.read_only
        with pytest.raises(TargetReadOnlyError):
            disk.write(0, b"y")
    assert rig.image_now() == rig.data


def test_open_read_only(small_rig: Rig) -> None:
    with small_rig.open(read_only=True) as disk:
        assert disk.read_only
        with pytest.raises(TargetReadOnlyError):
            disk.write(0, b"z" * 512)
    assert small_rig.image_now() == small_rig.data


def test_range_checks(small_rig: Rig) -> None:
    with small_rig.open() as disk:
        with pytest.raises(ValueError):
            disk.read(disk.size - 10, 11)
        with pytest.raises(ValueError):
            disk.write(-1, b"a")
        assert disk.read(disk.size, 0) == b""
        assert disk.read(disk.size - 1, 1) == small_rig.data[-1:]
        buf = bytearray(8192)
        assert disk.readinto(4096, buf) == 8192 and bytes(buf) == small_rig.data[4096:12288]
    with pytest.raises(Exception, match="closed"):
        disk.read(0, 1)


def test_a_burst_submitted_on_the_io_thread_goes_out_in_groups(small_rig: Rig) -> None:
    """Requests queued by a watched fd's callback (as `aoe nbd` reads a client's burst)
    are sent SEND_EVERY at a time while the callback still runs, not only after it."""
    count = 2 * SEND_EVERY + 3
    sent_after: list[int] = []
    errors: list[BaseException | None] = []
    done = threading.Semaphore(0)

    def on_done(error: BaseException | None) -> None:
        errors.append(error)
        done.release()

    with small_rig.open() as disk:
        bufs = [memoryview(bytearray(4096)) for _ in range(count)]
        session = disk.session
        r, w = os.pipe()
        try:
            def on_ready() -> None:
                os.read(r, 1)
                session.unwatch(r)
                before = session.stats().frames_sent
                for i, buf in enumerate(bufs):
                    assert disk.submit_read(i * 8192, buf, on_done)
                    sent_after.append(session.stats().frames_sent - before)

            session.watch(r, on_ready, lambda: None)
            os.write(w, b"x")
            for _ in range(count):
                assert done.acquire(timeout=10)
        finally:
            os.close(r)
            os.close(w)
    assert errors == [None] * count
    assert [bytes(b) for b in bufs] == [small_rig.data[i * 8192 : i * 8192 + 4096]
                                        for i in range(count)]
    assert sent_after[SEND_EVERY - 2] == 0  # queued: nothing sent yet
    assert sent_after[SEND_EVERY - 1] > 0  # the first group left at once (as the window
    assert sent_after[-1] == sent_after[2 * SEND_EVERY - 1]  # allows); the rest after


def test_submitted_requests_complete_through_callbacks(small_rig: Rig) -> None:
    """The asynchronous API: many reads and writes in flight from one thread, each
    reported once on the session's thread; unaligned ones are declined, not started."""
    results: dict[int, BaseException | None] = {}
    done = threading.Semaphore(0)

    def report(key: int) -> Callable[[BaseException | None], None]:
        def on_done(error: BaseException | None) -> None:
            assert threading.current_thread() is not threading.main_thread()
            results[key] = error
            done.release()
        return on_done

    with small_rig.open() as disk:
        bufs = [memoryview(bytearray(8192)) for _ in range(64)]
        for i, buf in enumerate(bufs):
            assert disk.submit_read(i * 8192, buf, report(i))
        for _ in bufs:
            assert done.acquire(timeout=10)
        assert all(results[i] is None for i in range(64))
        for i, buf in enumerate(bufs):
            assert bytes(buf) == small_rig.data[i * 8192 : (i + 1) * 8192]
        # Writes: disjoint ones all go at once; the range of one in flight stays locked.
        payloads = [patterned(4096, seed) for seed in range(32)]
        for i, data in enumerate(payloads):
            assert disk.submit_write(i * 4096, memoryview(data), report(100 + i))
        declined = 0
        for i in range(32):  # a write overlapping one still in flight is declined
            if not disk.submit_write(i * 4096 + 512, memoryview(payloads[i][:512]),
                                     report(200 + i)):
                declined += 1
        started = 32 - declined
        for _ in range(32 + started):
            assert done.acquire(timeout=10)
        assert all(results[100 + i] is None for i in range(32))
        assert len(results) == 64 + 32 + started
        for i in range(32):  # the same bytes either way: only completion order differs
            payloads[i] = payloads[i][:512] + payloads[i][:512] + payloads[i][1024:] \
                if 200 + i in results else payloads[i]
        with disk._locks.hold(300, 308):  # as a read-modify-write in progress does
            assert not disk.submit_write(300 * 512, memoryview(bytes(4096)), report(1002))
            assert disk.submit_write(308 * 512, memoryview(bytes(4096)), report(1003))
            assert done.acquire(timeout=10) and results[1003] is None
        assert not disk.submit_read(1, memoryview(bytearray(512)), report(1000))
        assert not disk.submit_write(0, memoryview(bytes(100)), report(1001))
        assert not {1000, 1001, 1002} & set(results)
        disk.flush()
        assert disk.read(0, 32 * 4096) == b"".join(payloads)
    assert small_rig.image_now()[: 32 * 4096] == b"".join(payloads)


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_submitted_write_to_read_only_target_reports_the_error(lab: Lab, tmp_path: Path,
                                                               kind: str) -> None:
    rig = make_rig(lab, kind, tmp_path, size=1 << 20, extra=("-r",))
    outcome: list[BaseException | None] = []
    ended = threading.Event()

    def on_done(error: BaseException | None) -> None:
        outcome.append(error)
        ended.set()

    with rig.open() as disk:
        assert disk.submit_write(4096, memoryview(b"w" * 4096), on_done)
        assert ended.wait(10)
        assert isinstance(outcome[0], TargetReadOnlyError)
        assert disk.read_only  # learnt, as with a waiting write
        with pytest.raises(TargetReadOnlyError):
            disk.submit_write(0, memoryview(bytes(512)), on_done)
    assert rig.image_now() == rig.data
