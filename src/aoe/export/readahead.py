"""Reading ahead of a sequential reader, into memory handed over to libfuse.

With direct I/O the kernel sends a reader's `read(2)` to the FUSE file as requests of at
most 1 MiB, one after the other: each waits for the previous one to be answered, so
between two of them the AoE link is idle and every request starts with an empty window.
When a request follows the previous one, the pieces after it are started on the device
at once (`submit_read`), so they are on the wire while the kernel copies the current one
to the reader; the next request then finds its data there or on its way.

The buffers come from the C heap because libfuse takes them over: a reply is written to
the kernel straight from the buffer that the device filled, and libfuse frees it.
Prefetched data is used only while fresh and never across a write of this mount.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..libc import libc as _libc

_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.calloc.restype = ctypes.c_void_p
_libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
_libc.free.restype = None
_libc.free.argtypes = [ctypes.c_void_p]

CHUNK = 1 << 20  # pieces are read ahead in aligned pieces of this size
DEPTH = 2  # pieces kept in flight ahead of the reader
MAX_AGE = 0.25  # seconds a finished piece may wait for its reader before it is dropped

Submit = Callable[[int, memoryview, Callable[[BaseException | None], None]], bool]

_memmove = ctypes.memmove  # a foreign call: the interpreter lock is released while it copies


def c_alloc(size: int, zeroed: bool = False) -> int:
    """`size` bytes of C heap (at least one), zero-filled if asked, or MemoryError."""
    n = max(size, 1)
    address = _libc.calloc(1, n) if zeroed else _libc.malloc(n)
    if not address:
        raise MemoryError(f"cannot allocate {size} bytes")
    return int(address)


def c_free(address: int) -> None:
    _libc.free(address)


def c_view(address: int, size: int) -> memoryview:
    """A writable byte view of C memory (valid only as long as the memory is)."""
    return memoryview((ctypes.c_char * size).from_address(address)).cast("B")


@dataclass(eq=False)
class _Piece:
    offset: int
    length: int
    address: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    finished_at: float = 0.0
    users: int = 0  # requests copying out of it right now
    dropped: bool = False  # out of the table: free the memory once nobody needs it
    freed: bool = False

    def idle(self) -> bool:
        """Nobody writes or reads the buffer any more (asked under the lock)."""
        return self.done.is_set() and self.users == 0


class ReadAhead:
    """The pieces started ahead of one sequential reader. Thread-safe; `submit` is the
    device's non-blocking read (False when it cannot take the request).

    Pieces are aligned `chunk`-sized parts of the disk, whatever sizes the reader asks
    for (the kernel splits a read at the reader's page boundaries, so requests are often
    not aligned). A request that is exactly one piece takes that piece's buffer; any
    other is copied out of the pieces it covers, and a piece is freed once read to its
    end."""

    def __init__(self, submit: Submit, size: int, depth: int = DEPTH,
                 max_age: float = MAX_AGE, chunk: int = CHUNK) -> None:
        self._submit = submit
        self._size = size
        self._depth = depth
        self._max_age = max_age
        self._chunk = chunk
        self._lock = threading.RLock()  # a device may complete a request inside submit
        self._pieces: dict[int, _Piece] = {}
        self._next = -1  # where a sequential reader's next request starts
        self.served = 0  # requests answered from pieces read ahead
        self.started = 0

    def take(self, offset: int, length: int) -> int | None:
        """The address of a C buffer holding `length` bytes at `offset`, now owned by the
        caller, or None when they were not all read ahead (the caller reads itself).
        Starts the pieces after this request when the reader is sequential."""
        end = offset + length
        with self._lock:
            sequential = offset == self._next
            self._next = end
            first = offset - offset % self._chunk
            covering = [self._pieces.get(start) for start in range(first, end, self._chunk)]
            if not sequential and None in covering:
                self._drop_all()
                return None
            self._start(end)
            if None in covering:
                return None
            pieces = [piece for piece in covering if piece is not None]
            whole = (len(pieces) == 1 and pieces[0].offset == offset
                     and pieces[0].length == length and pieces[0].users == 0)
            if whole:  # handed over: from now on the caller frees it
                del self._pieces[offset]
            else:
                for piece in pieces:
                    piece.users += 1
        for piece in pieces:
            piece.done.wait()
        now = time.monotonic()
        if any(piece.error is not None or now - piece.finished_at > self._max_age
               for piece in pieces):
            with self._lock:
                for piece in pieces:
                    if not whole:
                        piece.users -= 1
                    if self._pieces.get(piece.offset) is piece:
                        del self._pieces[piece.offset]
                    self._drop(piece)
            return None
        self.served += 1
        if whole:
            return pieces[0].address
        return self._copy_out(pieces, offset, length)

    def forget(self) -> None:
        """Drop everything read ahead: the disk is about to change under it."""
        with self._lock:
            self._drop_all()
            self._next = -1

    def _copy_out(self, pieces: list[_Piece], offset: int, length: int) -> int:
        """A new buffer with the bytes of [offset, offset+length) copied from `pieces`;
        a piece read to its end is freed."""
        address = c_alloc(length)
        end = offset + length
        for piece in pieces:
            lo, hi = max(offset, piece.offset), min(end, piece.offset + piece.length)
            _memmove(address + lo - offset, piece.address + lo - piece.offset, hi - lo)
        with self._lock:
            for piece in pieces:
                piece.users -= 1
                if piece.offset + piece.length <= end and self._pieces.get(piece.offset) is piece:
                    del self._pieces[piece.offset]  # read to its end
                    piece.dropped = True
                self._release(piece)
        return address

    # -- under the lock ---------------------------------------------------------------

    def _start(self, offset: int) -> None:
        """Have the `depth` pieces from the one holding `offset` on their way."""
        first = offset - offset % self._chunk
        for k in range(self._depth):
            start = first + k * self._chunk
            n = min(self._chunk, self._size - start)
            if n <= 0:
                break
            if start in self._pieces:
                continue
            piece = _Piece(start, n, c_alloc(n))
            try:
                started = self._submit(start, c_view(piece.address, n),
                                       functools.partial(self._finished, piece))
            except Exception:  # a closed or failed device: the reader will hear it itself
                started = False
            if not started:
                c_free(piece.address)
                break
            self._pieces[start] = piece
            self.started += 1
        behind = [start for start in self._pieces if start + self._chunk <= offset - self._chunk]
        for start in behind:  # pieces a reader jumped over
            self._drop(self._pieces.pop(start))

    def _drop_all(self) -> None:
        for piece in self._pieces.values():
            self._drop(piece)
        self._pieces.clear()

    def _drop(self, piece: _Piece) -> None:
        """Out of the table; its memory goes once the device and every reader are done."""
        piece.dropped = True
        self._release(piece)

    @staticmethod
    def _release(piece: _Piece) -> None:
        if piece.dropped and piece.idle() and not piece.freed:
            piece.freed = True
            c_free(piece.address)

    # -- on the device's I/O thread ---------------------------------------------------

    def _finished(self, piece: _Piece, error: BaseException | None) -> None:
        with self._lock:
            piece.error = error
            piece.finished_at = time.monotonic()
            piece.done.set()
            self._release(piece)

