"""Conformance checks on ATA commands: IDENTIFY, reads, LBA28/LBA48, range and count limits,
FLUSH, CHECK POWER MODE, unknown opcodes, and writes confined to the scratch range."""

from __future__ import annotations

import random

from ..protocol import AoeError, AtaErrorBits, AtaOpcode, AtaStatus, parse_identify
from ..protocol.ata import LBA28_MAX_SECTORS
from ..protocol.constants import SECTOR_SIZE, max_sectors_for_mtu
from .context import Context, Failed, Unsupported, aoe_error, expect_answer
from .probe import Reply

BAD_STATUS = AtaStatus.ERR | AtaStatus.BSY | AtaStatus.DF | AtaStatus.DRQ
REFUSAL_BITS = AtaErrorBits.ABRT | AtaErrorBits.IDNF
NOP = 0x00  # ATA NOP: a device that does not queue commands aborts it
RESERVED_OPCODE = 0x01  # unassigned in ATA8-ACS
READ_CHECKS = [
    "ata.read-lba48", "ata.read-lba28", "ata.read-multi", "ata.read-last", "ata.read-past-end",
    "ata.read-straddle", "ata.read-past-end-lba28", "ata.count-too-large", "ata.flush",
    "ata.flush-ext", "ata.check-power", "ata.unknown-opcode",
]
ATA_CHECKS = ["ata.identify", *READ_CHECKS]
WRITE_CHECKS = ["ata.write-read", "ata.write-lba28", "ata.write-past-end", "ata.write-truncated",
                "scratch.restore"]


def transfer_sectors(ctx: Context) -> int:
    """Sectors per frame both sides can carry: the target's limit, capped by our MTU."""
    return max(1, min(ctx.max_sectors, max_sectors_for_mtu(ctx.probe.mtu)))


def require_ok(reply: Reply | None, what: str, sectors: int = 0) -> bytes:
    """The data of a successful ATA answer; Failed with the reason otherwise."""
    reply = expect_answer(reply, what)
    if aoe_error(reply):
        raise Failed(f"{what}: AoE error {aoe_error(reply)}")
    ata = reply.ata
    if ata.cmd_status & BAD_STATUS:
        raise Failed(f"{what}: status 0x{ata.cmd_status:02x} error 0x{ata.err_feature:02x}")
    if not ata.cmd_status & AtaStatus.DRDY:
        raise Failed(f"{what}: status 0x{ata.cmd_status:02x} lacks DRDY (set on completion)")
    if len(ata.data) != sectors * SECTOR_SIZE:
        raise Failed(f"{what}: {len(ata.data)} data bytes, expected {sectors * SECTOR_SIZE}")
    return bytes(ata.data)


def require_ata_refusal(reply: Reply | None, what: str) -> str:
    """An ATA-level refusal: status ERR with ABRT or IDNF, and no data."""
    reply = expect_answer(reply, what)
    if aoe_error(reply):
        raise Failed(f"{what}: AoE error {aoe_error(reply)} instead of ATA status ERR")
    ata = reply.ata
    if not ata.cmd_status & AtaStatus.ERR:
        raise Failed(f"{what}: accepted (status 0x{ata.cmd_status:02x})")
    if not ata.err_feature & REFUSAL_BITS:
        raise Failed(f"{what}: ERR with error 0x{ata.err_feature:02x}, neither ABRT nor IDNF")
    if len(ata.data):
        raise Failed(f"{what}: refused but carried {len(ata.data)} data bytes")
    return "|".join(b.name or "" for b in AtaErrorBits if b and ata.err_feature & b & REFUSAL_BITS)


def read(ctx: Context, lba: int, count: int, *, ext: bool = True) -> bytes:
    op = AtaOpcode.READ_SECTORS_EXT if ext else AtaOpcode.READ_SECTORS
    return require_ok(ctx.probe.ata(op, lba, count, ext=ext), f"read {count}@{lba}", count)


def write(ctx: Context, lba: int, data: bytes, *, ext: bool = True) -> None:
    op = AtaOpcode.WRITE_SECTORS_EXT if ext else AtaOpcode.WRITE_SECTORS
    count = len(data) // SECTOR_SIZE
    reply = ctx.probe.ata(op, lba, count, ext=ext, data=data, write=True)
    require_ok(reply, f"write {count}@{lba}")


def read_range(ctx: Context, lba: int, count: int) -> bytes:
    step = transfer_sectors(ctx)
    return b"".join(read(ctx, s, min(step, lba + count - s)) for s in range(lba, lba + count, step))


def write_range(ctx: Context, lba: int, data: bytes) -> None:
    step = transfer_sectors(ctx) * SECTOR_SIZE
    for off in range(0, len(data), step):
        write(ctx, lba + off // SECTOR_SIZE, data[off : off + step])


def check_ata(ctx: Context) -> None:
    p = ctx.probe
    with ctx.check("ata.identify") as notes:
        page = require_ok(p.ata(AtaOpcode.IDENTIFY_DEVICE, 0, 1), "IDENTIFY", 1)
        info = parse_identify(page)
        if info.sectors <= 0:
            raise Failed("IDENTIFY announces a capacity of 0 sectors")
        ctx.identify = info
        notes.append(f"{info.model!r}, {info.sectors} sectors, lba48={info.lba48}, "
                     f"flush_ext={info.flush_cache_ext}")
    if ctx.identify is None:
        ctx.skip(READ_CHECKS, "needs a working IDENTIFY (capacity unknown)")
        return
    _check_reads(ctx)
    _check_limits(ctx)
    _check_other_opcodes(ctx)


def _check_reads(ctx: Context) -> None:
    cap, n = ctx.capacity, transfer_sectors(ctx)
    assert ctx.identify is not None
    with ctx.check("ata.read-lba48") as notes:
        if not ctx.identify.lba48:
            raise Unsupported("IDENTIFY does not announce LBA48")
        read(ctx, 0, 1)
        notes.append("READ SECTORS EXT of LBA 0")
    with ctx.check("ata.read-lba28") as notes:
        lba = min(cap, LBA28_MAX_SECTORS) - 1
        short = read(ctx, lba, 1, ext=False)
        if ctx.identify.lba48 and short != read(ctx, lba, 1):
            raise Failed(f"READ SECTORS and READ SECTORS EXT of LBA {lba} return different data")
        notes.append(f"READ SECTORS of LBA {lba} (device bits 0xE0) matches the EXT read")
    with ctx.check("ata.read-multi") as notes:
        if n < 2:
            raise Unsupported(f"one sector per frame here (maxsect {ctx.max_sectors})")
        data = read(ctx, 0, n)
        single = read(ctx, n - 1, 1)
        if data[-SECTOR_SIZE:] != single:
            raise Failed(f"sector {n - 1} of a {n}-sector read differs from reading it alone")
        notes.append(f"{n} sectors in one frame")
    with ctx.check("ata.read-last") as notes:
        read(ctx, cap - 1, 1)
        notes.append(f"last sector {cap - 1} readable")
    with ctx.check("ata.read-past-end") as notes:
        bits = require_ata_refusal(ctx.probe.ata(AtaOpcode.READ_SECTORS_EXT, cap, 1),
                                   f"read at LBA {cap} (capacity)")
        notes.append(f"LBA {cap}: ERR/{bits}")
    with ctx.check("ata.read-straddle") as notes:
        if n < 2:
            raise Unsupported("needs two sectors per frame")
        bits = require_ata_refusal(ctx.probe.ata(AtaOpcode.READ_SECTORS_EXT, cap - 1, 2),
                                   f"read of 2 sectors at {cap - 1}")
        notes.append(f"2 sectors at {cap - 1}: ERR/{bits}")
    with ctx.check("ata.read-past-end-lba28") as notes:
        if cap >= LBA28_MAX_SECTORS:
            raise Unsupported("capacity beyond LBA28: no out-of-range LBA28 address")
        reply = ctx.probe.ata(AtaOpcode.READ_SECTORS, cap, 1, ext=False)
        bits = require_ata_refusal(reply, f"LBA28 read at {cap}")
        notes.append(f"LBA28 {cap}: ERR/{bits}")


def _check_limits(ctx: Context) -> None:
    p = ctx.probe
    with ctx.check("ata.count-too-large") as notes:
        counts = sorted({c for c in (ctx.max_sectors + 1, 255) if ctx.max_sectors < c <= 255})
        if not counts:
            raise Unsupported("maxsect is 255: no count above it")
        for count in counts:
            reply = expect_answer(p.ata(AtaOpcode.READ_SECTORS_EXT, 0, count), f"count {count}")
            if aoe_error(reply) != AoeError.BAD_ARGUMENT:
                raise Failed(f"read of {count} sectors (maxsect {ctx.max_sectors}) answered "
                             f"with AoE error {aoe_error(reply)}, expected 2")
        notes.append(f"counts {counts} answered with error 2")


def _check_other_opcodes(ctx: Context) -> None:
    p = ctx.probe
    assert ctx.identify is not None
    with ctx.check("ata.flush") as notes:
        require_ok(p.ata(AtaOpcode.FLUSH_CACHE, 0, 0, ext=False), "FLUSH CACHE")
        notes.append("FLUSH CACHE completed")
    with ctx.check("ata.flush-ext") as notes:
        reply = expect_answer(p.ata(AtaOpcode.FLUSH_CACHE_EXT, 0, 0), "FLUSH CACHE EXT")
        if not ctx.identify.flush_cache_ext:
            if not aoe_error(reply) and reply.ata.cmd_status & AtaStatus.ERR:
                raise Unsupported("not announced by IDENTIFY, and aborted")
            notes.append("not announced by IDENTIFY but completed")
        require_ok(reply, "FLUSH CACHE EXT")
        notes.append("FLUSH CACHE EXT completed")
    with ctx.check("ata.check-power") as notes:
        power = expect_answer(p.ata(AtaOpcode.CHECK_POWER_MODE, 0, 0, ext=False),
                              "CHECK POWER MODE")
        require_ok(power, "CHECK POWER MODE")
        mode = power.ata.sector_count
        if mode not in (0x00, 0x40, 0x41, 0x80, 0xFF):
            raise Failed(f"power mode 0x{mode:02x} is not an ATA power state")
        notes.append(f"power mode 0x{mode:02x}")
    with ctx.check("ata.unknown-opcode") as notes:
        for op in (NOP, RESERVED_OPCODE):
            bits = require_ata_refusal(p.ata(op, 0, 0, ext=False), f"opcode 0x{op:02x}")
            if "ABRT" not in bits.split("|"):
                raise Failed(f"opcode 0x{op:02x} refused with {bits}, expected ABRT")
        notes.append("opcodes 0x00 and 0x01 aborted (ERR/ABRT)")


def check_scratch_writes(ctx: Context) -> None:
    if ctx.read_only:
        ctx.skip(WRITE_CHECKS, "read-only run")
        return
    if ctx.scratch is None:
        ctx.skip(WRITE_CHECKS, "no scratch range (--scratch-lba/--scratch-sectors)")
        return
    if ctx.identify is None:
        ctx.skip(WRITE_CHECKS, "needs a working IDENTIFY (capacity unknown)")
        return
    lba, count = ctx.scratch
    if lba + count > ctx.capacity:
        ctx.skip(WRITE_CHECKS, f"scratch {lba}+{count} runs past the capacity {ctx.capacity}")
        return
    try:
        ctx.scratch_data = read_range(ctx, lba, count)
    except Failed as exc:
        ctx.skip(WRITE_CHECKS, f"cannot read the scratch range to save it: {exc}")
        return
    try:
        _check_writes(ctx, lba, count)
    finally:
        with ctx.check("scratch.restore") as notes:
            write_range(ctx, lba, ctx.scratch_data)
            if read_range(ctx, lba, count) != ctx.scratch_data:
                raise Failed("scratch data differs from the original after writing it back")
            ctx.scratch_ok = True
            notes.append(f"{count} sectors at {lba} restored and verified")


def _check_writes(ctx: Context, lba: int, count: int) -> None:
    p, cap, n = ctx.probe, ctx.capacity, transfer_sectors(ctx)
    rng = random.Random(lba * 7919 + count)
    with ctx.check("ata.write-read") as notes:
        pattern = rng.randbytes(count * SECTOR_SIZE)
        write_range(ctx, lba, pattern)
        if read_range(ctx, lba, count) != pattern:
            raise Failed("data read back differs from the data written")
        notes.append(f"{count} sectors written with WRITE SECTORS EXT and read back")
    with ctx.check("ata.write-lba28") as notes:
        if lba >= LBA28_MAX_SECTORS:
            raise Unsupported("scratch range beyond LBA28")
        sector = rng.randbytes(SECTOR_SIZE)
        write(ctx, lba, sector, ext=False)
        if read(ctx, lba, 1) != sector:
            raise Failed("sector written with WRITE SECTORS reads back different")
        notes.append(f"WRITE SECTORS at {lba} read back")
    with ctx.check("ata.write-past-end") as notes:
        reply = p.ata(AtaOpcode.WRITE_SECTORS_EXT, cap, 1, data=bytes(SECTOR_SIZE), write=True)
        bits = require_ata_refusal(reply, f"write at LBA {cap} (capacity)")
        notes.append(f"LBA {cap}: ERR/{bits}")
    with ctx.check("ata.write-truncated") as notes:
        if count < 2 or n < 2:
            raise Unsupported("needs two scratch sectors and two sectors per frame")
        frame = p.ata_frame(AtaOpcode.WRITE_SECTORS_EXT, lba, 2, data=bytes(SECTOR_SIZE),
                            write=True)
        replies = p.silence(frame)
        accepted = [r for r in replies if not aoe_error(r)
                    and not r.ata.cmd_status & AtaStatus.ERR]
        if accepted:
            raise Failed("acknowledged a 2-sector write that carried 1 sector of data")
        how = ", ".join(sorted({f"error {aoe_error(r)}" if aoe_error(r) else "ATA ERR"
                                for r in replies})) or "no answer"
        notes.append(f"2-sector write with 1 sector of data refused ({how})")
