"""Batched sending with a header slot plus data taken where it lies (no netns needed: a
Unix datagram socket pair carries the messages exactly as a packet socket would)."""

from __future__ import annotations

import ctypes
import socket

import pytest

from aoe.net.mmsg import FrameBatch, GatherBatch, buffer_address


def test_buffer_address_of_bytes_bytearray_and_slices() -> None:
    data = b"0123456789"
    assert ctypes.string_at(buffer_address(data), 10) == data
    assert ctypes.string_at(buffer_address(memoryview(data)[4:]), 3) == b"456"
    ba = bytearray(b"abcdef")
    view = memoryview(ba)[2:]
    assert ctypes.string_at(buffer_address(view), 4) == b"cdef"
    with pytest.raises((BufferError, TypeError)):
        buffer_address(memoryview(ba)[::2])  # not contiguous
    # A write's payload: bytes, or a whole view of them (found from the object's id),
    # never confused with a part of one or a reversed view of the same length.
    payload = bytes(range(256)) * 16
    whole = memoryview(payload)
    assert buffer_address(whole) == buffer_address(payload) == buffer_address(whole[0:])
    assert ctypes.string_at(buffer_address(whole), len(payload)) == payload
    assert buffer_address(whole[100:]) == buffer_address(payload) + 100
    assert ctypes.string_at(buffer_address(whole.cast("I")), 8) == payload[:8]
    with pytest.raises((BufferError, TypeError)):
        buffer_address(whole[::-1])


def test_gather_batch_sends_header_then_data_in_one_call() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        tx = GatherBatch(a, count=4, head_size=64, head_len=8)
        payload = bytes(range(200))
        keep = memoryview(payload)
        base = buffer_address(keep)
        for i in range(4):
            tx.buf[i * 64 : i * 64 + 8] = bytes([i]) * 8
            if i % 2:
                tx.data_addrs[i] = base + 10 * i
                tx.data_lens[i] = 5
            else:
                tx.data_lens[i] = 0  # header only
        tx.queued = 4
        assert tx.flush() == 4 and tx.queued == 0 and tx.send_errors == 0
        got = [b.recv(100) for _ in range(4)]
        assert got[0] == bytes([0]) * 8
        assert got[1] == bytes([1]) * 8 + payload[10:15]
        assert got[2] == bytes([2]) * 8
        assert got[3] == bytes([3]) * 8 + payload[30:35]
    finally:
        a.close()
        b.close()


def test_gather_batch_counts_a_refused_frame_and_goes_on() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.close()  # nobody to receive: every send fails
    try:
        tx = GatherBatch(a.fileno(), count=2, head_size=16)
        tx.queued = 2
        tx.flush()
        assert tx.send_errors == 2 and tx.queued == 0
    finally:
        a.close()


def test_frame_batch_sends_a_slot_then_data_where_a_responder_points() -> None:
    """A reply in slot i can be followed by data anywhere (a target's read sent from a
    mapping of its disk); compacted replies keep their own data, and a queued frame has
    none."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        batch = FrameBatch(a, count=4, slot_size=64)
        payload = bytes(range(100))
        keep = memoryview(payload)
        base = buffer_address(keep)
        for i in range(4):
            batch.views[i][:4] = bytes([i]) * 4
            batch.tx_data_addrs[i] = base + 10 * i
            batch.tx_data_lens[i] = 3 if i != 0 else 0
        assert batch.send_slots([4, 0, 4, 4], 4) == 3  # slot 1 has no reply
        assert [b.recv(100) for _ in range(3)] == [
            bytes([0]) * 4, bytes([2]) * 4 + payload[20:23], bytes([3]) * 4 + payload[30:33]]
        batch.queue(1, 4)
        batch.flush()
        assert b.recv(100) == bytes([1]) * 4  # no data left over from the burst
        assert batch.send_errors == batch.send_faults == 0
    finally:
        a.close()
        b.close()


def test_frame_batch_counts_data_that_cannot_be_read_as_a_fault() -> None:
    """Data the kernel cannot read (an unmapped address, as a mapping of a file cut short
    shows beyond its end) fails that frame with EFAULT; the others go out."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        batch = FrameBatch(a, count=3, slot_size=64)
        for i in range(3):
            batch.views[i][:2] = bytes([i]) * 2
            batch.tx_data_lens[i] = 0
        batch.tx_data_addrs[1] = 4096  # the first page is never mapped
        batch.tx_data_lens[1] = 16
        assert batch.send_slots([2, 2, 2], 3) == 3
        assert batch.send_errors == 1 and batch.send_faults == 1
        assert [b.recv(100) for _ in range(2)] == [bytes([0]) * 2, bytes([2]) * 2]
    finally:
        a.close()
        b.close()
