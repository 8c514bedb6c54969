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
import ctypes.util
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.calloc.restype = ctypes.c_void_p
_libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
_libc.free.restype = None
_libc.free.argtypes = [ctypes.c_void_p]

DEPTH = 2  # pieces kept in flight ahead of the reader
MAX_AGE = 0.25  # seconds a finished piece may wait for its reader before it is dropped

Submit = Callable[[int, memoryview, Callable[[BaseException | None], None]], bool]


def c_alloc(size: int) -> int:
    """`size` bytes of C heap (at least one), or MemoryError."""
    address = _libc.malloc(max(size, 1))
    if not address:
        raise MemoryError(f"cannot allocate {size} bytes")
    return int(address)


def c_calloc(size: int) -> int:
    """`size` zeroed bytes of C heap, or MemoryError."""
    address = _libc.calloc(1, max(size, 1))
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
    dropped: bool = False  # nobody will take it: free the memory once the device is done


class ReadAhead:
    """The pieces started ahead of one sequential reader. Thread-safe; `submit` is the
    device's non-blocking read (False when it cannot take the request)."""

    def __init__(self, submit: Submit, size: int, depth: int = DEPTH,
                 max_age: float = MAX_AGE) -> None:
        self._submit = submit
        self._size = size
        self._depth = depth
        self._max_age = max_age
        self._lock = threading.Lock()
        self._pieces: dict[int, _Piece] = {}
        self._next = -1  # where a sequential reader's next request starts
        self.served = 0  # requests answered from a piece read ahead
        self.started = 0

    def take(self, offset: int, length: int) -> int | None:
        """The address of a C buffer holding `length` bytes at `offset`, now owned by the
        caller, or None when no usable piece was read ahead (the caller reads itself).
        Starts the pieces after this request when the reader is sequential."""
        with self._lock:
            piece = self._pieces.pop(offset, None)
            sequential = offset == self._next
            self._next = offset + length
            if piece is not None and piece.length != length:
                self._drop(piece)
                piece = None
            if sequential or piece is not None:
                self._start_after(offset + length, length)
            else:
                self._drop_all()
        if piece is None:
            return None
        piece.done.wait()
        if piece.error is not None or time.monotonic() - piece.finished_at > self._max_age:
            c_free(piece.address)
            return None
        self.served += 1
        return piece.address

    def forget(self) -> None:
        """Drop everything read ahead: the disk is about to change under it."""
        with self._lock:
            self._drop_all()
            self._next = -1

    # -- under the lock ---------------------------------------------------------------

    def _start_after(self, offset: int, length: int) -> None:
        for k in range(self._depth):
            start = offset + k * length
            n = min(length, self._size - start)
            if n <= 0:
                break
            if start in self._pieces:
                continue
            piece = _Piece(start, n, c_alloc(n))
            try:
                started = self._submit(start, c_view(piece.address, n),
                                       lambda error, p=piece: self._finished(p, error))
            except Exception:  # a closed or failed device: the reader will hear it itself
                started = False
            if not started:
                c_free(piece.address)
                break
            self._pieces[start] = piece
            self.started += 1
        if len(self._pieces) > 2 * self._depth:  # a reader that stopped somewhere
            for start in sorted(self._pieces, key=lambda s: abs(s - offset))[2 * self._depth:]:
                self._drop(self._pieces.pop(start))

    def _drop_all(self) -> None:
        for piece in self._pieces.values():
            self._drop(piece)
        self._pieces.clear()

    def _drop(self, piece: _Piece) -> None:
        if piece.done.is_set():
            c_free(piece.address)
        else:
            piece.dropped = True

    # -- on the device's I/O thread ---------------------------------------------------

    def _finished(self, piece: _Piece, error: BaseException | None) -> None:
        with self._lock:
            piece.error = error
            piece.finished_at = time.monotonic()
            piece.done.set()
            if piece.dropped:
                c_free(piece.address)
