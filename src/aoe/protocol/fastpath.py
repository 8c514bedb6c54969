"""Header layouts for the per-frame fast paths: one ``struct`` call per frame.

The codec (frames.py) is the reference for every byte of a frame; these layouts describe
the same bytes cut to what one hot loop needs (several fields at once, padding skipped,
fields compared raw). They live here, next to the codec, so there is one owner of the
wire format, and tests/test_protocol_fastpath.py holds each of them to encode/decode.

Tags: a tag is opaque to a target, which only echoes its four bytes. The initiator packs
and reads its own tags little-endian (with the rest of the little-endian ATA arguments);
the codec and the target read the same four bytes big-endian.
"""

from __future__ import annotations

import struct

from .constants import AOE_VERSION, ETHERTYPE_AOE, Command, HeaderFlag

# --- initiator: requests out --------------------------------------------------------------
# Everything before the tag of an ATA request: dst, src, EtherType, version/flags, error,
# shelf, slot, command. Packed once per path.
ATA_PREFIX = struct.Struct("!6s6sHBBHBB")
# A whole ATA request header: that prefix (20 bytes), tag (little-endian), aflags,
# error/feature, sector count, command/status, LBA bits 0-31, LBA bits 32-47.
ATA_REQUEST = struct.Struct("<20sIBBBBIH2x")

# --- initiator: answers in ------------------------------------------------------------------
# Source MAC, EtherType .. command (8 bytes, compared at once with answer_key()), tag
# (little-endian), aflags, error, sector count, status.
ATA_ANSWER = struct.Struct("<6x6s8sIBBBB")
# The AoE header after the two MACs (at AOE_AFTER_MACS_OFFSET): EtherType,
# version/flags, error, shelf, slot, command.
AOE_AFTER_MACS = struct.Struct("!HBBHBB")
AOE_AFTER_MACS_OFFSET = 12
TAG_OFFSET = 20
TAG_LE = struct.Struct("<I")  # the initiator's reading of the tag at TAG_OFFSET
ANSWER_OK_VERFLAGS = (AOE_VERSION << 4) | HeaderFlag.RESPONSE  # version 1, response, no error

# --- target: requests in, replies out -------------------------------------------------------
# One unpack of what the target's read/write fast path needs: dst, src, EtherType (raw),
# version/flags, shelf+slot (raw: the export's key, see address_key()), command, aflags,
# sector count, opcode, LBA bits 0-31, LBA bits 32-47.
ATA_REQUEST_FIELDS = struct.Struct("<6s6s2sBx3sB4xBxBBIH")
# A reply's first 16 bytes in one call: dst, src, EtherType (raw), version/flags, error.
REPLY_HEAD = struct.Struct("6s6s2sBB")
TAG = struct.Struct("!I")  # the codec's (and the target's) reading of the tag at TAG_OFFSET
ETHERTYPE_RAW = ETHERTYPE_AOE.to_bytes(2, "big")


def answer_key(shelf: int, slot: int) -> bytes:
    """The 8 bytes (EtherType .. command) of a clean ATA answer from shelf.slot, as
    ATA_ANSWER reads them."""
    return AOE_AFTER_MACS.pack(ETHERTYPE_AOE, ANSWER_OK_VERFLAGS, 0, shelf, slot, Command.ATA)


def address_key(shelf: int, slot: int) -> bytes:
    """The raw shelf.slot bytes that ATA_REQUEST_FIELDS yields for that address."""
    return shelf.to_bytes(2, "big") + bytes([slot])
