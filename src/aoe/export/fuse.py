"""A FUSE filesystem holding one file whose bytes are the disk.

The file can be used like the disk itself: `mkfs` it, loop-mount it, copy images in and
out. fsync (and closing a file that was written) reaches the device as a flush, which
is ATA FLUSH CACHE on an AoE disk. libfuse runs multithreaded and the kernel is allowed
1 MiB requests, so big and concurrent reads overlap on the device.

How the kernel caches the file is the mount's cache mode (`CACHE_MODES`): by default the
page cache serves reads and reads ahead, and each open starts with an empty cache.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aoe.export.blockdev import BlockDevice, Buffer, error_number
from aoe.export.readahead import ReadAhead, c_alloc, c_free, c_view
from aoe.mounts import mounts, run_helper

log = logging.getLogger(__name__)

MAX_IO = 1 << 20  # the largest request libfuse 3 lets the kernel send (256 pages)
READAHEAD = 4 << 20  # the kernel's read-ahead window on the file, when it caches
FUSE_THREADS = 16  # request threads: enough to keep the device's window busy
MAX_BACKGROUND = 64  # asynchronous (readahead) requests the kernel keeps in flight

_O_ACCMODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR

# How the kernel caches the file. "open": the page cache serves reads and reads ahead
# (4 MiB, in 1 MiB requests), and is emptied whenever the file is opened, so an open
# sees what other machines wrote before it (close-to-open, as NFS does). "keep": the
# cache outlives opens (a disk nobody else writes). "none": direct I/O, every read
# reaches the disk (the mount reads ahead of a sequential reader itself, readahead.py).
CACHE_MODES = ("open", "keep", "none")


def _name_libfuse() -> None:
    """Tell mfusepy which libfuse to load when the dynamic linker finds one by its soname:
    its own search (ctypes.util.find_library) runs ldconfig in a subprocess, 30 ms of
    every `aoe mount`'s start (0.1 s on a netbook). Same preference: libfuse 2, then 3."""
    if os.environ.get("FUSE_LIBRARY_PATH") or os.environ.get("FUSE_LIBRARY_NAME"):
        return
    for soname in ("libfuse.so.2", "libfuse3.so.3"):
        try:
            ctypes.CDLL(soname)
        except OSError:
            continue
        os.environ["FUSE_LIBRARY_PATH"] = soname
        return


def _load_mfusepy() -> Any:
    """Import mfusepy, turning a missing libfuse into a clear error."""
    _name_libfuse()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import mfusepy  # type: ignore[import-untyped]
        except (ImportError, OSError) as exc:
            raise RuntimeError(f"FUSE is not usable here: {exc}") from None
    return mfusepy


class DiskFS:
    """FUSE operations for a root directory holding the single file `/<name>`.

    Writes are write-through: a write returns once the device holds the data. Truncation
    is ignored like on a block device, so `dd of=...` works without conv=notrunc.
    """

    use_ns = True  # timestamps in nanoseconds (mfusepy asks)

    def __init__(
        self,
        dev: BlockDevice,
        name: str = "disk",
        read_only: bool = False,
        ready: Callable[[], None] | None = None,
        restore_cwd: int | None = None,
        read_ahead: bool = False,
        mountpoint: str | None = None,
    ) -> None:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"bad file name {name!r}")
        self.dev = dev
        self.name = name
        self.path = "/" + name
        self.force_read_only = read_only
        self._ready = ready
        self._cwd = restore_cwd  # libfuse chdirs to "/"; init goes back here
        self._mountpoint = mountpoint  # whose read-ahead window to widen, if caching
        self.started = False
        self._dirty = False
        self.flushes = 0  # how many times fsync/close reached the device
        now = time.time_ns()
        self._times = {"st_atime": now, "st_mtime": now, "st_ctime": now}
        self._uid, self._gid = os.getuid(), os.getgid()
        submit = getattr(dev, "submit_read", None)
        self.ahead = ReadAhead(submit, dev.size) if read_ahead and submit else None

    @property
    def read_only(self) -> bool:
        """Asked for, or learnt from the device (a target that refused a write)."""
        return self.force_read_only or self.dev.read_only

    # -- lifecycle -------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        """Ask the kernel for big requests and deep readahead (libfuse sizes max_pages
        from max_write)."""
        if conn is not None:
            conn.max_write = MAX_IO
            conn.max_read = MAX_IO  # must match the max_read mount option
            conn.max_readahead = READAHEAD
            conn.max_background = MAX_BACKGROUND
            conn.congestion_threshold = MAX_BACKGROUND * 3 // 4
        if self._mountpoint is not None:
            widen_readahead(self._mountpoint, READAHEAD)
        self.started = True
        if self._cwd is not None:  # libfuse moved the whole process to "/"; undo that
            os.fchdir(self._cwd)
        if self._ready is not None:
            self._ready()

    def destroy(self, path: str) -> None:
        self._forget_ahead()
        self._flush_if_dirty()

    # -- metadata --------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2,
                    "st_uid": self._uid, "st_gid": self._gid, **self._times}
        if path == self.path:
            mode = 0o444 if self.read_only else 0o644
            size = self.dev.size
            return {"st_mode": stat.S_IFREG | mode, "st_nlink": 1, "st_size": size,
                    "st_blocks": (size + 511) // 512, "st_blksize": 4096,
                    "st_uid": self._uid, "st_gid": self._gid, **self._times}
        raise OSError(errno.ENOENT, "no such file")

    def readdir(self, path: str, fh: int) -> list[str]:
        if path != "/":
            raise OSError(errno.ENOTDIR, "not a directory")
        return [".", "..", self.name]

    def statfs(self, path: str) -> dict[str, int]:
        blocks = self.dev.size // 4096
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_bfree": 0,
                "f_bavail": 0, "f_files": 1, "f_ffree": 0, "f_namemax": 255}

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self._check(path)
        atime, mtime = times if times else (time.time_ns(), time.time_ns())
        self._times.update(st_atime=atime, st_mtime=mtime)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._check(path)
        if length > self.dev.size:
            raise OSError(errno.EFBIG, "a disk cannot grow")
        return 0  # like O_TRUNC on a block device: the size stays

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        if mode != 0:  # hole punching would need TRIM, which the device does not have
            raise OSError(errno.EOPNOTSUPP, "only plain allocation is supported")
        if offset + size > self.dev.size:
            raise OSError(errno.EFBIG, "beyond the end of the disk")
        return 0

    # -- data ------------------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        self._check(path)
        if self.read_only and flags & _O_ACCMODE != os.O_RDONLY:
            raise OSError(errno.EROFS, "the disk is read-only")
        return 0

    def _fill(self, view: memoryview, offset: int) -> None:
        readinto = getattr(self.dev, "readinto", None)
        with _as_oserror():
            if readinto is not None:
                readinto(offset, view)
            else:
                view[:] = self.dev.read(offset, len(view))

    def read_buf(self, path: str, bufpp: Any, size: int, offset: int, fh: int) -> int:
        return self.read_buf_into(bufpp, size, offset)

    def read_buf_into(self, bufpp: Any, size: int, offset: int) -> int:
        """The read callback that hands libfuse a buffer of its own to reply from and
        free: the device fills it (or filled it ahead, see readahead.py)."""
        n = min(offset + size, self.dev.size) - offset
        n = max(n, 0)
        address = self.ahead.take(offset, n) if self.ahead is not None and n else None
        if address is None:
            address = c_alloc(n)
            try:
                if n:
                    self._fill(c_view(address, n), offset)
            except BaseException:
                c_free(address)
                raise
        try:
            vec = c_alloc(_BUFVEC_BYTES, zeroed=True)
        except MemoryError:
            c_free(address)
            raise
        header = _BufVec.from_address(vec)
        header.count = 1
        header.size = n
        header.mem = address
        header.fd = -1
        ctypes.c_void_p.from_address(ctypes.addressof(bufpp.contents)).value = vec
        return 0

    def write(self, path: str, data: Buffer, offset: int, fh: int) -> int:
        self._forget_ahead()
        if self.read_only:
            raise OSError(errno.EROFS, "the disk is read-only")
        room = self.dev.size - offset
        if room <= 0:
            raise OSError(errno.ENOSPC, "beyond the end of the disk")
        if len(data) > room:  # a short write, as a block device does at its end
            data = data[:room]
        self._dirty = True
        with _as_oserror():
            self.dev.write(offset, data)
        return len(data)

    def write_from(self, buf: Any, size: int, offset: int) -> int:
        """The write callback without copies: the device reads the kernel's buffer
        (valid until we return, and the device returns only once it holds the data)."""
        return self.write(self.path, _c_buffer(buf, size), offset, 0)

    def flush(self, path: str, fh: int) -> int:
        self._flush_if_dirty()  # close(2) of a written file: make it durable
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._dirty = False
        self._flush()
        return 0

    # -- helpers ---------------------------------------------------------------------

    def _forget_ahead(self) -> None:
        if self.ahead is not None:
            self.ahead.forget()

    def _check(self, path: str) -> None:
        if path != self.path:
            raise OSError(errno.ENOENT if path != "/" else errno.EISDIR, path)

    def _flush_if_dirty(self) -> None:
        if self._dirty and not self.read_only:
            self._dirty = False
            self._flush()

    def _flush(self) -> None:
        if not self.read_only:
            with _as_oserror():
                self.dev.flush()
            self.flushes += 1


class _BufVec(ctypes.Structure):
    """libfuse 3's `struct fuse_bufvec` holding one `struct fuse_buf` (memory, not fd)."""

    _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t),
                ("off", ctypes.c_size_t), ("size", ctypes.c_size_t),
                ("flags", ctypes.c_int), ("mem", ctypes.c_void_p),
                ("fd", ctypes.c_int), ("pos", ctypes.c_int64)]


_BUFVEC_BYTES = 256  # zeroed room beyond _BufVec for fields a newer libfuse may add


def _c_buffer(ptr: Any, size: int) -> memoryview:
    """A writable byte view of `size` bytes at a ctypes pointer (a libfuse buffer)."""
    return c_view(ctypes.cast(ptr, ctypes.c_void_p).value or 0, size)


def _fuse_class(mfusepy: Any) -> Any:
    """mfusepy's FUSE with the read and write callbacks routed to the zero-copy paths
    (mfusepy itself copies every buffer through a bytes object). Reads go through
    `read_buf`, so libfuse never calls a plain read callback."""

    class DiskFUSE(mfusepy.FUSE):  # type: ignore[misc]
        def read_buf(self, path: bytes | None, bufpp: Any, size: int, offset: int,
                     fip: Any) -> int:
            return int(self.operations.read_buf_into(bufpp, size, offset))

        def write(self, path: bytes | None, buf: Any, size: int, offset: int,
                  fip: Any) -> int:
            return int(self.operations.write_from(buf, size, offset))

    return DiskFUSE


@contextmanager
def _as_oserror() -> Iterator[None]:
    """Device failures reach the FUSE caller as their errno (EIO when they have none)."""
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        log.warning("device error: %s", exc)
        raise OSError(error_number(exc), str(exc)) from exc


def mount_blockdev(
    dev: BlockDevice,
    mountpoint: str | os.PathLike[str],
    *,
    name: str = "disk",
    read_only: bool = False,
    cache: str = "open",
    read_ahead: bool = True,
    allow_other: bool = False,
    fsname: str = "aoe",
    ready: Callable[[], None] | None = None,
    debug: bool = False,
) -> None:
    """Show `dev` as `<mountpoint>/<name>` and serve it until unmounted.

    Blocks in the FUSE loop; returns after `fusermount3 -u`, `umount`, or SIGINT/SIGTERM
    when called from the main thread (libfuse unmounts cleanly on those). `ready` is
    called once the kernel has connected. `cache` is one of `CACHE_MODES`; `read_ahead`
    is the mount's own read-ahead in mode "none". The device is flushed at the end but
    not closed.
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache mode {cache!r} is not one of {', '.join(CACHE_MODES)}")
    direct_io = cache == "none"
    mfusepy = _load_mfusepy()
    # Resolved now, as mountinfo will show it: once mounted, a stat of the mount point
    # would wait for the answer to init, and init looks the mount up (widen_readahead).
    mp = os.path.realpath(mountpoint)
    if not os.path.isdir(mp):
        raise FileNotFoundError(errno.ENOENT, f"mount point {mp!r} is not a directory")
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    ops = DiskFS(dev, name=name, read_only=read_only, ready=ready, restore_cwd=cwd,
                 read_ahead=direct_io and read_ahead,
                 mountpoint=None if direct_io else mp)
    options: dict[str, Any] = {
        "foreground": True,
        "fsname": fsname,
        "subtype": "aoe",
        "max_read": MAX_IO,
        "max_threads": FUSE_THREADS,
        "max_idle_threads": FUSE_THREADS,
        "debug": debug,
    }
    if direct_io:
        options["direct_io"] = True
    elif cache == "keep":
        options["kernel_cache"] = True
    if ops.read_only:
        options["ro"] = True
    if allow_other:
        options["allow_other"] = True
        options["default_permissions"] = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            _fuse_class(mfusepy)(ops, mp, **options)
    except RuntimeError as exc:
        # libfuse reports a loop ended by SIGINT/SIGTERM as an error, although it
        # unmounted cleanly; only a mount that never came up is a failure.
        if not ops.started:
            raise RuntimeError(f"libfuse error {exc}: see the message above") from None
        log.debug("FUSE loop ended with %s (signal)", exc)
    finally:
        os.close(cwd)
    if not ops.read_only:
        try:
            dev.flush()
        except Exception as exc:  # the mount is gone already; say why data may be unsafe
            log.error("final flush of the device failed: %s", exc)


def widen_readahead(mountpoint: str, size: int) -> bool:
    """Let the kernel read ahead up to `size` bytes on the mount at `mountpoint` (its
    bdi's read_ahead_kb: 128 KiB unless raised, and never above the max_readahead that
    init asked for): a capped initiator spends far less on a few 1 MiB requests than on
    many of 128 KiB, and keeps several in flight. `mountpoint` is resolved already, as
    mountinfo shows it: this runs in init, and a stat of the mount would wait for init's
    own answer. Needs root; False (and the kernel's default) otherwise."""
    device = _mount_device(mountpoint)
    if device is None:
        return False
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
            f.write(str(size // 1024))
    except OSError as exc:
        log.debug("read-ahead of %s left as it is: %s", mountpoint, exc)
        return False
    return True


def _mount_device(mountpoint: str) -> str | None:
    """The "major:minor" of the newest mount on `mountpoint`."""
    found = [device for device, where in mounts() if where == mountpoint]
    return found[-1] if found else None


def unmount(mountpoint: str | os.PathLike[str], lazy: bool = False) -> None:
    """Unmount a FUSE mount as its owner would (fusermount3 -u)."""
    argv = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [os.fspath(mountpoint)]
    done = run_helper(argv)
    if done.returncode != 0:
        raise OSError(errno.EBUSY, f"fusermount3 -u failed: {done.stderr.strip()}")


@contextmanager
def mounted(
    dev: BlockDevice,
    mountpoint: str | os.PathLike[str],
    *,
    timeout: float = 10.0,
    **kw: Any,
) -> Iterator[str]:
    """Mount in a background thread for the body; yield the disk file's path.

    Always unmounts at the end (lazily if the mount is still busy) and waits for the
    FUSE loop to finish. If a file is still open on a lazily unmounted mount the loop
    would wait for it forever, and the process would hang at exit closing that file;
    so as a last resort the connection (this mount's own, by its device number) is
    aborted through the fusectl filesystem.
    """
    mp = os.path.realpath(mountpoint)  # ismount() is False for a symlink to the mount
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            mount_blockdev(dev, mp, ready=started.set, **kw)
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=run, name=f"fuse:{mp}", daemon=True)
    thread.start()
    connection = None
    if started.wait(timeout) and not failure:
        connection = os.minor(os.stat(mp).st_dev)
    else:
        _cleanup(mp, thread, connection)
        if failure:
            raise failure[0]
        raise TimeoutError(f"FUSE mount on {mp} did not come up in {timeout}s")
    try:
        yield os.path.join(mp, kw.get("name", "disk"))
    finally:
        _cleanup(mp, thread, connection)
        if failure:
            raise failure[0]


FUSECTL = "/sys/fs/fuse/connections"


def abort_connection(connection: int) -> bool:
    """Abort one FUSE connection by number (fusectl), failing its pending requests.
    fusectl is mounted for the call if it is not already (and unmounted again)."""
    mounted_here = False
    if not os.path.ismount(FUSECTL):
        done = run_helper(["mount", "-t", "fusectl", "fusectl", FUSECTL])
        mounted_here = done.returncode == 0
    try:
        with open(os.path.join(FUSECTL, str(connection), "abort"), "w") as f:
            f.write("1")
        return True
    except OSError:
        return False
    finally:
        if mounted_here:
            run_helper(["umount", FUSECTL])


def _cleanup(mp: str, thread: threading.Thread, connection: int | None) -> None:
    grace = 10.0
    if os.path.ismount(mp):
        try:
            unmount(mp)
        except OSError:  # busy: files still open, the loop ends only when they close
            unmount(mp, lazy=True)
            grace = 1.0
    thread.join(grace)
    if thread.is_alive() and connection is not None:
        log.warning("FUSE loop for %s still busy after unmount: aborting connection %d",
                    mp, connection)
        abort_connection(connection)
        thread.join(10)
