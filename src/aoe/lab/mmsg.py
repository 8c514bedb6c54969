"""recvmmsg/sendmmsg through ctypes: move a batch of frames per system call.

Python pays per system call, so a relay that takes 64 frames per call instead of one
forwards many more frames per second. Buffers are preallocated and reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

MSG_DONTWAIT = 0x40

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int,
                      ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int


class Batch:
    """`count` frame buffers of `size` bytes, received and re-sent in place."""

    def __init__(self, count: int = 64, size: int = 65536) -> None:
        self.count = count
        self.size = size
        self.buffers = [ctypes.create_string_buffer(size) for _ in range(count)]
        self._rx_iov = (_Iovec * count)()
        self._tx_iov = (_Iovec * count)()
        self._rx = (_Mmsghdr * count)()
        self._tx = (_Mmsghdr * count)()
        for i, buf in enumerate(self.buffers):
            addr = ctypes.addressof(buf)
            self._rx_iov[i].iov_base = addr
            self._rx_iov[i].iov_len = size
            self._tx_iov[i].iov_base = addr
            for vec, iov in ((self._rx, self._rx_iov), (self._tx, self._tx_iov)):
                vec[i].msg_hdr.msg_iov = ctypes.pointer(iov[i])
                vec[i].msg_hdr.msg_iovlen = 1
        self.lengths = [0] * count
        self.addresses = [ctypes.addressof(b) for b in self.buffers]

    def recv(self, fd: int) -> int:
        """Take up to `count` waiting frames without blocking; 0 when none is waiting."""
        n: int = _recvmmsg(fd, self._rx, self.count, MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(err, os.strerror(err))
        rx = self._rx
        lengths = self.lengths
        for i in range(n):
            lengths[i] = rx[i].msg_len
        return n

    def frame(self, i: int) -> bytes:
        """Copy of received frame i."""
        return ctypes.string_at(self.addresses[i], self.lengths[i])

    def send(self, fd: int, n: int) -> tuple[int, int]:
        """Send received frames 0..n-1 as they are. Returns (sent, failed): a frame the
        kernel refuses (say, too big for the outgoing port) is skipped, not retried."""
        tx = self._tx
        tx_iov = self._tx_iov
        lengths = self.lengths
        for i in range(n):
            tx_iov[i].iov_len = lengths[i]
        sent = failed = 0
        start = 0
        while start < n:
            k = _sendmmsg(fd, ctypes.byref(tx[start]), n - start, 0)
            if k < 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                failed += 1  # the frame at `start` was refused
                start += 1
                continue
            sent += k
            start += k
        return sent, failed
