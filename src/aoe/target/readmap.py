"""A read-only mapping of an export, so that read replies go out from the page cache.

A read served with ``preadv`` is copied twice: from the page cache into the reply slot,
then from the slot into the outgoing frame. Sent from a mapping of the backing file, it
is copied once, by the kernel, straight into the frame (``sendmmsg`` gathers the reply
header from the slot and the data from the mapping). The compiled burst path does so for
the sequential reads of a burst that holds nothing but reads (_burst.c); a random read
still goes through ``preadv``, since faulting its page in costs more than the copy, and
so does every read of a file with holes (store.py).

Only the kernel ever reads the mapping. A page it cannot read (an I/O error of the
device, a file truncated under the export) fails that one send with EFAULT instead of
stopping the process with SIGBUS; the server then stops using mappings, and the
initiator's retry is served by ``preadv``, which answers the error as before.

The mapping is made afresh every REMAP_EVERY bytes served from it: page tables grow with
every page touched (8 bytes per 4 KiB), and a netbook reading a whole 500 GB disk must not
keep a gigabyte of them.
"""

from __future__ import annotations

import ctypes
import mmap

from ..libc import libc as _libc

_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

MAP_FAILED = ctypes.c_void_p(-1).value
REMAP_EVERY = 256 << 20  # bytes read from an export before its mapping is replaced


class ReadMap:
    """The bytes ``[base, base + length)`` of ``fd``, mapped for reading.

    :attr:`address` is where byte ``base`` appears in memory (0 when not mapped); the
    mapping itself starts at the page holding it."""

    def __init__(self, fd: int, base: int, length: int) -> None:
        self._fd = fd
        self._base = base
        self._length = length
        self._start = 0  # the mapping's own start and size, for munmap
        self._size = 0
        self.address = 0
        self.remap_at = REMAP_EVERY  # a store's bytes_read past which to map afresh
        self._map()

    def _map(self) -> None:
        skip = self._base % mmap.PAGESIZE
        size = skip + self._length
        got = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, self._fd,
                         self._base - skip)
        if got is None or got == MAP_FAILED:  # e.g. no address space left: preadv serves
            return
        self._start, self._size = int(got), size
        self.address = self._start + skip

    def refresh(self, served: int) -> None:
        """Map afresh (dropping the page tables of what was read) once ``served``, the
        store's bytes read so far, passes :attr:`remap_at`."""
        self.close()
        self._map()
        self.remap_at = served + REMAP_EVERY

    def close(self) -> None:
        """Unmap; from now on :attr:`address` is 0 and reads go through ``preadv``."""
        if self._size:
            _libc.munmap(self._start, self._size)
        self._start = self._size = 0
        self.address = 0
