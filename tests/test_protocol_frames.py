"""Unit tests of the frame codec: known bytes, every command, every rejection reason."""

from __future__ import annotations

import pytest

from aoe.protocol import (
    AtaBody,
    AtaFlag,
    AtaOpcode,
    Command,
    ConfigBody,
    DecodeError,
    Directive,
    Frame,
    HeaderFlag,
    MaskBody,
    ReserveBody,
    decode,
    effective_lba,
    encode,
    lba_field,
    max_sectors_for_mtu,
    response_to,
)

A = bytes.fromhex("020000000001")
B = bytes.fromhex("020000000002")


def test_ata_read_ext_request_bytes() -> None:
    body = AtaBody(AtaFlag.EXTENDED, 0, 2, AtaOpcode.READ_SECTORS_EXT, 0x0102030405)
    raw = encode(Frame(B, A, 7, 3, Command.ATA, 0xDEADBEEF, body))
    assert raw.hex() == ("02000000000202000000000188a2100000070300deadbeef400002240504030201000000")
    assert decode(raw) == Frame(B, A, 7, 3, Command.ATA, 0xDEADBEEF, body)


def test_ata_write_carries_exact_sectors() -> None:
    data = bytes(range(256)) * 4
    body = AtaBody(AtaFlag.WRITE | AtaFlag.EXTENDED, 0, 2, AtaOpcode.WRITE_SECTORS_EXT, 9, data)
    frame = decode(encode(Frame(B, A, 1, 1, 0, 1, body)))
    assert isinstance(frame.body, AtaBody)
    assert frame.body.is_write and frame.body.is_extended
    assert bytes(frame.body.data) == data


@pytest.mark.parametrize(
    "opcode",
    [
        AtaOpcode.READ_SECTORS,
        AtaOpcode.READ_SECTORS_EXT,
        AtaOpcode.WRITE_SECTORS,
        AtaOpcode.WRITE_SECTORS_EXT,
        AtaOpcode.IDENTIFY_DEVICE,
        AtaOpcode.FLUSH_CACHE,
        AtaOpcode.FLUSH_CACHE_EXT,
        AtaOpcode.CHECK_POWER_MODE,
    ],
)
def test_every_ata_opcode_round_trips(opcode: AtaOpcode) -> None:
    write = opcode in (AtaOpcode.WRITE_SECTORS, AtaOpcode.WRITE_SECTORS_EXT)
    ext = opcode in (
        AtaOpcode.READ_SECTORS_EXT,
        AtaOpcode.WRITE_SECTORS_EXT,
        AtaOpcode.FLUSH_CACHE_EXT,
    )
    aflags = (AtaFlag.WRITE if write else 0) | (AtaFlag.EXTENDED if ext else 0)
    count = 1 if opcode != AtaOpcode.FLUSH_CACHE else 0
    lba = lba_field(100, ext)
    body = AtaBody(int(aflags), 0, count, int(opcode), lba, b"\x5a" * 512 if write else b"")
    req = Frame(B, A, 1, 2, 0, 42, body)
    raw = encode(req)
    assert decode(raw) == req
    got = decode(raw).body
    assert isinstance(got, AtaBody)
    assert got.cmd_status == opcode
    assert effective_lba(got.lba, ext) == 100


def test_lba28_device_bits_are_masked() -> None:
    assert lba_field(0x0ABCDEF, False) == 0xE0ABCDEF
    assert effective_lba(0xE0ABCDEF, False) == 0x0ABCDEF
    assert effective_lba(0xFFFF_E0ABCDEF, True) == 0xFFFF_E0ABCDEF
    with pytest.raises(ValueError):
        lba_field(1 << 28, False)
    with pytest.raises(ValueError):
        lba_field(1 << 48, True)


def test_read_response_data_and_padding() -> None:
    req = Frame(B, A, 1, 2, 0, 5, AtaBody(0, 0, 1, AtaOpcode.READ_SECTORS, 0))
    rsp = response_to(req, B, AtaBody(0, 0, 1, 0x40, 0, b"x" * 512))
    assert rsp.dst == A and rsp.src == B and rsp.tag == 5 and rsp.is_response
    assert decode(encode(rsp)) == rsp
    empty = response_to(req, B, AtaBody(0, 0, 0, 0x40, 0))
    padded = encode(empty, pad=True)
    assert len(padded) == 60
    assert decode(padded) == empty


def test_query_config_bytes_and_fields() -> None:
    body = ConfigBody(16, 0x4019, 17, 1, 3, b"hello")
    raw = encode(Frame(B, A, 0xFFFF, 0xFF, Command.QUERY_CONFIG, 1, body))
    assert raw[24:].hex() == "0010401911130005" + b"hello".hex()
    assert decode(raw).body == body


def test_mac_mask_list_round_trip() -> None:
    body = MaskBody(1, 0, [Directive(1, A), Directive(2, B)])
    raw = encode(Frame(B, A, 1, 1, Command.MAC_MASK_LIST, 3, body))
    assert raw[24:28].hex() == "00010002"
    assert raw[28:36].hex() == "0001" + A.hex()
    assert decode(raw).body == body


def test_reserve_release_round_trip() -> None:
    body = ReserveBody(2, [A, B])
    raw = encode(Frame(B, A, 1, 1, Command.RESERVE_RELEASE, 3, body))
    assert raw[24:26].hex() == "0202"
    assert decode(raw).body == body


def test_unknown_command_keeps_raw_body() -> None:
    raw = encode(Frame(B, A, 1, 1, 0xF3, 9, b"vendor"))
    frame = decode(raw)
    assert frame.command == 0xF3 and frame.body == b"vendor"


def test_error_response_without_arguments_keeps_raw() -> None:
    head = encode(
        Frame(A, B, 1, 1, Command.ATA, 9, b"", int(HeaderFlag.RESPONSE | HeaderFlag.ERROR), 2)
    )
    frame = decode(head)
    assert frame.is_error and frame.error == 2 and frame.body == b""


def _reason(raw: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decode(raw)
    return info.value.reason


def test_rejects_short_and_wrong_ethertype() -> None:
    assert _reason(b"") == "short"
    assert _reason(bytes(23)) == "short"
    good = encode(Frame(B, A, 1, 1, 1, 1, ConfigBody()))
    assert _reason(good[:12] + b"\x08\x00" + good[14:]) == "ethertype"


def test_rejects_wrong_version_but_keeps_header() -> None:
    raw = bytearray(encode(Frame(B, A, 4, 5, 1, 77, ConfigBody())))
    raw[14] = 0x20
    with pytest.raises(DecodeError) as info:
        decode(bytes(raw))
    assert info.value.reason == "version"
    header = info.value.header
    assert isinstance(header, Frame) and header.tag == 77 and header.shelf == 4


@pytest.mark.parametrize(
    "body, cut",
    [
        (AtaBody(0, 0, 1, 0x20, 0), 1),
        (AtaBody(AtaFlag.WRITE, 0, 2, 0x30, 0, bytes(1024)), 1),
        (AtaBody(AtaFlag.WRITE, 0, 2, 0x30, 0, bytes(1024)), 512),
        (ConfigBody(config=b"x" * 100), 1),
        (MaskBody(0, 0, [Directive(1, A)] * 9), 1),
        (ReserveBody(1, [A] * 12), 1),
    ],
)
def test_rejects_truncated(body: object, cut: int) -> None:
    raw = encode(Frame(B, A, 1, 1, _command_of(body), 1, body))  # type: ignore[arg-type]
    assert _reason(raw[:-cut]) == "truncated"


def _command_of(body: object) -> int:
    return {AtaBody: 0, ConfigBody: 1, MaskBody: 2, ReserveBody: 3}[type(body)]


def test_rejects_inconsistent_lengths() -> None:
    read = encode(Frame(B, A, 1, 1, 0, 1, AtaBody(0, 0, 1, 0x20, 0)))
    assert _reason(read + bytes(512)) == "inconsistent"  # a read request carrying data
    write = encode(Frame(B, A, 1, 1, 0, 1, AtaBody(1, 0, 1, 0x30, 0, bytes(512))))
    assert _reason(write + bytes(512)) == "inconsistent"
    config = bytearray(encode(Frame(B, A, 1, 1, 1, 1, ConfigBody(config=b"x" * 60))))
    config[30:32] = (1025).to_bytes(2, "big")
    assert _reason(bytes(config)) == "inconsistent"
    rsp = encode(Frame(A, B, 1, 1, 0, 1, AtaBody(0, 0, 1, 0x40, 0, bytes(512)), 8))
    assert _reason(rsp + b"abc") == "inconsistent"


def test_encode_rejects_unrepresentable() -> None:
    with pytest.raises(ValueError):
        encode(Frame(b"\x01", A, 1, 1, 0, 1, AtaBody()))
    with pytest.raises(ValueError):
        encode(Frame(B, A, 0x10000, 1, 0, 1, AtaBody()))
    with pytest.raises(ValueError):
        encode(Frame(B, A, 1, 1, 0, 1, AtaBody(data=b"abc")))
    with pytest.raises(ValueError):
        encode(Frame(B, A, 1, 1, 1, 1, ConfigBody(config=bytes(1025))))
    with pytest.raises(ValueError):
        encode(Frame(B, A, 1, 1, 3, 1, ReserveBody(1, [b"\x00"])))


@pytest.mark.parametrize("mtu, sectors", [(1500, 2), (9000, 17), (1024, 1), (548, 1), (547, 0)])
def test_max_sectors_for_mtu(mtu: int, sectors: int) -> None:
    assert max_sectors_for_mtu(mtu) == sectors


def test_decode_accepts_bytearray_and_memoryview() -> None:
    raw = encode(Frame(B, A, 1, 1, 1, 1, ConfigBody(config=b"abc")))
    assert decode(bytearray(raw)) == decode(memoryview(raw)) == decode(raw)
