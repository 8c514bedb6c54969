"""Build and parse the 512-byte ATA IDENTIFY DEVICE page.

Only the words an AoE initiator looks at are filled in: model, serial and firmware strings,
LBA support, the LBA28 and LBA48 capacities, and the command-set words announcing LBA48 and
FLUSH CACHE (EXT). The page ends with the ATA integrity word so strict readers accept it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .ata import LBA28_MAX_SECTORS
from .errors import DecodeError

PAGE_SIZE = 512
_WORDS = struct.Struct("<256H")

# Word numbers (ATA8-ACS).
W_GENERAL = 0
W_CYLINDERS, W_HEADS, W_SECTORS_PER_TRACK = 1, 3, 6
W_SERIAL, SERIAL_WORDS = 10, 10
W_FIRMWARE, FIRMWARE_WORDS = 23, 4
W_MODEL, MODEL_WORDS = 27, 20
W_MAX_MULTIPLE = 47
W_CAPABILITIES = 49
W_FIELD_VALIDITY = 53
W_LBA28_CAPACITY = 60
W_MAJOR_VERSION = 80
W_CMDSET_SUPPORTED_1, W_CMDSET_SUPPORTED_2, W_CMDSET_SUPPORTED_3 = 82, 83, 84
W_CMDSET_ENABLED_1, W_CMDSET_ENABLED_2, W_CMDSET_DEFAULT = 85, 86, 87
W_LBA48_CAPACITY = 100
W_INTEGRITY = 255

CMDSET1_SMART = 1 << 0  # words 82/85: the SMART feature set is supported / enabled
CAP_LBA = 1 << 9
CAP_DMA = 1 << 8
CMDSET2_VALID = 1 << 14  # words 83/84/87: bit 14 set, bit 15 clear means "this word is valid"
CMDSET2_LBA48 = 1 << 10
CMDSET2_FLUSH_CACHE = 1 << 12
CMDSET2_FLUSH_CACHE_EXT = 1 << 13
INTEGRITY_SIGNATURE = 0xA5


@dataclass(slots=True)
class IdentifyInfo:
    """What an IDENTIFY page says about a device."""

    sectors: int
    model: str = "pyaoe virtual disk"
    serial: str = ""
    firmware: str = ""
    lba48: bool = True
    flush_cache: bool = True
    flush_cache_ext: bool = True
    smart: bool = False


def _ata_string(text: str, words: int) -> list[int]:
    """ATA strings: space padded ASCII, two characters a word, first character in the high byte."""
    raw = text.encode("ascii", "replace")[: words * 2].ljust(words * 2, b" ")
    return [(raw[i] << 8) | raw[i + 1] for i in range(0, len(raw), 2)]


def _ata_text(words: tuple[int, ...]) -> str:
    raw = b"".join(bytes(((w >> 8) & 0xFF, w & 0xFF)) for w in words)
    return raw.decode("ascii", "replace").strip(" \x00")


def build_identify(info: IdentifyInfo) -> bytes:
    """The 512-byte IDENTIFY DEVICE page for ``info``."""
    if info.sectors < 0 or info.sectors >= 1 << 48:
        raise ValueError(f"capacity of {info.sectors} sectors does not fit LBA48")
    w = [0] * 256
    w[W_GENERAL] = 0x0040  # fixed, non-removable ATA device
    # Legacy CHS geometry, capped as ATA specifies, for very old readers.
    w[W_HEADS], w[W_SECTORS_PER_TRACK] = 16, 63
    w[W_CYLINDERS] = min(16383, info.sectors // (16 * 63))
    w[W_SERIAL : W_SERIAL + SERIAL_WORDS] = _ata_string(info.serial, SERIAL_WORDS)
    w[W_FIRMWARE : W_FIRMWARE + FIRMWARE_WORDS] = _ata_string(info.firmware, FIRMWARE_WORDS)
    w[W_MODEL : W_MODEL + MODEL_WORDS] = _ata_string(info.model, MODEL_WORDS)
    w[W_MAX_MULTIPLE] = 0x8000 | 1
    w[W_CAPABILITIES] = CAP_LBA
    w[W_FIELD_VALIDITY] = 0x0006
    lba28 = min(info.sectors, LBA28_MAX_SECTORS - 1)
    w[W_LBA28_CAPACITY], w[W_LBA28_CAPACITY + 1] = lba28 & 0xFFFF, lba28 >> 16
    w[W_MAJOR_VERSION] = 0x00F0  # ATA/ATAPI-4 through -7
    cmdset = CMDSET2_VALID
    if info.lba48:
        cmdset |= CMDSET2_LBA48
    if info.flush_cache:
        cmdset |= CMDSET2_FLUSH_CACHE
    if info.flush_cache_ext:
        cmdset |= CMDSET2_FLUSH_CACHE_EXT
    w[W_CMDSET_SUPPORTED_2] = cmdset
    if info.smart:
        w[W_CMDSET_SUPPORTED_1] = w[W_CMDSET_ENABLED_1] = CMDSET1_SMART
    w[W_CMDSET_ENABLED_2] = cmdset & ~CMDSET2_VALID
    w[W_CMDSET_SUPPORTED_3] = w[W_CMDSET_DEFAULT] = CMDSET2_VALID
    if info.lba48:
        for i in range(4):
            w[W_LBA48_CAPACITY + i] = (info.sectors >> (16 * i)) & 0xFFFF
    w[W_INTEGRITY] = INTEGRITY_SIGNATURE
    page = bytearray(_WORDS.pack(*w))
    page[511] = (-sum(page[:511])) & 0xFF  # all 512 bytes sum to zero modulo 256
    return bytes(page)


def parse_identify(page: bytes | bytearray | memoryview) -> IdentifyInfo:
    """Read an IDENTIFY page back; DecodeError if not 512 bytes or its checksum fails."""
    if len(page) != PAGE_SIZE:
        raise DecodeError("identify", f"IDENTIFY page is {len(page)} bytes, not 512")
    w = _WORDS.unpack(bytes(page))
    if (w[W_INTEGRITY] & 0xFF) == INTEGRITY_SIGNATURE and sum(bytes(page)) & 0xFF:
        raise DecodeError("identify", "IDENTIFY integrity word checksum mismatch")
    valid2 = (w[W_CMDSET_SUPPORTED_2] & 0xC000) == CMDSET2_VALID
    lba48 = valid2 and bool(w[W_CMDSET_SUPPORTED_2] & CMDSET2_LBA48)
    if lba48:
        sectors = sum(w[W_LBA48_CAPACITY + i] << (16 * i) for i in range(4))
    else:
        sectors = w[W_LBA28_CAPACITY] | (w[W_LBA28_CAPACITY + 1] << 16)
    return IdentifyInfo(
        sectors=sectors,
        model=_ata_text(w[W_MODEL : W_MODEL + MODEL_WORDS]),
        serial=_ata_text(w[W_SERIAL : W_SERIAL + SERIAL_WORDS]),
        firmware=_ata_text(w[W_FIRMWARE : W_FIRMWARE + FIRMWARE_WORDS]),
        lba48=lba48,
        flush_cache=valid2 and bool(w[W_CMDSET_SUPPORTED_2] & CMDSET2_FLUSH_CACHE),
        flush_cache_ext=valid2 and bool(w[W_CMDSET_SUPPORTED_2] & CMDSET2_FLUSH_CACHE_EXT),
        smart=w[W_CMDSET_SUPPORTED_1] not in (0, 0xFFFF)
        and bool(w[W_CMDSET_SUPPORTED_1] & CMDSET1_SMART),
    )
