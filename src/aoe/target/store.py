"""The target's store: a file or block device (or a slice of one) seen as numbered 512-byte
sectors, served as one shelf.slot (an export, described by :class:`ExportSpec`).

A :class:`Store` owns the open file descriptor, the slice bounds, the options (read-only,
O_DIRECT, O_SYNC) and the state initiators may change (config string, MAC mask list,
reservations). The request engine reads the plain attributes directly on its fast path.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import mmap
import os
import stat
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..mounts import mounts
from ..protocol.constants import SECTOR_SIZE
from ..protocol.identify import IdentifyInfo, build_identify
from ..protocol.mac import format_mac
from .state import ExportState

log = logging.getLogger("aoe.target")

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
MAX_CONFIG = 1024
MAX_PEERS = 1024  # initiators remembered per export for `aoe status`
DIRECT_ALIGN = 4096  # buffer alignment used for O_DIRECT; also fine for 512-byte devices


class StoreError(Exception):
    """An export cannot be opened as configured (missing file, bad slice, bad options)."""


@dataclass
class ExportSpec:
    """How to serve one disk image or device: everything a config file can say about it."""

    shelf: int
    slot: int
    path: str
    offset: int = 0  # bytes into the backing store where sector 0 lives
    length: int | None = None  # bytes exported; None: to the end of the store
    read_only: bool = False
    direct: bool = False  # O_DIRECT: bypass the page cache
    sync: bool = False  # O_SYNC: every write is durable before it is acknowledged
    config: bytes | None = None  # initial config string (saved state wins)
    interfaces: list[str] | None = None  # None: every interface the target serves
    serial: str | None = None
    model: str | None = None
    allow: list[bytes] | None = None  # MACs seeded into the mask list at start (None: keep)
    force: bool = False  # serve even a store that is held elsewhere (mounted, loop-attached)

    @property
    def name(self) -> str:
        return f"e{self.shelf}.{self.slot}"


def store_size(fd: int) -> tuple[int, bool]:
    """Size in bytes of an open regular file or block device, and whether it is a device."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return struct.unpack("Q", buf)[0], True
    if stat.S_ISREG(st.st_mode):
        return st.st_size, False
    raise StoreError("not a regular file or block device")


def default_serial(spec: ExportSpec, realpath: str) -> str:
    """A serial derived from what identifies the export, so it is stable across restarts."""
    digest = hashlib.sha256(
        f"{spec.shelf}.{spec.slot}:{realpath}:{spec.offset}".encode()
    ).hexdigest()
    return "PYAOE" + digest[:15].upper()


class Store:
    """One open export. Create with :meth:`open`; close when done."""

    def __init__(
        self,
        spec: ExportSpec,
        fd: int,
        size: int,
        state: ExportState,
        is_device: bool,
    ) -> None:
        self.spec = spec
        self.shelf = spec.shelf
        self.slot = spec.slot
        self.key = (spec.shelf << 8) | spec.slot
        self.fd = fd
        self.is_device = is_device
        self.base = spec.offset
        self.sectors = size // SECTOR_SIZE
        self.read_only = spec.read_only
        self.direct = spec.direct
        self.state = state
        self.mask_limit = 255  # lowered by the server to what the smallest MTU carries
        self.masks: set[bytes] = set()
        self.reserved: set[bytes] = set()
        self.guarded = False
        # What `aoe status` shows: bumped by the engine on its paths.
        self.peers: dict[bytes, list[float]] = {}  # initiator MAC -> [frames, last seen]
        self._overflow_peer: list[float] = [0, 0.0]
        self.bytes_read = 0
        self.bytes_written = 0
        self.errors = 0
        self._sync_guards()
        self._bounce: mmap.mmap | None = None
        if spec.direct:
            self._bounce = mmap.mmap(-1, 256 * SECTOR_SIZE)  # page aligned, as O_DIRECT needs
        self.identify_page = build_identify(
            IdentifyInfo(
                sectors=self.sectors,
                model=spec.model or "pyaoe virtual disk",
                serial=state.serial,
                firmware=__version__,
                smart=True,
            )
        )

    # --- construction ---------------------------------------------------------------
    @classmethod
    def open(cls, spec: ExportSpec, state_dir: str | Path | None = None,
             keep_state: bool = False) -> Store:
        """Open the backing store and load (or create) the saved state."""
        _check_spec(spec)
        fd = _open_fd(spec)
        try:
            try:
                total, is_device = store_size(fd)
            except StoreError as exc:
                raise StoreError(f"{spec.name}: {spec.path}: {exc}") from None
            if spec.direct:
                _check_direct_alignment(spec, fd, is_device)
            if not is_device and not (spec.read_only or spec.force):
                _refuse_if_attached(spec, fd)
            size = _slice_size(spec, total)
            state = _load_state(spec, state_dir, keep_state)
            return cls(spec, fd, size, state, is_device)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._bounce is not None:
            self._bounce.close()
            self._bounce = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.spec.name}, {self.spec.path!r}, sectors={self.sectors})"

    def new_peer(self, mac: bytes) -> list[float]:
        """The [frames, last seen] record of a newly seen initiator. Past MAX_PEERS (forged
        source MACs must not grow memory without bound) newcomers share one scratch record
        that `aoe status` does not list."""
        if len(self.peers) < MAX_PEERS:
            rec: list[float] = [0, 0.0]
            self.peers[bytes(mac)] = rec
            return rec
        return self._overflow_peer

    # --- I/O ------------------------------------------------------------------------
    def read_into(self, view: memoryview, pos: int) -> int:
        """Fill ``view`` from byte ``pos`` of the backing store; bytes read."""
        if self._bounce is None:
            return os.preadv(self.fd, (view,), pos)
        n = len(view)
        got = os.preadv(self.fd, (memoryview(self._bounce)[:n],), pos)
        view[:got] = self._bounce[:got]
        return got

    def write_from(self, view: memoryview, pos: int) -> int:
        """Write ``view`` at byte ``pos``; returns only once the kernel has all of it."""
        if self._bounce is not None:
            n = len(view)
            self._bounce[:n] = view
            view = memoryview(self._bounce)[:n]
        done = 0
        total = len(view)
        while done < total:
            w = os.pwrite(self.fd, view[done:], pos + done)
            if w <= 0:
                break
            done += w
        return done

    def readv_into(self, views: Sequence[memoryview], pos: int) -> int:
        """Fill ``views`` one after another from byte ``pos``: one preadv for a run of
        adjacent requests. Returns the bytes read; short when the store failed part way."""
        if self._bounce is None:
            return os.preadv(self.fd, views, pos)
        done = 0  # O_DIRECT: each piece through the aligned bounce buffer
        for view in views:
            got = self.read_into(view, pos + done)
            done += got
            if got != len(view):
                break
        return done

    def writev_from(self, views: Sequence[memoryview], pos: int) -> int:
        """Write ``views`` one after another at byte ``pos``: one pwritev for a run of
        adjacent requests. Returns the bytes the kernel took; short when it failed part way."""
        if self._bounce is None and len(views) > 1:
            return os.pwritev(self.fd, views, pos)
        done = 0  # one piece, or O_DIRECT: each through the aligned bounce buffer
        for view in views:
            put = self.write_from(view, pos + done)
            done += put
            if put != len(view):
                break
        return done

    def flush(self) -> None:
        """Make every acknowledged write durable."""
        os.fdatasync(self.fd)

    # --- wire-visible state ---------------------------------------------------------
    @property
    def config(self) -> bytes:
        return self.state.config

    def set_config(self, value: bytes) -> None:
        self.state.config = bytes(value)
        self.state.save()

    def mask_list(self) -> list[bytes]:
        return list(self.state.masks)

    def set_masks(self, macs: list[bytes]) -> None:
        self.state.masks = list(macs)
        self._sync_guards()
        self.state.save()

    def reserve_list(self) -> list[bytes]:
        return list(self.state.reservations)

    def set_reservations(self, macs: list[bytes]) -> None:
        # Keep order, drop duplicates: the list is echoed back to initiators.
        seen: dict[bytes, None] = dict.fromkeys(bytes(m) for m in macs)
        self.state.reservations = list(seen)
        self._sync_guards()
        self.state.save()

    def _sync_guards(self) -> None:
        self.masks = set(self.state.masks)
        self.reserved = set(self.state.reservations)
        self.guarded = bool(self.masks or self.reserved)

    def describe(self) -> dict[str, object]:
        """A summary for logs and ``--json`` output."""
        return {
            "export": self.spec.name,
            "path": self.spec.path,
            "offset": self.base,
            "sectors": self.sectors,
            "read_only": self.read_only,
            "direct": self.direct,
            "sync": self.spec.sync,
            "config": self.config.decode("utf-8", "replace"),
            "masks": [format_mac(m) for m in self.state.masks],
            "reservations": [format_mac(m) for m in self.state.reservations],
            "serial": self.state.serial,
            "state_file": str(self.state.path) if self.state.path else None,
        }


def _check_spec(spec: ExportSpec) -> None:
    """Refuse what no store could serve, before anything is opened."""
    if not 0 <= spec.shelf <= 0xFFFE or not 0 <= spec.slot <= 0xFE:
        raise StoreError(f"{spec.name}: shelf must be 0-65534 and slot 0-254")
    if spec.offset < 0 or spec.offset % SECTOR_SIZE:
        raise StoreError(f"{spec.name}: offset {spec.offset} is not a multiple of 512")
    if spec.length is not None and (spec.length <= 0 or spec.length % SECTOR_SIZE):
        raise StoreError(
            f"{spec.name}: length {spec.length} is not a positive multiple of 512"
        )
    if spec.config is not None and len(spec.config) > MAX_CONFIG:
        raise StoreError(f"{spec.name}: config string is longer than 1024 bytes")


def _open_fd(spec: ExportSpec) -> int:
    """The backing file or device opened as the spec asks, or a StoreError saying why not."""
    flags = os.O_CLOEXEC | (os.O_RDONLY if spec.read_only else os.O_RDWR)
    if spec.direct:
        flags |= os.O_DIRECT
    if spec.sync:
        flags |= os.O_SYNC
    exclusive = not (spec.read_only or spec.force) and _is_block_device(spec.path)
    if exclusive:
        flags |= os.O_EXCL  # on a block device: fails while mounted or held elsewhere
    try:
        try:
            # No access-time update per read (a root target owns what it opens).
            return os.open(spec.path, flags | os.O_NOATIME)
        except PermissionError:
            return os.open(spec.path, flags)
    except FileNotFoundError:
        raise StoreError(f"{spec.name}: {spec.path}: no such file or device") from None
    except IsADirectoryError:
        raise StoreError(f"{spec.name}: {spec.path} is a directory") from None
    except OSError as exc:
        if exclusive and exc.errno == errno.EBUSY:
            raise StoreError(
                f"{spec.name}: {spec.path} is in use (mounted, or held by another "
                "program); serving it writable would mix two writers "
                "(use --read-only, or --force)") from None
        hint = ""
        if spec.direct and exc.errno == 22:
            hint = " (this file system does not support O_DIRECT)"
        raise StoreError(
            f"{spec.name}: cannot open {spec.path}: {exc.strerror}{hint}"
        ) from None


def _slice_size(spec: ExportSpec, total: int) -> int:
    """Bytes exported from a store of ``total`` bytes: the slice the spec names."""
    if spec.offset >= total and total:
        raise StoreError(
            f"{spec.name}: offset {spec.offset} is past the end of {spec.path} "
            f"({total} bytes)"
        )
    size = total - spec.offset if spec.length is None else spec.length
    if spec.offset + size > total:
        raise StoreError(
            f"{spec.name}: offset {spec.offset} + length {size} is past the end of "
            f"{spec.path} ({total} bytes)"
        )
    if size < SECTOR_SIZE:
        raise StoreError(f"{spec.name}: {spec.path} exports less than one sector")
    if size % SECTOR_SIZE:
        log.warning("partial_sector", extra={
            "export": spec.name, "path": spec.path, "size": size,
            "bytes_not_served": size % SECTOR_SIZE,
            "why": "a disk is whole 512-byte sectors; the tail is not exported"})
    return size


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


# When the loop devices were last scanned, and what they were backed by.
_loop_cache: list[tuple[float, dict[tuple[int, int], list[str]]]] = [(0.0, {})]


def loop_devices_of(fd: int) -> list[str]:
    """The loop devices (e.g. ``/dev/loop3``) whose backing file is the open file ``fd``."""
    st = os.fstat(fd)
    now = time.monotonic()
    if now - _loop_cache[0][0] > 1.0:  # one scan serves a start-up that opens many exports
        _loop_cache[0] = (now, _loop_backing())
    return _loop_cache[0][1].get((st.st_dev, st.st_ino), [])


def _loop_backing() -> dict[tuple[int, int], list[str]]:
    found: dict[tuple[int, int], list[str]] = {}
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return found
    for name in sorted(names):
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                backing = f.read().rstrip("\n")
        except OSError:
            continue  # not attached
        if backing.endswith(" (deleted)"):
            continue
        try:
            bst = os.stat(backing)
        except OSError:
            continue
        found.setdefault((bst.st_dev, bst.st_ino), []).append(f"/dev/{name}")
    return found


def mount_points_of(device: str) -> list[str]:
    """Where ``device`` (e.g. ``/dev/loop3``) is mounted, as this process sees it."""
    try:
        rdev = os.stat(device).st_rdev
    except OSError:
        return []
    want = f"{os.major(rdev)}:{os.minor(rdev)}"
    return [where for dev, where in mounts() if dev == want]


def _refuse_if_attached(spec: ExportSpec, fd: int) -> None:
    """An image attached to a loop device (and so perhaps mounted) has another writer."""
    loops = loop_devices_of(fd)
    if not loops:
        return
    where = [m for dev in loops for m in mount_points_of(dev)]
    held = f"attached to {', '.join(loops)}"
    if where:
        held += f" and mounted on {', '.join(where)}"
    raise StoreError(f"{spec.name}: {spec.path} is {held}; serving it writable would mix "
                      "two writers (use --read-only, or --force)")


def _check_direct_alignment(spec: ExportSpec, fd: int, is_device: bool) -> None:
    block = SECTOR_SIZE
    if is_device:
        try:
            block = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
        except OSError:
            pass
    if block > SECTOR_SIZE:
        raise StoreError(
            f"{spec.name}: {spec.path} has {block}-byte logical blocks; O_DIRECT needs 512"
        )


def state_file_name(spec: ExportSpec) -> str:
    """``eSHELF.SLOT-<digest>.json``: the digest of the store's real path and slice keeps the
    state of one disk from being applied to another disk later served at the same address
    (a reservation or mask list meant for one image must never lock out another)."""
    ident = f"{os.path.realpath(spec.path)}:{spec.offset}:{spec.length}"
    return f"{spec.name}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}.json"


def _load_state(spec: ExportSpec, state_dir: str | Path | None,
                keep_state: bool = False) -> ExportState:
    path = None
    if state_dir is not None:
        d = Path(state_dir)
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create state directory {d}: {exc.strerror}") from None
        path = d / state_file_name(spec)
    state = ExportState.load(path)
    fresh = state is None
    derived = state is None  # nothing an initiator set yet: no need to fsync it
    if state is None:
        state = ExportState(path=path)
        if spec.config is not None:
            state.config = spec.config
        if spec.allow is not None:
            state.masks = list(spec.allow)
    else:
        fresh = settle_state(spec, state, keep_state)
    if spec.serial:
        state.serial = spec.serial
    elif not state.serial:
        state.serial = default_serial(spec, os.path.realpath(spec.path))
    if fresh:
        state.save(durable=not derived)
    return state


def settle_state(spec: ExportSpec, state: ExportState, keep_state: bool) -> bool:
    """Where the configuration and the saved state disagree, the configuration wins unless
    ``keep_state``; one log line says which value won. True when the state changed."""
    changed = False
    pairs: list[tuple[str, object, object]] = []
    if spec.config is not None and spec.config != state.config:
        pairs.append(("config", spec.config, state.config))
    if spec.allow is not None and list(spec.allow) != state.masks:
        pairs.append(("masks", list(spec.allow), state.masks))
    for what, configured, saved in pairs:
        won = "saved state (--keep-state)" if keep_state else "configuration"
        log.warning("state_conflict", extra={
            "export": spec.name, "field": what, "won": won,
            "configured": _show(configured), "saved": _show(saved)})
        if keep_state:
            continue
        if what == "config":
            state.config = spec.config or b""
        else:
            state.masks = list(spec.allow or [])
        changed = True
    return changed


def _show(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [format_mac(m) for m in value]
    return value
