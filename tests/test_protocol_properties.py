"""Property tests: encode and decode are exact inverses, and decode never returns garbage."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aoe.protocol import AtaBody, DecodeError, Frame, MaskBody, decode, encode

from .support.strategies import frames

settings.register_profile("pyaoe", max_examples=300, deadline=None)
settings.load_profile("pyaoe")


@given(frames())
def test_decode_inverts_encode(frame: Frame) -> None:
    raw = encode(frame)
    assert decode(raw) == frame
    assert encode(decode(raw)) == raw


@given(frames())
def test_padding_is_transparent(frame: Frame) -> None:
    padded = encode(frame, pad=True)
    assert len(padded) >= 60
    assert decode(padded) == frame


def _reserved(frame: Frame) -> list[int]:
    """Byte offsets the spec reserves: ignored on decode, written as zero on encode."""
    if isinstance(frame.body, AtaBody):
        return [34, 35]
    if isinstance(frame.body, MaskBody):
        return [24] + [28 + 8 * i for i in range(len(frame.body.directives))]
    return []


def _assert_faithful(raw: bytes) -> None:
    """Either DecodeError, or a frame that re-encodes to the input (plus padding only),
    reserved bytes aside."""
    try:
        frame = decode(raw)
    except DecodeError:
        return
    again = encode(frame)
    assert len(raw) == len(again) or (len(raw) > len(again) and len(raw) <= 60)
    expect = bytearray(raw[: len(again)])
    for pos in _reserved(frame):
        expect[pos] = 0
    assert bytes(expect) == again


@given(frames(), st.data())
def test_truncation_never_yields_garbage(frame: Frame, data: st.DataObject) -> None:
    raw = encode(frame)
    cut = data.draw(st.integers(0, len(raw)))
    _assert_faithful(raw[:cut])


@given(frames(), st.binary(min_size=1, max_size=600))
def test_oversize_never_yields_garbage(frame: Frame, extra: bytes) -> None:
    _assert_faithful(encode(frame) + extra)


@given(st.binary(max_size=1200))
def test_random_bytes_never_yield_garbage(raw: bytes) -> None:
    _assert_faithful(raw)


@given(st.binary(min_size=10, max_size=1200))
def test_random_bytes_after_aoe_header(tail: bytes) -> None:
    head = bytes.fromhex("ffffffffffff02000000000188a210")
    _assert_faithful(head + tail)


@given(frames(), st.data())
def test_bit_flips_never_yield_garbage(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(encode(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    _assert_faithful(bytes(raw))
