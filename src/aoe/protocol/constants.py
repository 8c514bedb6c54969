"""Wire constants of AoE revision 11."""

from __future__ import annotations

from enum import IntEnum, IntFlag

ETHERTYPE_AOE = 0x88A2
AOE_VERSION = 1
BROADCAST_MAC = b"\xff" * 6
BROADCAST_SHELF = 0xFFFF
BROADCAST_SLOT = 0xFF

ETH_HEADER_LEN = 14
AOE_HEADER_LEN = 24  # Ethernet header included
ATA_HEADER_LEN = 36  # AoE header + 12 bytes of ATA arguments
CONFIG_HEADER_LEN = 32  # AoE header + 8 bytes of Query Config arguments
MASK_HEADER_LEN = 28  # AoE header + 4 bytes of MAC Mask List arguments
RESERVE_HEADER_LEN = 26  # AoE header + 2 bytes of Reserve/Release arguments
ETH_MIN_FRAME = 60  # minimum Ethernet frame without FCS; shorter frames get padded
SECTOR_SIZE = 512
MAX_CONFIG_STRING = 1024


class Command(IntEnum):
    ATA = 0
    QUERY_CONFIG = 1
    MAC_MASK_LIST = 2
    RESERVE_RELEASE = 3


class HeaderFlag(IntFlag):
    """Low nibble of the version/flags byte."""

    NONE = 0
    ERROR = 0x4
    RESPONSE = 0x8


class AtaFlag(IntFlag):
    """The ATA "aflags" byte."""

    NONE = 0
    WRITE = 0x01
    ASYNC = 0x02
    DEVICE = 0x10
    EXTENDED = 0x40


class ConfigCommand(IntEnum):
    READ = 0
    TEST = 1
    TEST_PREFIX = 2
    SET = 3
    FORCE_SET = 4


class MaskCommand(IntEnum):
    READ = 0
    EDIT = 1


class MaskError(IntEnum):
    NONE = 0
    UNSPECIFIED = 1
    BAD_DIRECTIVE = 2
    LIST_FULL = 3


class DirectiveCommand(IntEnum):
    NONE = 0
    ADD = 1
    DELETE = 2


class ReserveCommand(IntEnum):
    READ = 0
    SET = 1
    FORCE_SET = 2


def max_sectors_for_mtu(mtu: int) -> int:
    """Whole sectors one ATA frame carries at this MTU: ``(mtu - 36) // 512``.

    Subtracting the full 36-byte header (not just the 22 bytes that count against the MTU)
    keeps a safety margin and matches what deployed targets announce: 2 at 1500, 17 at 9000.
    """
    return max(0, (mtu - ATA_HEADER_LEN) // SECTOR_SIZE)


MIN_MTU = ATA_HEADER_LEN + SECTOR_SIZE  # 548: the smallest MTU that carries one sector
