"""AoeDisk: an AoE target as a thread-safe, byte-addressed block device.

Offsets and lengths are in bytes and need not be sector aligned: reads fetch the covering
sectors and slice; writes that start or end inside a sector read that sector first and
write it back merged. Every write holds a lock on its sector range for its whole run, so
two writes touching the same sector (one of them read-modify-write) never interleave.
Any number of threads may call at once; their requests share one window per path.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType

from ..net.rawsock import close_all
from ..protocol import SECTOR_SIZE, DecodeError, format_mac, parse_identify
from ..protocol.ata import LBA28_MAX_SECTORS
from .discovery import (
    OTHER_OWNER_GRACE,
    TargetInfo,
    query_config,
    require_frame_size,
    require_one_disk,
)
from .errors import (
    DiskClosedError,
    InitiatorError,
    NoTargetError,
    OwnerUnsettledError,
    TargetReadOnlyError,
)
from .ports import check_root, open_ports, resolve_interfaces
from .session import Request, Session, SessionStats

Buffer = bytes | bytearray | memoryview


def _aligned(offset: int, length: int) -> bool:
    """Whole sectors: the session moves them without a read-modify-write or a copy."""
    return offset % SECTOR_SIZE == 0 and length % SECTOR_SIZE == 0


class _RangeLock:
    """Exclusive locks on sector ranges; disjoint ranges never wait for each other.

    Held ranges never overlap one another, so sorted by start their ends rise too: a
    range is free when the held range starting last before its end ends before its
    start (one bisection, not a scan of everything held: every write takes a range)."""

    def __init__(self) -> None:
        # The lock alone where nobody waits: a Condition's own `with` is Python code.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._starts: list[int] = []  # held ranges' first sectors, sorted
        self._ends: dict[int, int] = {}  # first sector -> one past the last
        self._waiters = 0  # threads waiting in hold(): only then is a wake-up needed

    @contextmanager
    def hold(self, start: int, end: int) -> Iterator[None]:
        with self._cond:
            while (span := self._take_if_free(start, end)) is None:
                self._waiters += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiters -= 1
        try:
            yield
        finally:
            self.give_back(span)

    def try_take(self, start: int, end: int) -> tuple[int, int] | None:
        """Lock the range if nothing overlapping is held (never waits); the held span.
        Every write of `aoe nbd` comes here."""
        with self._lock:
            return self._take_if_free(start, end)

    def _take_if_free(self, start: int, end: int) -> tuple[int, int] | None:
        """With the lock held: take the range if it is free, with one bisection. A free
        range has no held range starting inside it, so it goes in where its end would."""
        last = end if end > start else start + 1  # an empty range still owns its place
        starts = self._starts
        i = bisect_left(starts, last)
        if i and self._ends[starts[i - 1]] > start:
            return None
        starts.insert(i, start)
        self._ends[start] = last
        return (start, end)

    def give_back(self, span: tuple[int, int]) -> None:
        with self._lock:
            start = span[0]
            del self._ends[start]
            del self._starts[bisect_left(self._starts, start)]
            if self._waiters:
                self._cond.notify_all()


class AoeDisk:
    """A remote AoE disk. Build it with :meth:`AoeDisk.open`; use as a context manager."""

    def __init__(self, session: Session, info: TargetInfo, read_only: bool = False,
                 owner_check_at: float | None = None) -> None:
        if info.sectors is None:
            raise ValueError("the target's size is unknown (no IDENTIFY)")
        self._session = session
        self.info = info
        self.sectors = info.sectors
        self.size = info.sectors * SECTOR_SIZE
        self._read_only = read_only
        self._locks = _RangeLock()
        self._closed = False
        # Deferred owner check: until this time (monotonic) another target may still
        # answer for the address; confirm_owner() settles it.
        self._owner_check_at = owner_check_at
        self._owner_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        shelf: int,
        slot: int,
        ifaces: Iterable[str] | None = None,
        *,
        timeout: float = 1.0,
        dead_timeout: float = 10.0,
        give_up: float | None = 0.0,
        read_only: bool = False,
        lba48: bool | None = None,
        min_rto: float = 0.02,
        max_rto: float = 1.0,
        max_window: int | None = None,
        frame_sectors: int | None = None,
        defer_owner_check: bool = False,
    ) -> AoeDisk:
        """Find shelf.slot on ``ifaces`` (default: all up Ethernet interfaces), learn its
        paths and size, and start a session.

        ``timeout`` bounds discovery; ``dead_timeout`` is how long the target may stay
        silent on every path before I/O fails with TargetDeadError. After that the session
        keeps probing for the target for ``give_up`` seconds (None: for ever; 0: it ends
        at once), and I/O resumes when the same device (IDENTIFY serial and size) answers.
        ``lba48`` forces the addressing mode (default: LBA48 whenever the device supports
        it). ``max_window`` and ``frame_sectors`` cap the window and frame size below what
        is negotiated.

        Discovery listens OTHER_OWNER_GRACE after the answer, in case a second target
        claims the address too. ``defer_owner_check`` returns at the answer instead and
        leaves that listening to the session, for a reader that fetches data meanwhile:
        it must call :meth:`confirm_owner` before it hands any of it on. Writes and
        flushes wait for the check themselves.
        """
        check_root()
        names = resolve_interfaces(ifaces)
        ports = open_ports(names)
        session: Session | None = None
        try:
            found = query_config(ports, (shelf, slot), timeout, settle=0.1,
                                 grace=0.0 if defer_owner_check else OTHER_OWNER_GRACE)
            check_at = time.monotonic() + OTHER_OWNER_GRACE if defer_owner_check else None
            if not found:
                macs = ", ".join(f"{p.ifname} {format_mac(p.mac)}" for p in ports)
                raise NoTargetError(
                    f"no answer from AoE target {shelf}.{slot} within {timeout:g} s on "
                    f"{', '.join(names)}: it is not running, not reachable from these "
                    f"interfaces, or its access list (MAC mask) excludes this host ({macs})"
                )
            info = found[0]
            require_frame_size(info)
            require_one_disk(ports, info)
            session = Session(
                info,
                ports,
                dead_timeout=dead_timeout,
                give_up=give_up,
                min_rto=min_rto,
                max_rto=max_rto,
                max_window=max_window,
                frame_sectors=frame_sectors,
            )
            _learn_identity(session, info, lba48)
            return cls(session, info, read_only, check_at)
        except BaseException:
            if session is not None:
                session.close()
            else:
                close_all(ports)
            raise

    # --- the block-device duck type ----------------------------------------------------
    @property
    def read_only(self) -> bool:
        return self._read_only

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset``; any alignment."""
        first, last = self._span(offset, length)
        if length == 0:
            return b""
        buf = bytearray((last - first) * SECTOR_SIZE)
        self._session.read_into(first, memoryview(buf))
        skip = offset - first * SECTOR_SIZE
        if skip == 0 and len(buf) == length:
            return bytes(buf)
        return bytes(memoryview(buf)[skip : skip + length])

    def readinto(self, offset: int, buf: bytearray | memoryview) -> int:
        """Fill ``buf`` from ``offset``; no extra copy when both are sector aligned."""
        mv = memoryview(buf).cast("B")
        length = len(mv)
        first, last = self._span(offset, length)
        if length == 0:
            return 0
        if _aligned(offset, length):
            self._session.read_into(first, mv)
        else:
            mv[:] = self.read(offset, length)
        return length

    def confirm_owner(self) -> None:
        """For a disk opened with ``defer_owner_check``: wait out the grace, then raise
        OwnerUnsettledError if a MAC that is none of the paths answered for the address
        meanwhile (nothing is known yet of what it serves: open the disk again without
        deferring to learn whether it is another path or another disk). Returns at once
        once settled, and for a disk opened the usual way. Not on the session's thread."""
        if self._owner_check_at is None:
            return
        with self._owner_lock:
            at = self._owner_check_at
            if at is None:
                return
            others = self._session.other_macs_by(at)
            if others:
                heard = ", ".join(f"{mac} on {ifname}" for ifname, mac in others)
                raise OwnerUnsettledError(
                    f"{self.info.address} was answered by one more MAC after discovery "
                    f"({heard})")
            self._owner_check_at = None

    def write(self, offset: int, data: Buffer) -> None:
        """Write ``data`` at ``offset``; returns once the target acknowledged every sector."""
        mv = memoryview(data).cast("B")
        length = len(mv)
        first, last = self._span(offset, length)
        if self._read_only:
            raise TargetReadOnlyError(f"target {self.info.address} is open read-only")
        if length == 0:
            return
        self.confirm_owner()
        head = offset - first * SECTOR_SIZE
        with self._locks.hold(first, last):
            try:
                if _aligned(offset, length):
                    self._session.write_from(first, mv)
                    return
                merged = bytearray((last - first) * SECTOR_SIZE)
                whole = memoryview(merged)
                if head or last - first == 1:
                    self._session.read_into(first, whole[:SECTOR_SIZE])
                if last - 1 > first and (head + length) % SECTOR_SIZE:
                    self._session.read_into(last - 1, whole[-SECTOR_SIZE:])
                whole[head : head + length] = mv
                self._session.write_from(first, whole)
            except TargetReadOnlyError:
                self._read_only = True
                raise

    # --- asynchronous: for servers that answer from the session's I/O thread --------------
    def submit_read(self, offset: int, buf: memoryview,
                    on_done: Callable[[BaseException | None], None]) -> bool:
        """Start filling ``buf`` from ``offset`` without waiting; ``on_done(error)`` is
        called on the session's I/O thread when it ends. Only sector-aligned requests go
        this way: False (nothing started) asks the caller to use :meth:`readinto`."""
        length = len(buf)
        if not self._submittable(offset, length):
            return False
        self._session.submit_read(offset // SECTOR_SIZE, buf, lambda req: on_done(req.error))
        return True

    def submit_write(self, offset: int, data: memoryview,
                     on_done: Callable[[BaseException | None], None]) -> bool:
        """Start writing sector-aligned ``data`` at ``offset`` without waiting (``data``
        must stay unchanged until ``on_done(error)``). False, with nothing started, when
        the request is not aligned or overlaps a write in progress, or while a deferred
        owner check is not settled: use :meth:`write`."""
        length = len(data)
        whole = self._submittable(offset, length)
        if self._read_only:
            raise TargetReadOnlyError(f"target {self.info.address} is open read-only")
        if not whole or self._owner_check_at is not None:
            return False
        first = offset // SECTOR_SIZE
        span = self._locks.try_take(first, first + length // SECTOR_SIZE)
        if span is None:
            return False

        def finished(req: Request) -> None:
            self._locks.give_back(span)
            if isinstance(req.error, TargetReadOnlyError):
                self._read_only = True
            on_done(req.error)

        try:
            self._session.submit_write(first, data, finished)
        except BaseException:
            self._locks.give_back(span)
            raise
        return True

    def add_completion_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` on the I/O thread after each round of ``on_done`` calls (a server
        sends that round's replies together)."""
        self._session.add_completion_hook(hook)

    def remove_completion_hook(self, hook: Callable[[], None]) -> None:
        self._session.remove_completion_hook(hook)

    def watch(self, fd: int, on_ready: Callable[[], None],
              on_end: Callable[[], None]) -> None:
        """Have the session's I/O thread call ``on_ready`` when ``fd`` is readable (a
        server reading its client there; see :meth:`Session.watch`)."""
        self._session.watch(fd, on_ready, on_end)

    def unwatch(self, fd: int) -> None:
        self._session.unwatch(fd)

    def flush(self) -> None:
        """Ask the target to commit acknowledged writes to stable storage."""
        self._check_open()
        self.confirm_owner()
        if self.info.flush_cache_ext and self._session.lba48:
            self._session.flush(extended=True)
        elif self.info.flush_cache or self.info.flush_cache_ext:
            self._session.flush(extended=False)
        # A device announcing no FLUSH CACHE has no volatile cache to flush.

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._session.close()

    def __enter__(self) -> AoeDisk:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- extras -------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self.info.address

    @property
    def lba48(self) -> bool:
        return self._session.lba48

    @property
    def session(self) -> Session:
        return self._session

    def stats(self) -> SessionStats:
        return self._session.stats()

    def __repr__(self) -> str:
        return f"AoeDisk({self.address}, size={self.size}, paths={len(self.info.paths)})"

    def _check_open(self) -> None:
        if self._closed:
            raise DiskClosedError(f"AoE disk {self.address} is closed")

    def _submittable(self, offset: int, length: int) -> bool:
        """Whether a request may go the asynchronous way: inside the disk (else the error
        :meth:`_span` raises), whole sectors, not empty."""
        self._span(offset, length)
        return length > 0 and _aligned(offset, length)

    def _span(self, offset: int, length: int) -> tuple[int, int]:
        """First sector and one past the last sector covering [offset, offset+length)."""
        self._check_open()
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"range {offset}+{length} is outside the disk ({self.size} bytes)"
            )
        return offset // SECTOR_SIZE, -(-(offset + length) // SECTOR_SIZE)


def _learn_identity(session: Session, info: TargetInfo, lba48: bool | None) -> None:
    """IDENTIFY through the session (so reservation and death raise proper errors)."""
    try:
        ident = parse_identify(session.identify())
    except DecodeError as exc:
        raise InitiatorError(f"target {info.address} sent a bad IDENTIFY page: {exc}") from None
    info.sectors = ident.sectors
    info.model, info.serial, info.firmware = ident.model, ident.serial, ident.firmware
    info.lba48 = ident.lba48
    info.flush_cache, info.flush_cache_ext = ident.flush_cache, ident.flush_cache_ext
    info.identify_error = None
    use48 = ident.lba48 if lba48 is None else lba48
    if not use48 and ident.sectors > LBA28_MAX_SECTORS:
        raise InitiatorError(
            f"target {info.address} has {ident.sectors} sectors: LBA28 cannot reach them all"
        )
    if use48 and not ident.lba48:
        raise InitiatorError(f"target {info.address} does not support LBA48 commands")
    session.lba48 = use48
