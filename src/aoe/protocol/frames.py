"""Encode and decode AoE r11 frames: bytes in, typed objects out, and back.

Decoding is strict: anything short, truncated, of the wrong version or internally
inconsistent raises :class:`DecodeError`. Trailing bytes are accepted only as Ethernet
padding, i.e. when the whole frame is no longer than the 60-byte minimum. Semantic checks
(is this ccmd known, is the LBA in range) belong to whoever acts on the frame.

ATA data is returned as a memoryview into the caller's buffer, so decoding a 9000-byte
write costs no copy; take ``bytes(frame.body.data)`` to keep it beyond the buffer's life.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .constants import (
    AOE_HEADER_LEN,
    AOE_VERSION,
    ATA_HEADER_LEN,
    CONFIG_HEADER_LEN,
    ETH_MIN_FRAME,
    ETHERTYPE_AOE,
    MASK_HEADER_LEN,
    MAX_CONFIG_STRING,
    RESERVE_HEADER_LEN,
    SECTOR_SIZE,
    AtaFlag,
    Command,
    HeaderFlag,
)
from .errors import DecodeError

Buffer = bytes | bytearray | memoryview

# dst, src, ethertype, version|flags, error, shelf, slot, command, tag
HEADER = struct.Struct("!6s6sHBBHBBI")
ATA_ARGS = struct.Struct("<BBBBIH2x")  # aflags, err/feature, count, cmd/status, lba 0-3, lba 4-5
CONFIG_ARGS = struct.Struct("!HHBBH")  # buffer count, firmware, sectors, ver|ccmd, string length
MASK_ARGS = struct.Struct("!xBBB")  # mcmd, merror, directive count
DIRECTIVE = struct.Struct("!xB6s")  # dcmd, mac
RESERVE_ARGS = struct.Struct("!BB")  # rcmd, number of MACs

assert HEADER.size == AOE_HEADER_LEN
assert HEADER.size + ATA_ARGS.size == ATA_HEADER_LEN
assert HEADER.size + CONFIG_ARGS.size == CONFIG_HEADER_LEN
assert HEADER.size + MASK_ARGS.size == MASK_HEADER_LEN
assert HEADER.size + RESERVE_ARGS.size == RESERVE_HEADER_LEN


@dataclass(slots=True)
class AtaBody:
    """Command 0: an ATA register set plus the sectors moved."""

    aflags: int = 0
    err_feature: int = 0
    sector_count: int = 0
    cmd_status: int = 0
    lba: int = 0
    data: Buffer = b""

    @property
    def is_write(self) -> bool:
        return bool(self.aflags & AtaFlag.WRITE)

    @property
    def is_extended(self) -> bool:
        return bool(self.aflags & AtaFlag.EXTENDED)


@dataclass(slots=True)
class ConfigBody:
    """Command 1: Query Config Information."""

    buffer_count: int = 0
    firmware: int = 0
    sector_count: int = 0
    aoe_version: int = AOE_VERSION
    ccmd: int = 0
    config: bytes = b""


@dataclass(slots=True)
class Directive:
    """One MAC Mask List entry or edit directive."""

    dcmd: int
    mac: bytes


@dataclass(slots=True)
class MaskBody:
    """Command 2: MAC Mask List."""

    mcmd: int = 0
    merror: int = 0
    directives: list[Directive] = field(default_factory=list)


@dataclass(slots=True)
class ReserveBody:
    """Command 3: Reserve/Release."""

    rcmd: int = 0
    macs: list[bytes] = field(default_factory=list)


Body = AtaBody | ConfigBody | MaskBody | ReserveBody | bytes


@dataclass(slots=True)
class Frame:
    """One AoE frame, Ethernet header included.

    ``body`` is the command-specific part, typed by ``command``. A command this codec does not
    know (vendor commands, 0xF0-0xFF, or garbage) keeps its raw bytes so a target can answer
    "unrecognized command"; so does an error response whose arguments were not echoed.
    """

    dst: bytes
    src: bytes
    shelf: int
    slot: int
    command: int
    tag: int
    body: Body = b""
    flags: int = 0
    error: int = 0
    version: int = AOE_VERSION

    @property
    def is_response(self) -> bool:
        return bool(self.flags & HeaderFlag.RESPONSE)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & HeaderFlag.ERROR)


def _check_mac(mac: bytes, what: str) -> None:
    if len(mac) != 6:
        raise ValueError(f"{what} must be 6 bytes, got {len(mac)}")


def _trailing_ok(total: int, used: int) -> bool:
    return total == used or (total > used and total <= ETH_MIN_FRAME)


def decode(buf: Buffer) -> Frame:
    """Decode one frame; raise :class:`DecodeError` for anything malformed."""
    mv = memoryview(buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    total = len(mv)
    if total < AOE_HEADER_LEN:
        raise DecodeError("short", f"{total} bytes, the AoE header needs {AOE_HEADER_LEN}")
    dst, src, ethertype, verflags, error, shelf, slot, command, tag = HEADER.unpack_from(mv)
    if ethertype != ETHERTYPE_AOE:
        raise DecodeError("ethertype", f"EtherType 0x{ethertype:04x} is not AoE")
    frame = Frame(dst, src, shelf, slot, command, tag, b"", verflags & 0x0F, error, verflags >> 4)
    if frame.version != AOE_VERSION:
        frame.body = bytes(mv[AOE_HEADER_LEN:])
        raise DecodeError("version", f"AoE version {frame.version} is not 1", frame)
    try:
        frame.body = _decode_body(mv, command, frame.flags)
    except DecodeError as exc:
        if frame.flags & HeaderFlag.ERROR:
            # An error answer need not echo complete arguments: keep what came.
            frame.body = bytes(mv[AOE_HEADER_LEN:])
        else:
            exc.header = frame
            frame.body = bytes(mv[AOE_HEADER_LEN:])
            raise
    return frame


def _decode_body(mv: memoryview, command: int, flags: int) -> Body:
    total = len(mv)
    if command == Command.ATA:
        return _decode_ata(mv, total, flags)
    if command == Command.QUERY_CONFIG:
        return _decode_config(mv, total)
    if command == Command.MAC_MASK_LIST:
        return _decode_mask(mv, total)
    if command == Command.RESERVE_RELEASE:
        return _decode_reserve(mv, total)
    return bytes(mv[AOE_HEADER_LEN:])


def _need(total: int, needed: int, what: str) -> None:
    if total < needed:
        raise DecodeError("truncated", f"{what} needs {needed} bytes, frame has {total}")


def _decode_ata(mv: memoryview, total: int, flags: int) -> AtaBody:
    _need(total, ATA_HEADER_LEN, "ATA header")
    aflags, errfeat, count, cmdstat, lba_lo, lba_hi = ATA_ARGS.unpack_from(mv, AOE_HEADER_LEN)
    lba = lba_lo | (lba_hi << 32)
    rest = total - ATA_HEADER_LEN
    if flags & HeaderFlag.RESPONSE:
        # A read answer carries whole sectors; anything else carries none.
        if rest % SECTOR_SIZE and not _trailing_ok(total, ATA_HEADER_LEN):
            raise DecodeError("inconsistent", f"ATA response data of {rest} bytes is not sectors")
        data_len = rest - rest % SECTOR_SIZE
    elif aflags & AtaFlag.WRITE:
        data_len = count * SECTOR_SIZE
        _need(total, ATA_HEADER_LEN + data_len, f"ATA write of {count} sectors")
        if not _trailing_ok(total, ATA_HEADER_LEN + data_len):
            raise DecodeError(
                "inconsistent", f"ATA write of {count} sectors carries {rest} bytes of data"
            )
    else:
        data_len = 0
        if not _trailing_ok(total, ATA_HEADER_LEN):
            raise DecodeError("inconsistent", f"ATA request without W flag carries {rest} bytes")
    data = mv[ATA_HEADER_LEN : ATA_HEADER_LEN + data_len] if data_len else b""
    return AtaBody(aflags, errfeat, count, cmdstat, lba, data)


def _decode_config(mv: memoryview, total: int) -> ConfigBody:
    _need(total, CONFIG_HEADER_LEN, "Query Config header")
    bufcnt, firmware, sectors, verccmd, length = CONFIG_ARGS.unpack_from(mv, AOE_HEADER_LEN)
    if length > MAX_CONFIG_STRING:
        raise DecodeError("inconsistent", f"config string length {length} exceeds 1024")
    end = CONFIG_HEADER_LEN + length
    _need(total, end, f"config string of {length} bytes")
    if not _trailing_ok(total, end):
        raise DecodeError("inconsistent", f"{total - end} bytes follow the config string")
    config = bytes(mv[CONFIG_HEADER_LEN:end])
    return ConfigBody(bufcnt, firmware, sectors, verccmd >> 4, verccmd & 0x0F, config)


def _decode_mask(mv: memoryview, total: int) -> MaskBody:
    _need(total, MASK_HEADER_LEN, "MAC Mask List header")
    mcmd, merror, count = MASK_ARGS.unpack_from(mv, AOE_HEADER_LEN)
    end = MASK_HEADER_LEN + count * DIRECTIVE.size
    _need(total, end, f"{count} MAC mask directives")
    if not _trailing_ok(total, end):
        raise DecodeError("inconsistent", f"{total - end} bytes follow {count} directives")
    directives = [
        Directive(dcmd, mac) for dcmd, mac in DIRECTIVE.iter_unpack(mv[MASK_HEADER_LEN:end])
    ]
    return MaskBody(mcmd, merror, directives)


def _decode_reserve(mv: memoryview, total: int) -> ReserveBody:
    _need(total, RESERVE_HEADER_LEN, "Reserve/Release header")
    rcmd, count = RESERVE_ARGS.unpack_from(mv, AOE_HEADER_LEN)
    end = RESERVE_HEADER_LEN + count * 6
    _need(total, end, f"{count} reserved MACs")
    if not _trailing_ok(total, end):
        raise DecodeError("inconsistent", f"{total - end} bytes follow {count} MACs")
    macs = [bytes(mv[i : i + 6]) for i in range(RESERVE_HEADER_LEN, end, 6)]
    return ReserveBody(rcmd, macs)


def encode(frame: Frame, *, pad: bool = False) -> bytes:
    """Encode a frame; ``pad`` extends it with zeros to the 60-byte Ethernet minimum.

    Raises ValueError for a frame that cannot be represented (field out of range).
    """
    _check_mac(frame.dst, "destination MAC")
    _check_mac(frame.src, "source MAC")
    if not 0 <= frame.version <= 15 or not 0 <= frame.flags <= 15:
        raise ValueError("version and flags are 4-bit fields")
    try:
        head = HEADER.pack(
            frame.dst,
            frame.src,
            ETHERTYPE_AOE,
            (frame.version << 4) | frame.flags,
            frame.error,
            frame.shelf,
            frame.slot,
            frame.command,
            frame.tag,
        )
    except struct.error as exc:
        raise ValueError(f"header field out of range: {exc}") from None
    out = head + encode_body(frame.body)
    if pad and len(out) < ETH_MIN_FRAME:
        out += bytes(ETH_MIN_FRAME - len(out))
    return out


def encode_body(body: Body) -> bytes:
    """The command-specific bytes of a frame."""
    try:
        if isinstance(body, AtaBody):
            if not 0 <= body.lba < 1 << 48:
                raise ValueError(f"LBA {body.lba} does not fit 48 bits")
            if len(body.data) % SECTOR_SIZE:
                raise ValueError("ATA data must be whole 512-byte sectors")
            args = ATA_ARGS.pack(
                body.aflags,
                body.err_feature,
                body.sector_count,
                body.cmd_status,
                body.lba & 0xFFFFFFFF,
                body.lba >> 32,
            )
            return args + bytes(body.data)
        if isinstance(body, ConfigBody):
            if len(body.config) > MAX_CONFIG_STRING:
                raise ValueError("config string is longer than 1024 bytes")
            if not (0 <= body.aoe_version <= 15 and 0 <= body.ccmd <= 15):
                raise ValueError("AoE version and ccmd are 4-bit fields")
            return (
                CONFIG_ARGS.pack(
                    body.buffer_count,
                    body.firmware,
                    body.sector_count,
                    (body.aoe_version << 4) | body.ccmd,
                    len(body.config),
                )
                + body.config
            )
        if isinstance(body, MaskBody):
            if len(body.directives) > 255:
                raise ValueError("at most 255 directives fit one frame")
            parts = [MASK_ARGS.pack(body.mcmd, body.merror, len(body.directives))]
            for d in body.directives:
                _check_mac(d.mac, "directive MAC")
                parts.append(DIRECTIVE.pack(d.dcmd, d.mac))
            return b"".join(parts)
        if isinstance(body, ReserveBody):
            if len(body.macs) > 255:
                raise ValueError("at most 255 MACs fit one frame")
            for mac in body.macs:
                _check_mac(mac, "reserved MAC")
            return RESERVE_ARGS.pack(body.rcmd, len(body.macs)) + b"".join(body.macs)
        return bytes(body)
    except struct.error as exc:
        raise ValueError(f"field out of range: {exc}") from None


def response_to(request: Frame, src: bytes, body: Body, *, error: int = 0) -> Frame:
    """The frame answering ``request``: addresses swapped, tag and command echoed."""
    flags = HeaderFlag.RESPONSE | (HeaderFlag.ERROR if error else 0)
    return Frame(
        request.src,
        src,
        request.shelf,
        request.slot,
        request.command,
        request.tag,
        body,
        int(flags),
        error,
        AOE_VERSION,
    )
