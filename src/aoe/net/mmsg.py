"""Batched frame I/O on one socket: recvmmsg/sendmmsg through ctypes.

A :class:`FrameBatch` owns ``count`` fixed-size slots in one bytearray. :meth:`recv` fills
up to ``count`` slots with one system call; :meth:`queue` marks a slot (or a slice of it)
for sending and :meth:`flush` sends everything queued with one ``sendmmsg``. A responder
can therefore receive a request into a slot, write the reply over it, and send it from the
same memory: no copies in Python and two system calls per batch instead of two per frame.

The msghdr/iovec arrays live in bytearrays too, viewed as unsigned ints, so setting a
length or reading ``msg_len`` is a memoryview item access rather than a ctypes attribute.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
from collections.abc import Sequence

from ..libc import libc as _libc

MSG_DONTWAIT = 0x40
MSG_WAITFORONE = 0x10000
MSG_TRUNC = 0x20

# x86-64 / aarch64 LP64 layouts.
_IOVEC_SIZE = 16  # void *base; size_t len
_MMSGHDR_SIZE = 64  # struct msghdr (56) + unsigned msg_len + padding
_MSG_IOV = 16  # offset of msg_iov in struct msghdr
_MSG_IOVLEN = 24
_MSG_FLAGS = 48
_MSG_LEN = 56

_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int

if ctypes.sizeof(ctypes.c_void_p) != 8 or sys.byteorder != "little":  # pragma: no cover
    raise ImportError("aoe.net.mmsg supports 64-bit little-endian Linux only")


def _address(buf: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def _send_all(fd: int, hdrs: int, total: int, strict: bool = False) -> int:
    """Send the ``total`` messages of the mmsghdr array at address ``hdrs``, with as few
    sendmmsg calls as the kernel allows; returns how many it refused.

    A refused message (e.g. ENOBUFS, interface down) is skipped so one bad frame never
    stalls the rest, or, with ``strict``, raised as OSError.
    """
    sent = refused = 0
    while sent < total:
        n = _sendmmsg(fd, hdrs + sent * _MMSGHDR_SIZE, total - sent, 0)
        if n > 0:
            sent += n
            continue
        err = ctypes.get_errno()
        if n < 0 and err == errno.EINTR:
            continue
        if strict:
            raise OSError(err, os.strerror(err))
        refused += 1
        sent += 1  # drop the message the kernel refused
    return refused


class _MsgVec:
    """An mmsghdr array whose entry i uses iovec i (one buffer per message)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.hdrs = bytearray(count * _MMSGHDR_SIZE)
        self.iovs = bytearray(count * _IOVEC_SIZE)
        self.hdr_addr = _address(self.hdrs)
        self.iov_addr = _address(self.iovs)
        h64 = memoryview(self.hdrs).cast("Q")
        for i in range(count):
            base = i * _MMSGHDR_SIZE // 8
            h64[base + _MSG_IOV // 8] = self.iov_addr + i * _IOVEC_SIZE
            h64[base + _MSG_IOVLEN // 8] = 1
        iov64 = memoryview(self.iovs).cast("Q")
        self.bases = iov64[0::2]  # iov_base of message i
        self.lens = iov64[1::2]  # iov_len of message i
        h32 = memoryview(self.hdrs).cast("I")
        self.msg_len = h32[_MSG_LEN // 4 :: _MMSGHDR_SIZE // 4]
        self.msg_flags = h32[_MSG_FLAGS // 4 :: _MMSGHDR_SIZE // 4]


class FrameBatch:
    """``count`` receive slots of ``slot_size`` bytes on socket ``fd``, plus a send queue
    (sent on ``out_fd`` if given, else on ``fd``: a relay receives on one port and forwards
    the same slots out of the other)."""

    def __init__(self, fd: int | socket.socket, count: int = 64, slot_size: int = 9216,
                 out_fd: int | socket.socket | None = None) -> None:
        self.fd = fd if isinstance(fd, int) else fd.fileno()
        self.out_fd = self.fd if out_fd is None else (
            out_fd if isinstance(out_fd, int) else out_fd.fileno())
        self.count = count
        self.slot_size = slot_size
        self.buf = bytearray(count * slot_size)
        self.addr = _address(self.buf)
        whole = memoryview(self.buf)
        self.views = [whole[i * slot_size : (i + 1) * slot_size] for i in range(count)]
        self.slots = [self.addr + i * slot_size for i in range(count)]
        self._rx = _MsgVec(count)
        for i in range(count):
            self._rx.bases[i] = self.slots[i]
            self._rx.lens[i] = slot_size
        # Received lengths and flags of the last recv(), indexed by slot.
        self.lengths = self._rx.msg_len
        self.flags = self._rx.msg_flags
        self._tx = _MsgVec(count)
        self._tx_bases = self._tx.bases
        self._tx_lens = self._tx.lens
        # Send entry i points at slot i until someone queues out of order; a responder that
        # answers every frame of a burst in place then only sets lengths (see send_slots).
        for i in range(count):
            self._tx_bases[i] = self.slots[i]
        self.tx_lens = self._tx_lens
        self._tx_identity = True
        self.queued = 0
        self.send_errors = 0

    # --- receiving ------------------------------------------------------------------
    def recv(self, block: bool = False) -> int:
        """Receive up to ``count`` frames into slots 0..n-1; returns n (0: nothing waiting).

        With ``block`` the call waits for the first frame, then takes what else is queued.
        """
        flags = MSG_WAITFORONE if block else MSG_DONTWAIT
        n: int = _recvmmsg(self.fd, self._rx.hdr_addr, self.count, flags, None)
        if n >= 0:
            return n
        err = ctypes.get_errno()
        if err in (errno.EAGAIN, errno.EINTR):
            return 0
        raise OSError(err, os.strerror(err))

    def frame(self, i: int) -> bytes:
        """A copy of received frame i."""
        return bytes(self.views[i][: self.lengths[i]])

    def truncated(self, i: int) -> bool:
        """Whether frame i did not fit its slot."""
        return bool(self.flags[i] & MSG_TRUNC)

    # --- sending --------------------------------------------------------------------
    def queue(self, slot: int, length: int, offset: int = 0) -> None:
        """Queue ``length`` bytes of slot ``slot`` (from ``offset``) for the next flush."""
        q = self.queued
        if q == self.count:
            self.flush()
            q = 0
        self._tx_bases[q] = self.slots[slot] + offset
        self._tx_lens[q] = length
        self._tx_identity = False
        self.queued = q + 1

    def send_slots(self, lengths: Sequence[int], n: int) -> int:
        """Send slot i with ``lengths[i]`` bytes for every i < n whose length is positive.

        The fast way to answer a burst in place: when every slot has a reply, only the n
        lengths are written before one sendmmsg. Returns how many frames were queued.
        """
        if self.queued:
            self.flush()
        tx_lens = self._tx_lens
        bases = self._tx_bases
        slots = self.slots
        if not self._tx_identity:
            for i in range(self.count):
                bases[i] = slots[i]
            self._tx_identity = True
        q = 0
        for i in range(n):
            r = lengths[i]
            if r > 0:
                if q != i:
                    bases[q] = slots[i]
                    self._tx_identity = False
                tx_lens[q] = r
                q += 1
        self.queued = q
        self.flush()
        return q

    def queue_address(self, address: int, length: int) -> None:
        """Queue memory the caller keeps alive until the next flush (e.g. a fixed reply)."""
        q = self.queued
        if q == self.count:
            self.flush()
            q = 0
        self._tx_bases[q] = address
        self._tx_lens[q] = length
        self._tx_identity = False
        self.queued = q + 1

    def flush(self) -> int:
        """Send every queued frame; returns how many the kernel took.

        A frame the kernel refuses (e.g. ENOBUFS, interface down) is counted in
        ``send_errors`` and skipped, so one bad frame never stalls the rest.
        """
        total = self.queued
        if total:
            self.send_errors += _send_all(self.out_fd, self._tx.hdr_addr, total)
        self.queued = 0
        return total


class GatherBatch:
    """A send queue whose frames are a header slot plus data anywhere in memory.

    Message i sends the first ``head_lens[i]`` bytes (``head_len`` unless changed) of
    ``head_size``-byte slot i of :attr:`buf`, followed by ``data_lens[i]``
    bytes at address ``data_addrs[i]``, so a sender can put a request header in front of
    the caller's own buffer without copying the payload: the kernel reads it during
    :meth:`flush`. The caller must keep that memory alive and unchanged until then.
    """

    def __init__(self, fd: int | socket.socket, count: int = 64, head_size: int = 64,
                 head_len: int | None = None) -> None:
        self.fd = fd if isinstance(fd, int) else fd.fileno()
        self.count = count
        self.head_size = head_size
        self.buf = bytearray(count * head_size)
        self.addr = _address(self.buf)
        self.hdrs = bytearray(count * _MMSGHDR_SIZE)
        self.iovs = bytearray(count * 2 * _IOVEC_SIZE)
        self.hdr_addr = _address(self.hdrs)
        iov_addr = _address(self.iovs)
        h64 = memoryview(self.hdrs).cast("Q")
        for i in range(count):
            base = i * _MMSGHDR_SIZE // 8
            h64[base + _MSG_IOV // 8] = iov_addr + 2 * i * _IOVEC_SIZE
            h64[base + _MSG_IOVLEN // 8] = 2
        iov64 = memoryview(self.iovs).cast("Q")
        self.head_lens = iov64[1::4]
        self.data_addrs = iov64[2::4]
        self.data_lens = iov64[3::4]
        for i in range(count):
            iov64[4 * i] = self.addr + i * head_size
            self.head_lens[i] = head_size if head_len is None else head_len
        self.queued = 0
        self.send_errors = 0

    def flush(self) -> int:
        """Send every queued frame with one sendmmsg (more if the kernel takes fewer);
        a frame the kernel refuses is counted in ``send_errors`` and skipped."""
        total = self.queued
        if total:
            self.send_errors += _send_all(self.fd, self.hdr_addr, total)
        self.queued = 0
        return total


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]
_release_buffer.restype = None
_PyBUF_C_CONTIGUOUS = 0x0020 | 0x0008  # C_CONTIGUOUS implies STRIDES


def buffer_address(obj: bytes | bytearray | memoryview) -> int:
    """Address of the first byte of a C-contiguous buffer (read-only ones too).

    The address stays valid only while ``obj`` (which pins its exporter) is alive. A
    ``bytes`` object, or a whole view of one (a write's payload), is found from its id
    without a call through ctypes: it runs once per write request.
    """
    if type(obj) is bytes:
        base: object = obj
    elif isinstance(obj, memoryview) and obj.c_contiguous:
        base = obj.obj
        if type(base) is bytes and obj.nbytes != len(base):
            base = None  # a part of it: ask the buffer protocol where it starts
    else:
        base = None
    if type(base) is bytes and _BYTES_DATA:
        return id(base) + _BYTES_DATA
    return _exported_address(obj)


def _exported_address(obj: bytes | bytearray | memoryview) -> int:
    """The address as the buffer protocol reports it (any buffer)."""
    view = _PyBuffer()
    if _get_buffer(obj, ctypes.byref(view), _PyBUF_C_CONTIGUOUS) != 0:  # pragma: no cover
        raise BufferError("not a contiguous buffer")
    try:
        return int(view.buf or 0)
    finally:
        _release_buffer(ctypes.byref(view))


def _bytes_data_offset() -> int:
    """Where a bytes object's data starts, from the object's id (the object's address
    in CPython), as the buffer protocol shows it; 0 (never used) if the two disagree."""
    samples = [bytes(range(n)) for n in (1, 7, 64)]
    offsets = {_exported_address(b) - id(b) for b in samples}
    return offsets.pop() if len(offsets) == 1 else 0


_BYTES_DATA = _bytes_data_offset()


def send_many(fd: int, frames: list[bytes]) -> int:
    """Send a list of separate frames with one sendmmsg (used for announcements)."""
    if not frames:
        return 0
    vec = _MsgVec(len(frames))
    keep = [ctypes.create_string_buffer(f, len(f)) for f in frames]
    for i, b in enumerate(keep):
        vec.bases[i] = ctypes.addressof(b)
        vec.lens[i] = len(frames[i])
    _send_all(fd, vec.hdr_addr, len(frames), strict=True)
    return len(frames)
