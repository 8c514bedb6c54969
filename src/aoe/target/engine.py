"""The request engine: received frames in, response frames out. No sockets here.

Two paths share the same ATA semantics:

* the fast path answers unicast ATA requests in the very buffers they arrived in.
  :meth:`Engine.respond_batch` takes a whole burst (what the serve loop uses): each plain
  READ is checked with one ``struct`` unpack, its header rewritten in place, and the
  sectors of adjacent reads are ``preadv``-ed with one call straight behind their headers,
  so replies are sent from where the requests were received, without building objects or
  copying payload. :meth:`Engine.respond_in_place` does the same for one frame;
* the general path, :meth:`Engine.respond_slow`, handles everything else (Query Config,
  MAC Mask List, Reserve/Release, broadcast addresses, guarded exports, bad versions and
  unknown commands) with the protocol module's typed frames.

:meth:`Engine.handle` is the sans-I/O entry used by tests and simple loops: bytes in, a list
of padded frames out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from .. import accel
from ..protocol import fastpath as fp
from ..protocol import frames as fr
from ..protocol.ata import POWER_MODE_ACTIVE, AtaErrorBits, AtaOpcode, AtaStatus
from ..protocol.constants import (
    AOE_VERSION,
    ATA_HEADER_LEN,
    BROADCAST_MAC,
    BROADCAST_SHELF,
    BROADCAST_SLOT,
    ETH_MIN_FRAME,
    ETHERTYPE_AOE,
    SECTOR_SIZE,
    Command,
    ConfigCommand,
    DirectiveCommand,
    HeaderFlag,
    MaskCommand,
    MaskError,
    ReserveCommand,
    max_sectors_for_mtu,
)
from ..protocol.errors import AoeError, DecodeError
from ..protocol.mac import format_mac
from . import counters as ck
from .counters import Counters
from .store import Store

log = logging.getLogger("aoe.target")

# The compiled burst path (_burst.c), when the install could build it. AOE_ACCEL=0 keeps
# the pure-Python path, which is the reference either way.
BurstFn = Callable[[list[memoryview], Sequence[int], int, int, list[int], bytes,
                    dict[bytes, Store], int, float],
                   tuple[int, int, int, int, int, int,
                         tuple[Store, bool, int, int, list[int]] | None]]


def _load_burst() -> BurstFn | None:
    if not accel.wanted():
        return None
    try:
        from ._burst import burst
    except ImportError:
        return None
    return burst


COMPILED_BURST: BurstFn | None = _load_burst()

HEADER = fr.HEADER
ATA_ARGS = fr.ATA_ARGS
_HDR_UNPACK = HEADER.unpack_from
_TAG_UNPACK = fp.TAG.unpack_from
_HDR_PACK = HEADER.pack_into
_ATA_UNPACK = ATA_ARGS.unpack_from
_REQ_UNPACK = fp.ATA_REQUEST_FIELDS.unpack_from  # the request fields the fast path needs
_REPLY_HEAD = fp.REPLY_HEAD.pack_into
_ETYPE = fp.ETHERTYPE_RAW

FIRMWARE_VERSION = 0x0010  # 0.1.0
DEFAULT_BUFFER_COUNT = 16
_REQ_VERFLAGS = AOE_VERSION << 4  # version 1, no flags: what a plain request carries
_RESP = (AOE_VERSION << 4) | HeaderFlag.RESPONSE
_RESP_ERR = _RESP | HeaderFlag.ERROR
_DRDY = int(AtaStatus.DRDY)
_ERR_STATUS = int(AtaStatus.DRDY | AtaStatus.ERR)
_ABRT = int(AtaErrorBits.ABRT)
_IDNF = int(AtaErrorBits.IDNF | AtaErrorBits.ABRT)
_UNC = int(AtaErrorBits.UNC | AtaErrorBits.ABRT)
_PAD = bytes(ETH_MIN_FRAME)
_PAD_ACK = _PAD[ATA_HEADER_LEN:]  # what follows the header of a write's reply
Buf = bytearray | memoryview  # a receive slot or scratch buffer, written in place
_ZERO_SECTOR = bytes(SECTOR_SIZE)
_LBA28_MASK = 0x0FFFFFFF
_EXT_FLAG = 0x40
_WRITE_FLAG = 0x01

# opcode -> (is_write, is_ext)
_RW: dict[int, tuple[bool, bool]] = {
    AtaOpcode.READ_SECTORS: (False, False),
    AtaOpcode.READ_SECTORS_EXT: (False, True),
    AtaOpcode.WRITE_SECTORS: (True, False),
    AtaOpcode.WRITE_SECTORS_EXT: (True, True),
}

# SMART (0xB0): the feature register selects the subcommand; LBA mid/high carry a signature.
SMART_READ_DATA = 0xD0
SMART_ENABLE = 0xD8
SMART_DISABLE = 0xD9
SMART_RETURN_STATUS = 0xDA
SMART_SIGNATURE = (0x4F, 0xC2)  # LBA mid, LBA high; also the "no threshold exceeded" answer

_AOE_ERROR_KIND = {
    AoeError.UNRECOGNIZED_COMMAND: ck.AOE_UNRECOGNIZED,
    AoeError.BAD_ARGUMENT: ck.AOE_BAD_ARGUMENT,
    AoeError.CONFIG_STRING_PRESENT: ck.AOE_CONFIG_PRESENT,
    AoeError.UNSUPPORTED_VERSION: ck.AOE_UNSUPPORTED_VERSION,
    AoeError.TARGET_RESERVED: ck.AOE_RESERVED,
}


def _smart_data_page() -> bytes:
    """A minimal SMART READ DATA page: revision 1, offline collection done, no attributes."""
    page = bytearray(SECTOR_SIZE)
    page[0] = 0x01  # data structure revision
    page[362] = 0x02  # off-line data collection: completed without error
    page[367] = 0x00  # self-test execution status: completed
    page[511] = (-sum(page[:511])) & 0xFF
    return bytes(page)


SMART_DATA_PAGE = _smart_data_page()


class Engine:
    """Answers AoE requests for a set of exports on one interface (one MAC, one MTU).

    ``exports`` are shared between engines of several interfaces; the engine only reads
    and updates them. ``buffer_count`` is what Query Config announces as the number of
    outstanding requests the target can queue.
    """

    def __init__(
        self,
        exports: Sequence[Store],
        mac: bytes,
        mtu: int,
        counters: Counters | None = None,
        buffer_count: int = DEFAULT_BUFFER_COUNT,
    ) -> None:
        if len(mac) != 6:
            raise ValueError("mac must be 6 bytes")
        self.mac = bytes(mac)
        self.mtu = mtu
        self.max_sectors = max_sectors_for_mtu(mtu)
        if self.max_sectors < 1:
            raise ValueError(f"MTU {mtu} cannot carry one sector per frame (needs >= 548)")
        self.buffer_count = max(1, min(0xFFFF, buffer_count))
        self.counters = counters if counters is not None else Counters()
        self._debug = log.isEnabledFor(logging.DEBUG)  # -vv: log every general-path request
        self.exports: list[Store] = list(exports)
        self._by_key: dict[int, Store] = {}
        for e in self.exports:
            if e.key in self._by_key:
                raise ValueError(f"two exports share the address {e.shelf}.{e.slot}")
            self._by_key[e.key] = e
        self._by_addr: dict[bytes, Store] = {
            fp.address_key(e.shelf, e.slot): e for e in self.exports
        }
        # Room for the largest frame the MTU allows (Ethernet header included).
        self.frame_size = max(mtu + 14, ATA_HEADER_LEN + SECTOR_SIZE + 64)
        self._scratch = bytearray(self.frame_size)
        self._scratch_mv = memoryview(self._scratch)
        # What fits in one frame at this MTU: mask list and reserve list entries.
        self._mask_room = min(255, (self.frame_size - fr.MASK_ARGS.size - HEADER.size) // 8)
        self._reserve_room = min(255, (self.frame_size - fr.RESERVE_ARGS.size - HEADER.size) // 6)
        self.now = 0.0  # wall-clock time of the current burst (set by the server loop)
        self._compiled: BurstFn | None = None  # the compiled burst path, when it serves
        self._pick_burst_path()

    @property
    def accelerated(self) -> bool:
        """Whether bursts go through the compiled path (_burst.c)."""
        return self._compiled is not None

    def _pick_burst_path(self) -> None:
        """The compiled path serves bursts unless it is missing or an export reads and
        writes through O_DIRECT's bounce buffer, which only the Python path has."""
        direct = any(e.direct for e in self.exports)
        self._compiled = None if direct else COMPILED_BURST

    def set_exports(self, exports: Sequence[Store]) -> None:
        """Serve exactly ``exports`` from the next frame on (between bursts: a reload)."""
        by_key = {e.key: e for e in exports}
        if len(by_key) != len(exports):
            raise ValueError("two exports share an address")
        self._by_addr = {e.shelf.to_bytes(2, "big") + bytes([e.slot]): e for e in exports}
        self._by_key = by_key
        self.exports = list(exports)
        self._pick_burst_path()

    # --- public entry points ------------------------------------------------------------
    def handle(self, frame: bytes | bytearray | memoryview) -> list[bytes]:
        """Sans-I/O entry: the response frames (each at least 60 bytes) for one frame."""
        n = len(frame)
        self.counters.frames_in += 1
        if n <= self.frame_size:
            self._scratch[:n] = frame
            r = self.respond_in_place(self._scratch, self._scratch_mv, n)
            if r >= 0:
                if r == 0:
                    return []
                self.counters.frames_out += 1
                return [bytes(self._scratch_mv[:r])]
        out = self.respond_slow(bytes(frame))
        self.counters.frames_out += len(out)
        return out

    def respond_in_place(self, buf: Buf, mv: memoryview, n: int) -> int:
        """Fast path. Returns the reply length (reply written into ``buf``), 0 to drop the
        frame, or -1 when the frame needs :meth:`respond_slow` (``buf`` left untouched).

        ``buf`` must have room for :attr:`frame_size` bytes and ``mv`` must view it.
        Counts everything but ``frames_in``/``frames_out``, which the caller owns.
        """
        if n < ATA_HEADER_LEN:
            return -1
        dst, src, etype, vf, _err, shelf, slot, cmd, tag = _HDR_UNPACK(buf)
        if vf != _REQ_VERFLAGS or cmd != 0 or dst != self.mac or etype != ETHERTYPE_AOE:
            return -1
        exp = self._by_key.get((shelf << 8) | slot)
        if exp is None or exp.guarded:
            return -1
        peer = exp.peers.get(src)
        if peer is None:
            peer = exp.new_peer(src)
        peer[0] += 1
        peer[1] = self.now
        return self._ata(buf, mv, n, exp, src, tag)

    def respond_batch(self, views: Sequence[memoryview], lengths: Sequence[int], n: int,
                      out: list[int]) -> int:
        """Answer a burst in place (see :meth:`_respond_batch_python`): through the
        compiled path when it serves (:attr:`accelerated`), else the Python path."""
        burst = self._compiled
        if burst is None:
            return self._respond_batch_python(views, lengths, n, out)
        return self._respond_batch_compiled(burst, views, lengths, n, out)

    def _respond_batch_compiled(self, burst: BurstFn, views: Sequence[memoryview],
                                lengths: Sequence[int], n: int, out: list[int]) -> int:
        """The burst through _burst.c, which answers the plain READs and WRITEs exactly as
        :meth:`_respond_batch_python` does and hands back, in order, each frame it leaves
        to the general code (answered here with :meth:`respond_in_place`) and each run the
        store did not take whole (finished here with :meth:`_flush_run`)."""
        c = self.counters
        mac = self.mac
        by_addr = self._by_addr
        max_sectors = self.max_sectors
        now = self.now
        views = views if type(views) is list else list(views)
        i = replies = 0
        while i < n:
            i, done, reads, bread, writes, bwritten, failed = burst(
                views, lengths, i, n, out, mac, by_addr, max_sectors, now)
            replies += done
            if reads:
                c.reads += reads
                c.bytes_read += bread
            if writes:
                c.writes += writes
                c.bytes_written += bwritten
            if failed is not None:
                exp, write, pos, end, idx = failed
                bufs = [views[j][ATA_HEADER_LEN : ATA_HEADER_LEN + (views[j][26] << 9)]
                        for j in idx]
                self._flush_run(exp, write, pos, end, bufs, idx, views, out)
                continue
            if i < n:
                v = views[i]
                r = self.respond_in_place(v, v, lengths[i])
                out[i] = r
                if r > 0:
                    replies += 1
                i += 1
        return replies

    def _respond_batch_python(self, views: Sequence[memoryview], lengths: Sequence[int],
                              n: int, out: list[int]) -> int:
        """Fast path for a burst: answer frames ``views[0..n-1]`` in place.

        ``out[i]`` receives what :meth:`respond_in_place` would return for frame i (reply
        length, 0 to drop, -1 for :meth:`respond_slow`). A plain READ or WRITE is checked
        with one ``struct`` unpack and its reply header is made by swapping addresses in
        place. Consecutive requests of one kind on adjacent sectors form a run that the store
        takes with one call: reads land straight in the reply slots, writes go from the
        slots they arrived in (their replies are only sent after
        that returned, so nothing is acknowledged before the store has it). Anything else
        goes through :meth:`_ata` after the pending run is done, so requests still take
        effect in arrival order. Returns the number of replies.
        """
        mac = self.mac
        by_addr = self._by_addr
        max_sectors = self.max_sectors
        unpack = _REQ_UNPACK
        reply_head = _REPLY_HEAD
        run: list[memoryview] = []  # data views of the pending run of adjacent requests
        run_idx: list[int] = []
        run_exp: Store | None = None
        run_write = False
        run_pos = run_end = 0
        replies = 0
        flush = self._flush_run
        now = self.now
        for i in range(n):
            v = views[i]
            length = lengths[i]
            if length < ATA_HEADER_LEN:
                out[i] = -1
                continue
            dst, src, etype, vf, addr, cmd, aflags, count, op, lo, hi = unpack(v)
            if vf != _REQ_VERFLAGS or cmd or dst != mac or etype != _ETYPE:
                out[i] = -1
                continue
            exp = by_addr.get(addr)
            if exp is None or exp.guarded:
                out[i] = -1
                continue
            peer = exp.peers.get(src)
            if peer is None:
                peer = exp.new_peer(src)
            peer[0] += 1
            peer[1] = now
            if 0 < count <= max_sectors:
                nbytes = count << 9
                end = ATA_HEADER_LEN + nbytes
                if op == 0x24 or op == 0x20:
                    write = False
                    plain = not aflags & _WRITE_FLAG
                else:
                    write = True
                    plain = ((op == 0x34 or op == 0x30) and aflags & _WRITE_FLAG
                             and not exp.read_only and length >= end)
                if plain:
                    lba = (lo | (hi << 32)) if (op & 0x04 or aflags & _EXT_FLAG) else (
                        lo & _LBA28_MASK)
                    if lba + count <= exp.sectors:
                        # Reply header in place: dst <- src, src <- us, response, no error.
                        reply_head(v, 0, src, mac, etype, _RESP, 0)
                        v[25] = 0
                        v[27] = _DRDY
                        pos = exp.base + (lba << 9)
                        if run_exp is exp and pos == run_end and run_write == write:
                            run.append(v[ATA_HEADER_LEN:end])
                            run_idx.append(i)
                            run_end += nbytes
                        else:
                            if run:
                                flush(run_exp, run_write, run_pos, run_end, run, run_idx,  # type: ignore[arg-type]
                                      views, out)
                            run = [v[ATA_HEADER_LEN:end]]
                            run_idx = [i]
                            run_exp = exp
                            run_write = write
                            run_pos = pos
                            run_end = pos + nbytes
                        out[i] = ETH_MIN_FRAME if write else end
                        replies += 1
                        continue
            if run:
                flush(run_exp, run_write, run_pos, run_end, run, run_idx, views, out)  # type: ignore[arg-type]
                run = []
                run_exp = None
            tag = _TAG_UNPACK(v, 20)[0]
            r = self._ata(v, v, length, exp, src, tag)
            out[i] = r
            if r:
                replies += 1
        if run:
            flush(run_exp, run_write, run_pos, run_end, run, run_idx, views, out)  # type: ignore[arg-type]
        return replies

    def _flush_run(self, exp: Store, write: bool, pos: int, end: int,
                   bufs: list[memoryview], idx: list[int], views: Sequence[memoryview],
                   out: list[int]) -> None:
        """Carry out a run of adjacent validated requests of one kind with one call."""
        if write:
            self._write_run(exp, pos, end, bufs, idx, views, out)
        else:
            self._read_run(exp, pos, end, bufs, idx, views, out)

    def _write_run(self, exp: Store, pos: int, end: int, bufs: list[memoryview],
                   idx: list[int], views: Sequence[memoryview], out: list[int]) -> None:
        """Store the data of a run of adjacent writes with one store call, then finish their
        (already addressed) 60-byte replies."""
        c = self.counters
        want = end - pos
        try:
            got = exp.writev_from(bufs, pos)
        except OSError as exc:
            log.warning("write_failed", extra={"export": exp.spec.name, "err": str(exc)})
            got = -1
        if got == want:
            c.writes += len(bufs)
            c.bytes_written += want
            exp.bytes_written += want
            for i in idx:
                views[i][ATA_HEADER_LEN:ETH_MIN_FRAME] = _PAD_ACK
            return
        # Short or failed: write each frame alone so only those that really fail get the
        # error (rewriting what did land is harmless: same data, same place).
        for view, i in zip(bufs, idx, strict=True):
            p = pos
            pos += len(view)
            try:
                ok = exp.write_from(view, p) == len(view)
            except OSError:
                ok = False
            if ok:
                c.writes += 1
                c.bytes_written += len(view)
                exp.bytes_written += len(view)
                views[i][ATA_HEADER_LEN:ETH_MIN_FRAME] = _PAD_ACK
            else:
                self._ata_error_rewrite(views[i], exp, _UNC, ck.ATA_IO)
                out[i] = ETH_MIN_FRAME

    def _read_run(self, exp: Store, pos: int, end: int, bufs: list[memoryview],
                  idx: list[int], views: Sequence[memoryview], out: list[int]) -> None:
        """Fill the data of a run of adjacent validated reads with one store call."""
        c = self.counters
        want = end - pos
        try:
            got = exp.readv_into(bufs, pos)
        except OSError as exc:
            log.warning("read_failed", extra={"export": exp.spec.name, "err": str(exc)})
            got = -1
        if got == want:
            c.reads += len(bufs)
            c.bytes_read += want
            exp.bytes_read += want
            return
        # Retry each frame alone so only the ones that really fail get the error.
        for view, i in zip(bufs, idx, strict=True):
            p = pos
            pos += len(view)
            try:
                ok = exp.read_into(view, p) == len(view)
            except OSError:
                ok = False
            if ok:
                c.reads += 1
                c.bytes_read += len(view)
                exp.bytes_read += len(view)
            else:
                self._ata_error_rewrite(views[i], exp, _UNC, ck.ATA_IO)
                out[i] = ETH_MIN_FRAME

    def _ata_error_rewrite(self, buf: memoryview, exp: Store, err: int, kind: str) -> None:
        """Turn a reply header already written into an ATA error reply (keeps the tag)."""
        self.counters.error(kind)
        exp.errors += 1
        buf[25] = err
        buf[27] = _ERR_STATUS
        buf[ATA_HEADER_LEN:ETH_MIN_FRAME] = _PAD[ATA_HEADER_LEN:]

    def respond_slow(self, frame: bytes) -> list[bytes]:
        """General path: any frame, any command; zero or more padded response frames."""
        c = self.counters
        n = len(frame)
        if n < HEADER.size:
            c.error(ck.DECODE)
            return []
        dst, src, etype, vf, _err, shelf, slot, cmd, tag = _HDR_UNPACK(frame)
        if etype != ETHERTYPE_AOE:
            c.error(ck.DECODE)
            return []
        if vf & HeaderFlag.RESPONSE:
            c.ignored += 1  # another target's answer, or our own echo
            return []
        if dst != self.mac and dst != BROADCAST_MAC:
            c.ignored += 1
            return []
        targets = self._match(shelf, slot)
        if not targets:
            c.ignored += 1
            return []
        out: list[bytes] = []
        for exp in targets:
            reply = self._answer_one(frame, exp, src, vf, cmd, tag)
            if reply is not None:
                out.append(reply)
        if self._debug:
            log.debug("request", extra={"src": format_mac(src), "target": f"{shelf}.{slot}",
                                        "command": cmd, "tag": tag, "replies": len(out)})
        return out

    def _answer_one(self, frame: bytes, exp: Store, src: bytes, vf: int, cmd: int,
                    tag: int) -> bytes | None:
        """One export's answer to a request addressed to it (None: no answer)."""
        if exp.masks and src not in exp.masks:
            self.counters.error(ck.ACL)
            exp.errors += 1
            return None
        peer = exp.peers.get(src)
        if peer is None:
            peer = exp.new_peer(src)
        peer[0] += 1
        peer[1] = self.now
        if vf >> 4 != AOE_VERSION:
            return self._aoe_error(frame, exp, src, AoeError.UNSUPPORTED_VERSION, 24)
        if cmd == Command.ATA:
            return self._ata_copy(frame, exp, src, tag)
        if cmd == Command.QUERY_CONFIG:
            return self._query_config(frame, exp, src)
        if cmd == Command.MAC_MASK_LIST:
            return self._mac_mask(frame, exp, src)
        if cmd == Command.RESERVE_RELEASE:
            return self._reserve(frame, exp, src)
        return self._aoe_error(frame, exp, src, AoeError.UNRECOGNIZED_COMMAND, len(frame))

    def announcements(self, only: Sequence[Store] | None = None) -> list[bytes]:
        """Unsolicited Query Config answers, one per export: broadcast, or sent to each MAC of
        a non-empty mask list, so initiators that came up first discover this target."""
        out = []
        keep = None if only is None else {id(e) for e in only}
        for exp in self.exports:
            if keep is not None and id(exp) not in keep:
                continue
            body = self._config_body(exp, ConfigCommand.READ)
            dests = exp.mask_list() or [BROADCAST_MAC]
            for dst in dests:
                f = fr.Frame(dst, self.mac, exp.shelf, exp.slot, Command.QUERY_CONFIG, 0, body,
                             int(HeaderFlag.RESPONSE))
                out.append(fr.encode(f, pad=True))
        return out

    # --- addressing -----------------------------------------------------------------
    def _match(self, shelf: int, slot: int) -> list[Store]:
        if shelf != BROADCAST_SHELF and slot != BROADCAST_SLOT:
            e = self._by_key.get((shelf << 8) | slot)
            return [e] if e is not None else []
        return [
            e
            for e in self.exports
            if (shelf == BROADCAST_SHELF or shelf == e.shelf)
            and (slot == BROADCAST_SLOT or slot == e.slot)
        ]

    # --- ATA ------------------------------------------------------------------------
    def _ata_copy(self, frame: bytes, exp: Store, src: bytes, tag: int) -> bytes | None:
        n = len(frame)
        # A frame longer than the MTU allows can only come from a test harness; its first
        # frame_size bytes hold everything a valid request can use.
        keep = min(n, self.frame_size)
        buf = self._scratch
        buf[:keep] = frame[:keep]
        r = self._ata(buf, self._scratch_mv, n, exp, src, tag)
        return bytes(self._scratch_mv[:r]) if r else None

    def _ata(self, buf: Buf, mv: memoryview, n: int, exp: Store, src: bytes,
             tag: int) -> int:
        """Execute one ATA request held in ``buf`` and write the reply over it."""
        c = self.counters
        if n < ATA_HEADER_LEN:
            c.error(ck.DECODE)
            return 0
        aflags, feature, count, op, lo, hi = _ATA_UNPACK(buf, 24)
        rw = _RW.get(op)
        if rw is not None:
            is_write, ext = rw
            if count > self.max_sectors:
                return self._aoe_error_in_place(buf, exp, src, tag, AoeError.BAD_ARGUMENT)
            nbytes: int = count << 9
            if is_write != bool(aflags & _WRITE_FLAG):
                return self._ata_error(buf, exp, src, tag, _ABRT, ck.ATA_ABORTED)
            end: int = ATA_HEADER_LEN + nbytes
            if is_write and n < end:
                c.error(ck.DECODE)  # the W flag promises data the frame does not carry
                return 0
            lba = (lo | (hi << 32)) if (ext or aflags & _EXT_FLAG) else lo & _LBA28_MASK
            if lba + count > exp.sectors:
                return self._ata_error(buf, exp, src, tag, _IDNF, ck.ATA_OUT_OF_RANGE)
            pos = exp.base + (lba << 9)
            if is_write:
                return self._ata_write(buf, mv[ATA_HEADER_LEN:end], nbytes, exp, src, tag, pos)
            if nbytes:
                try:
                    done = exp.read_into(mv[ATA_HEADER_LEN:end], pos)
                except OSError as exc:
                    log.warning("read_failed", extra={"export": exp.spec.name, "err": str(exc)})
                    done = -1
                if done != nbytes:
                    return self._ata_error(buf, exp, src, tag, _UNC, ck.ATA_IO)
            c.reads += 1
            c.bytes_read += nbytes
            exp.bytes_read += nbytes
            return self._ata_ok(buf, exp, src, tag, end)
        return self._ata_other(buf, exp, src, tag, aflags, feature, count, op, lo)

    def _ata_write(self, buf: Buf, data: memoryview, nbytes: int, exp: Store, src: bytes,
                   tag: int, pos: int) -> int:
        """Store a validated WRITE's ``nbytes`` of data at byte ``pos``, then write its reply
        over it (an error reply if the store took less)."""
        if exp.read_only:
            return self._ata_error(buf, exp, src, tag, _ABRT, ck.ATA_READ_ONLY)
        if exp.reserved and src not in exp.reserved:
            return self._aoe_error_in_place(buf, exp, src, tag, AoeError.TARGET_RESERVED)
        try:
            done = exp.write_from(data, pos) if nbytes else 0
        except OSError as exc:
            log.warning("write_failed", extra={"export": exp.spec.name, "err": str(exc)})
            done = -1
        if done != nbytes:
            return self._ata_error(buf, exp, src, tag, _UNC, ck.ATA_IO)
        c = self.counters
        c.writes += 1
        c.bytes_written += nbytes
        exp.bytes_written += nbytes
        return self._ata_ok(buf, exp, src, tag, ATA_HEADER_LEN)

    def _ata_ok(self, buf: Buf, exp: Store, src: bytes, tag: int, end: int) -> int:
        """Write a successful ATA reply's headers over the request in ``buf`` (its data,
        if any, already in place up to ``end``); returns the frame's length, padded to
        the Ethernet minimum."""
        _HDR_PACK(buf, 0, src, self.mac, ETHERTYPE_AOE, _RESP, 0, exp.shelf, exp.slot, 0, tag)
        buf[25] = 0
        buf[27] = _DRDY
        if end < ETH_MIN_FRAME:
            buf[end:ETH_MIN_FRAME] = _PAD[end:]
            return ETH_MIN_FRAME
        return end

    def _ata_other(self, buf: Buf, exp: Store, src: bytes, tag: int, aflags: int,
                   feature: int, count: int, op: int, lo: int) -> int:
        """The non-data-path ATA commands: IDENTIFY, FLUSH, CHECK POWER MODE, SMART."""
        c = self.counters
        data: bytes | None = None
        if op == AtaOpcode.IDENTIFY_DEVICE:
            data = exp.identify_page
        elif op == AtaOpcode.FLUSH_CACHE or op == AtaOpcode.FLUSH_CACHE_EXT:
            if not exp.read_only:
                try:
                    exp.flush()
                except OSError as exc:
                    log.warning("flush_failed", extra={"export": exp.spec.name, "err": str(exc)})
                    return self._ata_error(buf, exp, src, tag, _ABRT, ck.ATA_IO)
            c.flushes += 1
        elif op == AtaOpcode.CHECK_POWER_MODE:
            count = POWER_MODE_ACTIVE
        elif op == AtaOpcode.SMART:
            mid, high = (lo >> 8) & 0xFF, (lo >> 16) & 0xFF
            if (mid, high) != SMART_SIGNATURE:
                return self._ata_error(buf, exp, src, tag, _ABRT, ck.ATA_ABORTED)
            if feature == SMART_READ_DATA:
                data = SMART_DATA_PAGE
            elif feature in (SMART_RETURN_STATUS, SMART_ENABLE, SMART_DISABLE):
                # Non-data commands; the answer still carries one (zero) sector because
                # common tools read SMART answers as one sector long.
                data = _ZERO_SECTOR
            else:
                return self._ata_error(buf, exp, src, tag, _ABRT, ck.ATA_ABORTED)
        else:
            return self._ata_error(buf, exp, src, tag, _ABRT, ck.ATA_ABORTED)
        _HDR_PACK(buf, 0, src, self.mac, ETHERTYPE_AOE, _RESP, 0, exp.shelf, exp.slot, 0, tag)
        ATA_ARGS.pack_into(buf, 24, aflags, 0, count, _DRDY, lo & 0xFFFFFFFF, 0)
        if data is None:
            buf[ATA_HEADER_LEN:ETH_MIN_FRAME] = _PAD[ATA_HEADER_LEN:]
            return ETH_MIN_FRAME
        end = ATA_HEADER_LEN + len(data)
        buf[ATA_HEADER_LEN:end] = data
        return end

    def _ata_error(self, buf: Buf, exp: Store, src: bytes, tag: int, err: int,
                   kind: str) -> int:
        """An ATA-level failure: AoE success, ATA status ERR with ``err`` bits set."""
        self.counters.error(kind)
        exp.errors += 1
        _HDR_PACK(buf, 0, src, self.mac, ETHERTYPE_AOE, _RESP, 0, exp.shelf, exp.slot, 0, tag)
        buf[25] = err
        buf[27] = _ERR_STATUS
        buf[ATA_HEADER_LEN:ETH_MIN_FRAME] = _PAD[ATA_HEADER_LEN:]
        return ETH_MIN_FRAME

    def _aoe_error_in_place(self, buf: Buf, exp: Store, src: bytes, tag: int,
                            code: AoeError) -> int:
        """An AoE-level error answering an ATA request: arguments echoed, no data."""
        self.counters.error(_AOE_ERROR_KIND[code])
        exp.errors += 1
        _HDR_PACK(buf, 0, src, self.mac, ETHERTYPE_AOE, _RESP_ERR, int(code), exp.shelf,
                  exp.slot, 0, tag)
        buf[ATA_HEADER_LEN:ETH_MIN_FRAME] = _PAD[ATA_HEADER_LEN:]
        return ETH_MIN_FRAME

    # --- AoE errors for the general path -------------------------------------------
    def _aoe_error(self, frame: bytes, exp: Store, src: bytes, code: AoeError,
                   echo: int) -> bytes:
        """Echo the first ``echo`` bytes of the request with the error flag and code set."""
        self.counters.error(_AOE_ERROR_KIND[code])
        exp.errors += 1
        _, _, _, _, _, _, _, cmd, tag = _HDR_UNPACK(frame)
        head = HEADER.pack(src, self.mac, ETHERTYPE_AOE, _RESP_ERR, int(code), exp.shelf,
                           exp.slot, cmd, tag)
        out = head + frame[HEADER.size : max(HEADER.size, min(echo, self.frame_size))]
        if len(out) < ETH_MIN_FRAME:
            out += _PAD[: ETH_MIN_FRAME - len(out)]
        return out

    def _reply(self, request: fr.Frame, exp: Store, body: fr.Body, error: int = 0) -> bytes:
        resp = fr.response_to(request, self.mac, body, error=error)
        resp.shelf, resp.slot = exp.shelf, exp.slot
        if error:
            self.counters.error(_AOE_ERROR_KIND[AoeError(error)])
            exp.errors += 1
        return fr.encode(resp, pad=True)

    def _decode(self, frame: bytes) -> fr.Frame | None:
        try:
            req = fr.decode(frame)
        except DecodeError as exc:
            self.counters.error(ck.DECODE)
            log.debug("undecodable", extra={"reason": exc.reason, "detail": exc.detail})
            return None
        if isinstance(req.body, bytes):
            # The codec keeps malformed arguments as raw bytes when the error flag is set
            # (lenient for error answers); a request with that flag still needs them.
            self.counters.error(ck.DECODE)
            return None
        return req

    # --- Query Config ----------------------------------------------------------------
    def _config_body(self, exp: Store, ccmd: int) -> fr.ConfigBody:
        return fr.ConfigBody(self.buffer_count, FIRMWARE_VERSION, self.max_sectors, AOE_VERSION,
                             ccmd, exp.config)

    def _query_config(self, frame: bytes, exp: Store, src: bytes) -> bytes | None:
        req = self._decode(frame)
        if req is None:
            return None
        body = req.body
        assert isinstance(body, fr.ConfigBody)
        ccmd, theirs, ours = body.ccmd, body.config, exp.config
        if ccmd == ConfigCommand.READ:
            pass
        elif ccmd == ConfigCommand.TEST:
            if theirs != ours:
                self.counters.ignored += 1
                return None
        elif ccmd == ConfigCommand.TEST_PREFIX:
            if not ours.startswith(theirs):
                self.counters.ignored += 1
                return None
        elif ccmd == ConfigCommand.SET:
            if ours:
                return self._reply(req, exp, self._config_body(exp, ccmd),
                                   AoeError.CONFIG_STRING_PRESENT)
            exp.set_config(theirs)
            log.info("config_set", extra={"export": exp.spec.name, "by": format_mac(src)})
        elif ccmd == ConfigCommand.FORCE_SET:
            exp.set_config(theirs)
            log.info("config_forced", extra={"export": exp.spec.name,
                                                    "by": format_mac(src)})
        else:
            return self._reply(req, exp, self._config_body(exp, ccmd), AoeError.BAD_ARGUMENT)
        return self._reply(req, exp, self._config_body(exp, ccmd))

    # --- MAC Mask List ---------------------------------------------------------------
    def _mac_mask(self, frame: bytes, exp: Store, src: bytes) -> bytes | None:
        req = self._decode(frame)
        if req is None:
            return None
        body = req.body
        assert isinstance(body, fr.MaskBody)
        if body.mcmd == MaskCommand.READ:
            return self._reply(req, exp, self._mask_list_body(exp))
        if body.mcmd != MaskCommand.EDIT:
            return self._reply(req, exp, fr.MaskBody(body.mcmd, 0, []), AoeError.BAD_ARGUMENT)
        masks = exp.mask_list()
        limit = min(self._mask_room, exp.mask_limit)
        merror = MaskError.NONE
        done = 0
        for d in body.directives:
            if d.dcmd == DirectiveCommand.ADD:
                if d.mac not in masks:
                    if len(masks) >= limit:
                        merror = MaskError.LIST_FULL
                        break
                    masks.append(d.mac)
            elif d.dcmd == DirectiveCommand.DELETE:
                if d.mac in masks:
                    masks.remove(d.mac)
            elif d.dcmd != DirectiveCommand.NONE:
                merror = MaskError.BAD_DIRECTIVE
                break
            done += 1
        if masks != exp.mask_list():
            exp.set_masks(masks)  # directives before a failing one stay applied
            log.info("mask_edited", extra={"export": exp.spec.name, "by": format_mac(src),
                                                "masks": [format_mac(m) for m in masks]})
        if merror:
            self.counters.error(ck.MASK_DIRECTIVE)
            # The answer names the directives that were carried out: its count tells the
            # initiator which one failed.
            return self._reply(req, exp, fr.MaskBody(body.mcmd, int(merror),
                                                     body.directives[:done]))
        return self._reply(req, exp, self._mask_list_body(exp, body.mcmd))

    def _mask_list_body(self, exp: Store, mcmd: int = MaskCommand.READ) -> fr.MaskBody:
        return fr.MaskBody(mcmd, 0, [fr.Directive(DirectiveCommand.NONE, m)
                                     for m in exp.mask_list()])

    # --- Reserve/Release -----------------------------------------------------------------
    def _reserve(self, frame: bytes, exp: Store, src: bytes) -> bytes | None:
        req = self._decode(frame)
        if req is None:
            return None
        body = req.body
        assert isinstance(body, fr.ReserveBody)
        rcmd = body.rcmd
        if rcmd == ReserveCommand.READ:
            pass
        elif rcmd == ReserveCommand.SET or rcmd == ReserveCommand.FORCE_SET:
            if rcmd == ReserveCommand.SET and exp.reserved and src not in exp.reserved:
                return self._reply(req, exp, fr.ReserveBody(rcmd, exp.reserve_list()),
                                   AoeError.TARGET_RESERVED)
            if len(body.macs) > self._reserve_room:
                return self._reply(req, exp, fr.ReserveBody(rcmd, exp.reserve_list()),
                                   AoeError.BAD_ARGUMENT)
            exp.set_reservations(body.macs)
            log.info("reserve_set", extra={"export": exp.spec.name, "by": format_mac(src),
                                                "macs": [format_mac(m) for m in body.macs]})
        else:
            return self._reply(req, exp, fr.ReserveBody(rcmd, exp.reserve_list()),
                               AoeError.BAD_ARGUMENT)
        return self._reply(req, exp, fr.ReserveBody(rcmd, exp.reserve_list()))


def all_exports(engines: Iterable[Engine]) -> list[Store]:
    """Distinct exports served by a set of engines, in first-seen order."""
    seen: dict[int, Store] = {}
    for e in engines:
        for x in e.exports:
            seen.setdefault(id(x), x)
    return list(seen.values())
