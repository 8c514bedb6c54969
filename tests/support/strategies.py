"""Hypothesis strategies producing valid AoE frames of every command."""

from __future__ import annotations

from hypothesis import strategies as st

from aoe.protocol import (
    AtaBody,
    ConfigBody,
    Directive,
    Frame,
    HeaderFlag,
    MaskBody,
    ReserveBody,
)

macs = st.binary(min_size=6, max_size=6)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
nibble = st.integers(0, 15)


@st.composite
def ata_bodies(draw: st.DrawFn, response: bool) -> AtaBody:
    aflags = draw(u8)
    count = draw(st.integers(0, 3))
    if response:
        data = draw(st.binary(min_size=512, max_size=512)) * count
    elif aflags & 0x01:
        data = draw(st.binary(min_size=512, max_size=512)) * count
    else:
        data = b""
    return AtaBody(aflags, draw(u8), count, draw(u8), draw(st.integers(0, (1 << 48) - 1)), data)


config_bodies = st.builds(ConfigBody, u16, u16, u8, nibble, nibble, st.binary(max_size=1024))
mask_bodies = st.builds(MaskBody, u8, u8, st.lists(st.builds(Directive, u8, macs), max_size=20))
reserve_bodies = st.builds(ReserveBody, u8, st.lists(macs, max_size=20))


@st.composite
def frames(draw: st.DrawFn, command: int | None = None) -> Frame:
    """A frame that decodes to itself: requests and responses of all four commands."""
    cmd = draw(st.sampled_from([0, 1, 2, 3])) if command is None else command
    response = draw(st.booleans())
    body = {
        0: lambda: draw(ata_bodies(response)),
        1: lambda: draw(config_bodies),
        2: lambda: draw(mask_bodies),
        3: lambda: draw(reserve_bodies),
    }[cmd]()
    flags = (HeaderFlag.RESPONSE if response else 0) | draw(st.sampled_from([0, 1, 2, 3]))
    return Frame(draw(macs), draw(macs), draw(u16), draw(u8), cmd, draw(u32), body, int(flags))
