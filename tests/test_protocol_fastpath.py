"""The fast paths' header layouts agree with the codec: pack with one, read with the other."""

from __future__ import annotations

import pytest

from aoe.protocol import (
    ATA_HEADER_LEN,
    AtaBody,
    AtaFlag,
    AtaStatus,
    Command,
    ConfigBody,
    Frame,
    HeaderFlag,
    decode,
    encode,
)
from aoe.protocol import fastpath as fp

INITIATOR = b"\x02\x00\x00\x00\x00\x01"
TARGET = b"\x02\x00\x00\x00\x00\x02"
RESPONSE = int(HeaderFlag.RESPONSE)

# shelf, slot, tag, aflags, feature/error, count, command/status, lba: edges and middles.
CASES = [
    (0, 0, 0, 0, 0, 0, 0, 0),
    (1, 2, 0x12345678, int(AtaFlag.EXTENDED), 0, 17, 0x24, 0x0000_1234_5678),
    (0xFFFE, 0xFE, 0xFFFF_FFFF, int(AtaFlag.EXTENDED | AtaFlag.WRITE), 0xAB, 255, 0x34,
     (1 << 48) - 1),
    (41, 7, 0x8000_0001, 0, 0x04, 2, 0x20, 0x0FFF_FFFF),
]


def swap(tag: int) -> int:
    """The codec's (big-endian) reading of four bytes the initiator packed little-endian."""
    return int.from_bytes(tag.to_bytes(4, "little"), "big")


def payload(aflags: int, count: int) -> bytes:
    """What follows the header of a request: a write's sectors."""
    return bytes(range(256)) * 2 * count if aflags & AtaFlag.WRITE else b""


def request(shelf: int, slot: int, tag: int, aflags: int, feature: int, count: int,
            cmd: int, lba: int) -> Frame:
    return Frame(TARGET, INITIATOR, shelf, slot, Command.ATA, tag,
                 AtaBody(aflags, feature, count, cmd, lba, payload(aflags, count)))


def answer(shelf: int, slot: int, tag: int, aflags: int, err: int, count: int, status: int,
           lba: int, *, flags: int = RESPONSE, error: int = 0) -> Frame:
    return Frame(INITIATOR, TARGET, shelf, slot, Command.ATA, tag,
                 AtaBody(aflags, err, count, status, lba), flags, error)


@pytest.mark.parametrize("case", CASES)
def test_initiator_request_layout_matches_the_codec(case: tuple[int, ...]) -> None:
    shelf, slot, tag, aflags, feature, count, cmd, lba = case
    prefix = fp.ATA_PREFIX.pack(TARGET, INITIATOR, 0x88A2, 0x10, 0, shelf, slot, Command.ATA)
    buf = bytearray(ATA_HEADER_LEN)
    fp.ATA_REQUEST.pack_into(buf, 0, prefix, tag, aflags, feature, count, cmd,
                             lba & 0xFFFFFFFF, lba >> 32)
    assert decode(bytes(buf) + payload(aflags, count)) == request(
        shelf, slot, swap(tag), aflags, feature, count, cmd, lba)
    # And the reverse: the codec's bytes read back through the fast layout.
    raw = encode(request(shelf, slot, swap(tag), aflags, feature, count, cmd, lba))
    assert fp.ATA_REQUEST.unpack_from(raw) == (prefix, tag, aflags, feature, count, cmd,
                                          lba & 0xFFFFFFFF, lba >> 32)


@pytest.mark.parametrize("case", CASES)
def test_initiator_answer_layouts_match_the_codec(case: tuple[int, ...]) -> None:
    shelf, slot, tag, aflags, err, count, status, lba = case
    raw = encode(answer(shelf, slot, swap(tag), aflags, err, count, status, lba))
    src, key, got_tag, got_aflags, got_err, got_count, got_status = \
        fp.ATA_ANSWER.unpack_from(raw)
    assert (src, key, got_tag) == (TARGET, fp.answer_key(shelf, slot), tag)
    assert (got_aflags, got_err, got_count, got_status) == (aflags, err, count, status)
    assert fp.TAG_LE.unpack_from(raw, fp.TAG_OFFSET) == (tag,)
    assert fp.AOE_AFTER_MACS.unpack_from(raw, fp.AOE_AFTER_MACS_OFFSET) == (
        0x88A2, fp.ANSWER_OK_VERFLAGS, 0, shelf, slot, Command.ATA)
    # An error answer no longer matches the clean-answer key.
    bad = encode(answer(shelf, slot, tag, aflags, err, count, status, lba,
                        flags=RESPONSE | HeaderFlag.ERROR, error=3))
    assert fp.ATA_ANSWER.unpack_from(bad)[1] != fp.answer_key(shelf, slot)
    assert fp.AOE_AFTER_MACS.unpack_from(bad, fp.AOE_AFTER_MACS_OFFSET)[1:3] == (
        fp.ANSWER_OK_VERFLAGS | HeaderFlag.ERROR, 3)
    # Reverse: the fast layouts' bytes decoded by the codec.
    buf = bytearray(ATA_HEADER_LEN)
    fp.ATA_ANSWER.pack_into(buf, 0, TARGET, fp.answer_key(shelf, slot), tag, aflags, err,
                            count, status)
    buf[0:6] = INITIATOR
    assert decode(bytes(buf)) == answer(shelf, slot, swap(tag), aflags, err, count, status, 0)


def test_after_macs_layout_reads_a_query_config_answer() -> None:
    frame = Frame(INITIATOR, TARGET, 9, 8, Command.QUERY_CONFIG, 0x80000001,
                  ConfigBody(buffer_count=16, sector_count=2), RESPONSE)
    raw = encode(frame, pad=True)
    assert fp.AOE_AFTER_MACS.unpack_from(raw, fp.AOE_AFTER_MACS_OFFSET) == (
        0x88A2, fp.ANSWER_OK_VERFLAGS, 0, 9, 8, Command.QUERY_CONFIG)
    out = bytearray(raw)
    fp.AOE_AFTER_MACS.pack_into(out, fp.AOE_AFTER_MACS_OFFSET, 0x88A2, 0x10, 0, 10, 11,
                                Command.QUERY_CONFIG)
    again = decode(bytes(out))
    assert (again.shelf, again.slot, again.flags, again.body) == (10, 11, 0, frame.body)


@pytest.mark.parametrize("case", CASES)
def test_target_layouts_match_the_codec(case: tuple[int, ...]) -> None:
    shelf, slot, tag, aflags, feature, count, cmd, lba = case
    raw = encode(request(shelf, slot, tag, aflags, feature, count, cmd, lba))
    assert fp.ATA_REQUEST_FIELDS.unpack_from(raw) == (
        TARGET, INITIATOR, fp.ETHERTYPE_RAW, 0x10, fp.address_key(shelf, slot), Command.ATA,
        aflags, count, cmd, lba & 0xFFFFFFFF, lba >> 32)
    assert fp.TAG.unpack_from(raw, fp.TAG_OFFSET) == (tag,)
    # A reply made in place, as the target does: the codec reads a response to the request.
    buf = bytearray(raw)
    fp.REPLY_HEAD.pack_into(buf, 0, INITIATOR, TARGET, fp.ETHERTYPE_RAW,
                            fp.ANSWER_OK_VERFLAGS, 0)
    buf[27] = int(AtaStatus.DRDY)
    reply = decode(bytes(buf))
    assert (reply.dst, reply.src, reply.flags, reply.error, reply.tag) == (
        INITIATOR, TARGET, RESPONSE, 0, tag)
    assert isinstance(reply.body, AtaBody)
    assert (reply.body.cmd_status, reply.body.lba, reply.body.sector_count) == (
        int(AtaStatus.DRDY), lba, count)
    # Reverse: request fields packed with the fast layout, decoded by the codec.
    buf = bytearray(ATA_HEADER_LEN)
    fp.ATA_REQUEST_FIELDS.pack_into(buf, 0, TARGET, INITIATOR, fp.ETHERTYPE_RAW, 0x10,
                                    fp.address_key(shelf, slot), Command.ATA, aflags, count,
                                    cmd, lba & 0xFFFFFFFF, lba >> 32)
    fp.TAG.pack_into(buf, fp.TAG_OFFSET, tag)
    assert decode(bytes(buf) + payload(aflags, count)) == request(shelf, slot, tag, aflags, 0,
                                                                   count, cmd, lba)
