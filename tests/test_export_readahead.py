"""Reading ahead for the FUSE file: what is served from pieces read early, what is not,
and that every buffer is freed exactly once whatever happens to its piece."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from aoe.export import readahead
from aoe.export.readahead import ReadAhead, c_view

MiB = 1 << 20
SIZE = 16 * MiB


class SlowAsyncDisk:
    """A disk whose reads complete on another thread after `delay`, like an AoE session."""

    def __init__(self, delay: float = 0.005) -> None:
        self.data = bytes(range(256)) * (SIZE // 256)
        self.delay = delay
        self.fail = False
        self.submitted: list[tuple[int, int]] = []

    def submit_read(self, offset: int, buf: memoryview,
                    on_done: Callable[[BaseException | None], None]) -> bool:
        if offset % 512 or len(buf) % 512:
            return False
        self.submitted.append((offset, len(buf)))

        def complete() -> None:
            time.sleep(self.delay)
            if self.fail:
                on_done(OSError(5, "target said no"))
                return
            buf[:] = self.data[offset:offset + len(buf)]
            on_done(None)

        threading.Thread(target=complete, daemon=True).start()
        return True


@pytest.fixture
def heap(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[int]]:
    """The C buffers handed out and not yet freed; freeing one twice fails the test."""
    live: set[int] = set()
    real_alloc, real_free = readahead.c_alloc, readahead.c_free

    def alloc(size: int) -> int:
        address = real_alloc(size)
        live.add(address)
        return address

    def free(address: int) -> None:
        assert address in live, "freed twice or never allocated"
        live.remove(address)
        real_free(address)

    monkeypatch.setattr(readahead, "c_alloc", alloc)
    monkeypatch.setattr(readahead, "c_free", free)
    yield live


def settle(live: set[int], expected: int = 0, limit: float = 2.0) -> None:
    """Wait for pieces still on their way to be freed by their completion."""
    deadline = time.monotonic() + limit
    while len(live) != expected and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(live) == expected


def read_like_fuse(ahead: ReadAhead, disk: SlowAsyncDisk, offset: int, length: int) -> bytes:
    """What the FUSE callback does: a piece read ahead, or a read of its own."""
    address = ahead.take(offset, length)
    if address is None:
        return disk.data[offset:offset + length]
    try:
        return bytes(c_view(address, length))
    finally:
        readahead.c_free(address)  # libfuse frees it after replying


def test_a_sequential_reader_is_served_from_pieces_read_ahead(heap: set[int]) -> None:
    disk = SlowAsyncDisk()
    ahead = ReadAhead(disk.submit_read, SIZE, depth=2)
    for offset in range(0, SIZE, MiB):
        assert read_like_fuse(ahead, disk, offset, MiB) == disk.data[offset:offset + MiB]
    # the first request has nothing ahead of it, the second starts the pipeline
    assert ahead.served == SIZE // MiB - 2
    assert all(offset < SIZE for offset, _ in disk.submitted)  # never past the end
    settle(heap)


def test_random_reads_start_nothing(heap: set[int]) -> None:
    disk = SlowAsyncDisk()
    ahead = ReadAhead(disk.submit_read, SIZE)
    for offset in (5 * MiB, 1 * MiB, 9 * MiB, 3 * MiB):
        assert read_like_fuse(ahead, disk, offset, MiB) == disk.data[offset:offset + MiB]
    assert disk.submitted == [] and ahead.served == 0
    settle(heap)


def test_forget_drops_pieces_so_a_write_is_never_hidden(heap: set[int]) -> None:
    disk = SlowAsyncDisk(delay=0.05)
    ahead = ReadAhead(disk.submit_read, SIZE, depth=2)
    read_like_fuse(ahead, disk, 0, MiB)
    read_like_fuse(ahead, disk, MiB, MiB)  # starts 2 and 3 MiB
    assert len(heap) == 2
    ahead.forget()  # a write came in: 2 and 3 MiB may be old
    assert ahead.take(2 * MiB, MiB) is None
    settle(heap)  # freed by their completions, which came after the forget


def test_a_failed_or_stale_piece_is_not_served(heap: set[int]) -> None:
    disk = SlowAsyncDisk()
    ahead = ReadAhead(disk.submit_read, SIZE, depth=1)
    read_like_fuse(ahead, disk, 0, MiB)
    disk.fail = True
    read_like_fuse(ahead, disk, MiB, MiB)  # starts 2 MiB, which fails
    assert ahead.take(2 * MiB, MiB) is None
    settle(heap, expected=1)  # 3 MiB was started by that take and is still held
    disk.fail = False
    stale = ReadAhead(disk.submit_read, SIZE, depth=1, max_age=0.0)
    read_like_fuse(stale, disk, 0, MiB)
    read_like_fuse(stale, disk, MiB, MiB)
    time.sleep(0.05)
    assert stale.take(2 * MiB, MiB) is None  # finished too long before it was asked for
    ahead.forget()
    stale.forget()
    settle(heap)


def test_a_reader_that_changes_its_request_size_gets_right_data(heap: set[int]) -> None:
    disk = SlowAsyncDisk()
    ahead = ReadAhead(disk.submit_read, SIZE, depth=2)
    offset = 0
    for length in (MiB, MiB, 128 << 10, 128 << 10, MiB, 512, MiB):
        assert read_like_fuse(ahead, disk, offset, length) == disk.data[offset:offset + length]
        offset += length
    ahead.forget()
    settle(heap)


def test_a_device_that_refuses_leaves_nothing_behind(heap: set[int]) -> None:
    ahead = ReadAhead(lambda offset, buf, done: False, SIZE)
    disk = SlowAsyncDisk()
    for offset in range(0, 4 * MiB, MiB):
        read_like_fuse(ahead, disk, offset, MiB)
    assert ahead.started == 0
    assert not heap


def test_requests_split_at_the_readers_pages_are_served_too(heap: set[int]) -> None:
    """The kernel cuts a direct read at the reader's page boundaries: 1 MiB - 2464 bytes,
    then 2464, and so on. They cross pieces and are copied out of them."""
    disk = SlowAsyncDisk()
    ahead = ReadAhead(disk.submit_read, SIZE, depth=2)
    offset = 48
    assert read_like_fuse(ahead, disk, 0, 48) == disk.data[:48]
    while offset < SIZE:
        for piece in (MiB - 2464, 2464):
            length = min(piece, SIZE - offset)
            assert read_like_fuse(ahead, disk, offset, length) == disk.data[offset:offset + length]
            offset += length
    assert ahead.served >= 2 * (SIZE // MiB) - 4
    settle(heap)


def test_readers_sharing_pieces_never_free_them_under_each_other(heap: set[int]) -> None:
    disk = SlowAsyncDisk(delay=0.001)
    ahead = ReadAhead(disk.submit_read, SIZE, depth=4)
    errors: list[str] = []

    def reader() -> None:
        for offset in range(0, SIZE, 64 << 10):
            got = read_like_fuse(ahead, disk, offset, 64 << 10)
            if got != disk.data[offset:offset + (64 << 10)]:
                errors.append(f"wrong data at {offset}")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ahead.forget()
    settle(heap)
