"""Copy between an AoE disk and a file, with a pipeline that keeps the window full.

Several chunk reads (or writes) are in flight at once on worker threads, so the session
always has the next chunk's frames queued while the current one finishes and while this
thread writes to (or reads from) the file. Output to a regular file is sparse: blocks
the disk reads as zeros become holes. ``verify`` re-reads the destination and compares its
SHA-256 with the one taken of the source data on the way.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from hashlib import _Hash

CHUNK = 4 << 20
DEPTH = 3  # chunks in flight
HOLE_BLOCK = 64 << 10
_ZERO_BLOCK = bytes(HOLE_BLOCK)

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def _sha256() -> _Hash:
    """A SHA-256 digest. hashlib is imported here: loading OpenSSL costs every `aoe copy`
    4 ms of start-up, and only --verify needs it."""
    import hashlib

    return hashlib.sha256()


class BlockDevice(Protocol):
    """What the copy needs of a disk. ``write`` gets a view of a buffer that is reused
    once it returns; a disk with ``readinto(offset, buf)`` is read without a copy."""

    size: int

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes | memoryview) -> None: ...

    def flush(self) -> None: ...


class VerifyError(Exception):
    """The destination does not hold what was copied."""


@dataclass
class CopyResult:
    nbytes: int
    seconds: float
    holes: int  # bytes left as holes in the output file
    sha256: str | None  # of the data copied, when verify was asked
    verified: bool
    session: dict[str, int] | None = None  # the AoE session's counters (retransmits, ...)

    @property
    def rate(self) -> float:
        """Bytes per second."""
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0


T = TypeVar("T")


class _Job(Generic[T]):
    """One call handed to the workers; ``result()`` waits for it and returns or raises
    what it did."""

    __slots__ = ("_call", "_args", "_done", "_value", "_error")

    def __init__(self, call: Callable[..., T], args: tuple[Any, ...]) -> None:
        self._call, self._args = call, args
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self._call(*self._args)
        except BaseException as exc:  # handed to whoever waits for the result
            self._error = exc
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> T:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class _Workers:
    """A few threads taking calls in order: all the copy needs of a thread pool.
    concurrent.futures (which imports logging) adds 3-4 ms of CPU to every `aoe copy`'s
    start-up, four times that in wall time at 25 % of a slow core."""

    def __init__(self, count: int, prefix: str) -> None:
        self._jobs: deque[_Job[Any] | None] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._threads = [threading.Thread(target=self._work, name=f"{prefix}-{i}", daemon=True)
                         for i in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[..., T], *args: Any) -> _Job[T]:
        job = _Job(call, args)
        with self._ready:
            self._jobs.append(job)
            self._ready.notify()
        return job

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._jobs:
                    self._ready.wait()
                job = self._jobs.popleft()
                if job is None:
                    self._jobs.appendleft(None)  # the end, for the next worker too
                    self._ready.notify()
                    return
            job.run()

    def shutdown(self, wait: bool) -> None:
        """Drop the calls not yet started, end the threads (waiting for the calls running,
        if ``wait``)."""
        with self._ready:
            self._jobs.clear()
            self._jobs.append(None)
            self._ready.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()


@contextmanager
def _pool(prefix: str) -> Iterator[_Workers]:
    """DEPTH worker threads. On an interrupt (SIGINT/SIGTERM raised as a BaseException)
    the requests in flight are not waited for: the caller closes the disk, which fails
    them at once, so the copy stops promptly."""
    pool = _Workers(DEPTH, prefix)
    try:
        yield pool
    except Exception:
        pool.shutdown(wait=True)
        raise
    except BaseException:
        pool.shutdown(wait=False)
        raise
    pool.shutdown(wait=True)


def _is_regular(f: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (OSError, io.UnsupportedOperation):
        return False


@contextmanager
def pending_output(name: str) -> Iterator[tuple[BinaryIO, Callable[[], None]]]:
    """``name`` opened for a copy's output (created if missing) but not yet emptied, with
    the call that empties it, to run when data may go there (``before_output``). If the
    block ends in an error before that call, a file this created is removed again and
    one that existed is left as it was."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        created = True
    except FileExistsError:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        created = False
    mode = os.fstat(fd).st_mode
    regular = stat.S_ISREG(mode)
    try:  # a pipe cannot seek: written in order, as stdout is
        out: BinaryIO = os.fdopen(fd, "r+b" if regular or stat.S_ISBLK(mode) else "wb")
    except BaseException:
        os.close(fd)
        raise
    started = False

    def start() -> None:
        nonlocal started
        if regular:
            os.ftruncate(fd, 0)
        started = True

    try:
        with out:
            yield out, start
    except BaseException:
        if created and not started:
            with suppress(OSError):
                os.unlink(name)
        raise


def check_range(size: int, offset: int, length: int | None) -> int:
    """Bytes a copy of ``length`` (None: to the end) from ``offset`` moves on a disk of
    ``size`` bytes; ValueError when the range does not fit."""
    if offset < 0 or offset > size:
        raise ValueError(f"offset {offset} is outside the disk ({size} bytes)")
    if length is None:
        return size - offset
    if length < 0 or offset + length > size:
        raise ValueError(f"range {offset}+{length} goes past the end of the disk ({size} bytes)")
    return length


def _write_runs(fd: int, data: bytes | memoryview, pos: int, sparse: bool) -> int:
    """Write ``data`` at file offset ``pos`` in as few system calls as it takes: one
    pwrite per run of blocks that are not all zeros (the whole chunk when nothing is
    zero). All-zero HOLE_BLOCK blocks are skipped when ``sparse`` (the file is fresh, so
    a skipped block is a hole; nothing is punched). Returns how many bytes were skipped.
    """
    view = memoryview(data)
    n = len(view)
    if not sparse:
        _pwrite_all(fd, view, pos)
        return 0
    holes = 0
    run = 0  # start of the pending run of data blocks
    start = 0
    while start < n:
        end = min(n, start + HOLE_BLOCK)
        if _is_zero(view, start, end):
            if run < start:
                _pwrite_all(fd, view[run:start], pos + run)
            holes += end - start
            run = end
        start = end
    if run < n:
        _pwrite_all(fd, view[run:n], pos + run)
    return holes


def _is_zero(view: memoryview, start: int, end: int) -> bool:
    """Whether bytes start..end of ``view`` are all zeros. Comparing memoryviews goes
    element by element (2 CPU s per GB of zeros); bytes compare with memcmp, so a block
    whose first bytes are zero is copied out once and compared as bytes (0.05 s per GB).
    """
    head = min(end, start + 16)
    if view[start:head] != _ZERO_BLOCK[: head - start]:
        return False  # data: decided on the first bytes, as before
    return view[start:end].tobytes() == _ZERO_BLOCK[: end - start]


def _pwrite_all(fd: int, view: memoryview, pos: int) -> None:
    while len(view):
        written = os.pwrite(fd, view, pos)
        view = view[written:]
        pos += written


def copy_from_disk(
    disk: BlockDevice,
    out: BinaryIO,
    offset: int = 0,
    length: int | None = None,
    *,
    sparse: bool = True,
    verify: bool = False,
    progress: Progress | None = None,
    chunk: int = CHUNK,
    before_output: Callable[[], None] | None = None,
) -> CopyResult:
    """Copy ``length`` bytes of the disk from ``offset`` to ``out`` (from its current
    position, which should be 0 of a fresh file for sparse output to be exact).
    ``before_output`` runs once, before anything reaches ``out`` (the disk's reads may
    have started): a last check that may still call the copy off."""
    total = check_range(disk.size, offset, length)
    regular = _is_regular(out)
    sparse = sparse and regular
    digest = _sha256() if verify else None
    holes = 0
    start_pos = out.tell() if regular else 0
    if regular:
        out.flush()  # what the file object buffered goes first; then pwrite at offsets
    t0 = time.perf_counter()
    done = 0
    for data in _disk_chunks(disk, offset, total, chunk):
        if before_output is not None:
            before_output()
            before_output = None
        if digest is not None:
            digest.update(data)
        if regular:
            holes += _write_runs(out.fileno(), data, start_pos + done, sparse)
        else:
            out.write(data)
        done += len(data)
        if progress is not None:
            progress(done, total)
    if before_output is not None:  # nothing was read: the output still gets its length
        before_output()
    if regular:
        out.seek(start_pos + total)
        if sparse:
            out.truncate(start_pos + total)  # a trailing hole still needs its length
    out.flush()
    seconds = time.perf_counter() - t0
    sha = digest.hexdigest() if digest is not None else None
    if verify and sha is not None:
        _verify_file(out, start_pos, total, sha, chunk)
    return CopyResult(total, seconds, holes, sha, verify)


def _verify_file(out: BinaryIO, start: int, total: int, expected: str, chunk: int) -> None:
    if not _is_regular(out):
        raise VerifyError("cannot verify: the output is not a regular file")
    fd = out.fileno()
    os.fsync(fd)
    digest = _sha256()
    pos, end = start, start + total
    while pos < end:
        try:
            data = os.pread(fd, min(chunk, end - pos), pos)
        except OSError as exc:
            raise VerifyError(f"cannot re-read the output to verify it: {exc.strerror} "
                              "(open it for reading and writing)") from None
        if not data:
            break
        digest.update(data)
        pos += len(data)
    if digest.hexdigest() != expected:
        raise VerifyError(
            f"verify failed: the output file's SHA-256 {digest.hexdigest()} differs from "
            f"the data read from the disk ({expected})"
        )


def _read_full(src: BinaryIO, n: int) -> bytes:
    parts = []
    left = n
    while left:
        data = src.read(left)
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _read_into(src: BinaryIO, view: memoryview) -> memoryview:
    """Fill ``view`` from ``src`` (short only at end of input); the filled part."""
    readinto = getattr(src, "readinto", None)
    if readinto is None:
        data = _read_full(src, len(view))
        view[: len(data)] = data
        return view[: len(data)]
    got = 0
    while got < len(view):
        n = readinto(view[got:])
        if not n:
            break
        got += n
    return view[:got]


def copy_to_disk(
    disk: BlockDevice,
    src: BinaryIO,
    offset: int = 0,
    length: int | None = None,
    *,
    verify: bool = False,
    progress: Progress | None = None,
    chunk: int = CHUNK,
) -> CopyResult:
    """Copy ``src`` (``length`` bytes, default: to its end) onto the disk at ``offset``,
    then flush. Raises ValueError if it would not fit."""
    if length is None and _is_regular(src):
        length = os.fstat(src.fileno()).st_size - src.tell()
    room = check_range(disk.size, offset, None)
    if length is not None and length > room:
        raise ValueError(
            f"{length} bytes do not fit the disk at offset {offset} ({room} bytes left)"
        )
    limit = room if length is None else length
    digest = _sha256() if verify else None
    t0 = time.perf_counter()
    done = 0
    # DEPTH writes in flight plus the chunk being read: buffers used in turn.
    free = deque(bytearray(max(1, min(chunk, limit))) for _ in range(DEPTH + 1))
    with _pool("aoe-copy") as pool:
        queue: deque[tuple[_Job[None], int, bytearray]] = deque()
        pos = offset
        while True:
            want = min(chunk, limit - (pos - offset))
            buf = free.popleft()
            data = _read_into(src, memoryview(buf)[:want]) if want > 0 else memoryview(b"")
            if not data:
                free.append(buf)
                break
            if digest is not None:
                digest.update(data)
            queue.append((pool.submit(disk.write, pos, data), len(data), buf))
            pos += len(data)
            while len(queue) >= DEPTH or (queue and queue[0][0].done()):
                fut, n, done_buf = queue.popleft()
                fut.result()
                free.append(done_buf)
                done += n
                if progress is not None:
                    progress(done, length if length is not None else done)
            if length is None and want > 0 and len(data) < want:
                break
        while queue:
            fut, n, done_buf = queue.popleft()
            fut.result()
            done += n
            if progress is not None:
                progress(done, length if length is not None else done)
        if length is None and _read_full(src, 1):
            raise ValueError(f"the input is larger than the room on the disk ({room} bytes)")
    disk.flush()
    seconds = time.perf_counter() - t0
    sha = digest.hexdigest() if digest is not None else None
    if verify and sha is not None:
        _verify_disk(disk, offset, done, sha, chunk)
    return CopyResult(done, seconds, 0, sha, verify)


def _verify_disk(disk: BlockDevice, offset: int, total: int, expected: str, chunk: int) -> None:
    digest = _sha256()
    for data in _disk_chunks(disk, offset, total, chunk):
        digest.update(data)
    if digest.hexdigest() != expected:
        raise VerifyError(
            f"verify failed: the disk now reads SHA-256 {digest.hexdigest()}, "
            f"the source data had {expected}"
        )


def _disk_chunks(disk: BlockDevice, offset: int, total: int,
                 chunk: int) -> Iterator[bytes | memoryview]:
    """The disk's bytes in order, ``chunk`` at a time, with DEPTH reads in flight.

    A disk with ``readinto`` (AoeDisk) reads into DEPTH + 1 buffers used in turn: no
    allocation and no copy per chunk. A yielded view is valid until the next one is asked
    for.
    """
    readinto = getattr(disk, "readinto", None)
    with _pool("aoe-read") as pool:
        pos = offset
        end = offset + total
        if readinto is None:
            queue: deque[_Job[bytes]] = deque()
            while pos < end or queue:
                while pos < end and len(queue) < DEPTH:
                    n = min(chunk, end - pos)
                    queue.append(pool.submit(disk.read, pos, n))
                    pos += n
                yield queue.popleft().result()
            return
        free = deque(bytearray(min(chunk, total)) for _ in range(DEPTH + 1))
        inflight: deque[tuple[_Job[int], memoryview, bytearray]] = deque()
        while pos < end or inflight:
            while pos < end and len(inflight) < DEPTH:
                n = min(chunk, end - pos)
                buf = free.popleft()
                view = memoryview(buf)[:n]
                inflight.append((pool.submit(readinto, pos, view), view, buf))
                pos += n
            fut, view, buf = inflight.popleft()
            fut.result()
            yield view
            free.append(buf)  # the consumer is done with it once it asks for more
