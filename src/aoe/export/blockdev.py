"""The block API the exports are written against, and a local-file implementation of it.

The exports (FUSE file, NBD server, kernel nbd attach) only need a byte-addressed disk with
read, write and flush. The AoE initiator provides one; `FileBlockDevice` provides the same
over a local image so every export can be built, tested and benchmarked without a network.
"""

from __future__ import annotations

import errno
import os
from typing import Protocol, runtime_checkable

Buffer = bytes | bytearray | memoryview


@runtime_checkable
class BlockDevice(Protocol):
    """A disk addressed in bytes. Implementations are thread-safe: the exports call them
    from many threads at once so that requests overlap (a remote disk is only fast when
    several requests are in flight)."""

    @property
    def size(self) -> int:
        """Capacity in bytes."""
        ...

    @property
    def read_only(self) -> bool:
        """True when writes are refused (the exports then advertise read-only)."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """Return exactly `length` bytes at `offset`; any alignment, inside the disk."""
        ...

    def write(self, offset: int, data: Buffer) -> None:
        """Store `data` (bytes or any byte buffer) at `offset`; return only once the
        device holds it (the caller may reuse the buffer afterwards)."""
        ...

    def flush(self) -> None:
        """Make every completed write durable (ATA FLUSH CACHE on an AoE disk)."""
        ...

    def close(self) -> None:
        """Release the device; no call may follow."""
        ...


def check_range(dev: BlockDevice, offset: int, length: int) -> None:
    """Raise EINVAL for a negative or out-of-disk range (the exports map it to their errors)."""
    if offset < 0 or length < 0 or offset + length > dev.size:
        raise OSError(errno.EINVAL, f"range {offset}+{length} is outside the disk ({dev.size})")


class FileBlockDevice:
    """A regular file or block device used as a disk: pread/pwrite/fsync on one descriptor
    (positional calls need no lock and release the GIL, so concurrent callers overlap)."""

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False) -> None:
        self.path = os.fspath(path)
        flags = os.O_RDONLY if read_only else os.O_RDWR
        self._fd = os.open(self.path, flags | os.O_CLOEXEC)
        try:
            self._size = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            os.close(self._fd)
            raise
        self._read_only = read_only
        self._closed = False

    def __repr__(self) -> str:
        mode = "ro" if self._read_only else "rw"
        return f"FileBlockDevice({self.path!r}, {self._size} bytes, {mode})"

    @property
    def size(self) -> int:
        return self._size

    @property
    def read_only(self) -> bool:
        return self._read_only

    def read(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        data = os.pread(self._fd, length, offset)
        while len(data) < length:  # pread may return short on some filesystems
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                raise OSError(errno.EIO, f"short read at {offset + len(data)}")
            data += more
        return data

    def readinto(self, offset: int, buf: bytearray | memoryview) -> int:
        """Fill `buf` from `offset` (saves the copy `read` makes; the exports use it when
        a device has it)."""
        view = memoryview(buf).cast("B")
        check_range(self, offset, len(view))
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n <= 0:
                raise OSError(errno.EIO, f"short read at {offset + done}")
            done += n
        return done

    def write(self, offset: int, data: Buffer) -> None:
        if self._read_only:
            raise OSError(errno.EROFS, "device is read-only")
        check_range(self, offset, len(data))
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)

    def flush(self) -> None:
        if not self._read_only:
            os.fsync(self._fd)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def __enter__(self) -> FileBlockDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def error_number(exc: BaseException) -> int:
    """The POSIX errno a device failure stands for (initiator errors carry one too)."""
    code = getattr(exc, "errno", None)
    return code if isinstance(code, int) and code > 0 else errno.EIO
