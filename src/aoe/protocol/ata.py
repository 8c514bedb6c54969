"""The ATA semantics AoE needs: opcodes, status and error bits, LBA28/LBA48 addressing."""

from __future__ import annotations

from enum import IntEnum, IntFlag


class AtaOpcode(IntEnum):
    READ_SECTORS = 0x20
    READ_SECTORS_EXT = 0x24
    WRITE_SECTORS = 0x30
    WRITE_SECTORS_EXT = 0x34
    CHECK_POWER_MODE = 0xE5
    FLUSH_CACHE = 0xE7
    FLUSH_CACHE_EXT = 0xEA
    IDENTIFY_DEVICE = 0xEC
    SMART = 0xB0


class AtaStatus(IntFlag):
    NONE = 0
    ERR = 0x01
    DRQ = 0x08
    DF = 0x20
    DRDY = 0x40
    BSY = 0x80


class AtaErrorBits(IntFlag):
    NONE = 0
    ABRT = 0x04
    IDNF = 0x10
    UNC = 0x40


READ_OPCODES = frozenset({AtaOpcode.READ_SECTORS, AtaOpcode.READ_SECTORS_EXT})
WRITE_OPCODES = frozenset({AtaOpcode.WRITE_SECTORS, AtaOpcode.WRITE_SECTORS_EXT})
FLUSH_OPCODES = frozenset({AtaOpcode.FLUSH_CACHE, AtaOpcode.FLUSH_CACHE_EXT})
EXT_OPCODES = frozenset(
    {AtaOpcode.READ_SECTORS_EXT, AtaOpcode.WRITE_SECTORS_EXT, AtaOpcode.FLUSH_CACHE_EXT}
)

LBA28_MAX_SECTORS = 1 << 28
LBA48_MAX_SECTORS = 1 << 48
POWER_MODE_ACTIVE = 0xFF  # sector count value CHECK POWER MODE answers: active or idle
LBA28_DEVICE_BITS = 0xE0  # LBA mode plus the two obsolete always-one bits in lba3


def effective_lba(lba: int, extended: bool) -> int:
    """The LBA a command addresses: all 48 bits with the E flag, else the low 28."""
    return lba if extended else lba & 0x0FFFFFFF


def lba_field(lba: int, extended: bool) -> int:
    """The 48-bit value to put in the six LBA bytes of a request.

    For LBA28 the top nibble of byte 3 carries the device/head register, which must have
    the LBA bit set; bytes 4 and 5 are zero.
    """
    if extended:
        if not 0 <= lba < LBA48_MAX_SECTORS:
            raise ValueError(f"LBA {lba} does not fit 48 bits")
        return lba
    if not 0 <= lba < LBA28_MAX_SECTORS:
        raise ValueError(f"LBA {lba} does not fit 28 bits")
    return lba | (LBA28_DEVICE_BITS << 24)
