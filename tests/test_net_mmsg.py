"""Batched sending with a header slot plus data taken where it lies (no netns needed: a
Unix datagram socket pair carries the messages exactly as a packet socket would)."""

from __future__ import annotations

import ctypes
import socket

import pytest

from aoe.net.mmsg import GatherBatch, buffer_address


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
