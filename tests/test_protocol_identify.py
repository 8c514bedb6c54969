"""IDENTIFY DEVICE page: the words initiators read, and the integrity checksum."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aoe.protocol import DecodeError, IdentifyInfo, build_identify, parse_identify


def _words(page: bytes) -> tuple[int, ...]:
    return struct.unpack("<256H", page)


def test_identify_words_for_a_large_disk() -> None:
    sectors = 3 * (1 << 30)  # 1.5 TiB: beyond LBA28
    page = build_identify(IdentifyInfo(sectors, "Model X", "SER123", "1.2"))
    w = _words(page)
    assert len(page) == 512
    assert w[49] & (1 << 9)  # LBA supported
    assert w[60] | (w[61] << 16) == (1 << 28) - 1  # LBA28 capacity saturates
    assert sum(w[100 + i] << (16 * i) for i in range(4)) == sectors
    assert w[83] & (1 << 10) and w[86] & (1 << 10)  # LBA48 supported and enabled
    assert w[83] & (1 << 13) and w[83] & (1 << 12)  # FLUSH CACHE EXT and FLUSH CACHE
    assert (w[83] & 0xC000) == 0x4000
    assert page[510] == 0xA5 and sum(page) % 256 == 0
    # ATA strings put the first character in the high byte of each word.
    assert page[54:56] == b"oM"


def test_identify_small_disk_without_lba48() -> None:
    info = IdentifyInfo(2048, lba48=False, flush_cache_ext=False)
    w = _words(build_identify(info))
    assert not w[83] & (1 << 10)
    assert w[60] == 2048 and w[100] == 0
    assert parse_identify(build_identify(info)) == info


@given(
    st.integers(0, (1 << 48) - 1),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=8),
    st.booleans(),
    st.booleans(),
)
def test_identify_round_trip(
    sectors: int, model: str, serial: str, firmware: str, flush: bool, flush_ext: bool
) -> None:
    info = IdentifyInfo(sectors, model, serial, firmware, True, flush, flush_ext)
    assert parse_identify(build_identify(info)) == info


def test_identify_rejects_bad_pages() -> None:
    page = bytearray(build_identify(IdentifyInfo(1000)))
    page[100] ^= 0xFF
    with pytest.raises(DecodeError):
        parse_identify(bytes(page))
    with pytest.raises(DecodeError):
        parse_identify(bytes(511))
    with pytest.raises(ValueError):
        build_identify(IdentifyInfo(1 << 48))
